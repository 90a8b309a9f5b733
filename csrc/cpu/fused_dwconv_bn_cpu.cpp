// CPU entry points of the fused op (schema: mixpath/ops/compiled_op.py). They
// pick a loop nest (cpu/common.h), merge its per-task partial reductions in a
// fixed order, and do the per-channel BatchNorm algebra in double.
// Arguments were validated by the bindings (ops.cpp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "../fused_dwconv_bn.h"
#include "common.h"

namespace mixpath {
namespace {

using cpu::Act;
using cpu::Coeffs;
using cpu::Engine;
using cpu::Geometry;

Act parse_activation(c10::string_view activation) {
  if (activation == "relu6") return Act::kRelu6;
  if (activation == "relu") return Act::kRelu;
  if (activation == "none") return Act::kNone;
  TORCH_CHECK(false, "mixpath::fused_dwconv_bn: activation must be 'relu6', 'relu' or 'none'; got '",
              std::string(activation), "'");
}

// As mixpath/ops/contract.py output_memory_format: x's own layout.
bool use_channels_last(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

Geometry geometry(const at::Tensor& x, const at::Tensor& weight, int64_t stride) {
  Geometry g;
  g.N = x.size(0);
  g.C = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.S = static_cast<int>(stride);
  g.K = static_cast<int>(weight.size(-1));
  g.P = g.K / 2;
  g.Ho = (g.H - 1) / g.S + 1;
  g.Wo = (g.W - 1) / g.S + 1;
  return g;
}

// The plane engine wins the backward where it is memory-bound on large NCHW
// planes (stride 1, small K); the blocked engine everywhere else.
std::unique_ptr<Engine> backward_engine(const Geometry& g, const at::Tensor& x, Act act, bool channels_last) {
  if (!channels_last && g.S == 1 && g.K <= 5 && g.Wo >= 16) return cpu::make_plane_engine(g, x.scalar_type(), act);
  return cpu::make_blocked_engine(g, x.scalar_type(), act, channels_last);
}

at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

// Training forward pass 2, elementwise in y's layout: y = act((z - mean) * scale + beta).
template <class T, Act A>
void normalize(const float* z, T* y, const Geometry& g, bool channels_last, const Coeffs& k) {
  using cpu::f32x16;
  const int64_t C = g.C, hw = g.plane();
  if (channels_last) {
    at::parallel_for(0, g.N * hw, 64, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float* zi = z + i * C;
        T* yi = y + i * C;
        int64_t c = 0;
        for (; c + 16 <= C; c += 16) {
          const f32x16 u = (cpu::loadu<f32x16>(zi + c) - cpu::loadu<f32x16>(k.mean + c)) *
                               cpu::loadu<f32x16>(k.scale + c) + cpu::loadu<f32x16>(k.beta + c);
          cpu::store16(yi + c, cpu::act_vec<A>(u));
        }
        for (; c < C; ++c) yi[c] = static_cast<T>(cpu::act_fn<A>((zi[c] - k.mean[c]) * k.scale[c] + k.beta[c]));
      }
    });
    return;
  }
  at::parallel_for(0, g.N * C, 16, [&](int64_t b, int64_t e) {
    for (int64_t nc = b; nc < e; ++nc) {
      const int64_t c = nc % C;
      const float m = k.mean[c], sc = k.scale[c], be = k.beta[c];
      const float* zi = z + nc * hw;
      T* yi = y + nc * hw;
      int64_t i = 0;
      for (; i + 16 <= hw; i += 16) cpu::store16(yi + i, cpu::act_vec<A>((cpu::loadu<f32x16>(zi + i) - m) * sc + be));
      for (; i < hw; ++i) yi[i] = static_cast<T>(cpu::act_fn<A>((zi[i] - m) * sc + be));
    }
  });
}

}  // namespace

ForwardResult fused_dwconv_bn_forward_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                                          const at::Tensor& bn_weight, const at::Tensor& bn_bias,
                                          const at::Tensor& running_mean, const at::Tensor& running_var,
                                          int64_t stride, bool training, double eps, c10::string_view activation) {
  const Act act = parse_activation(activation);
  const bool cl = use_channels_last(x_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor weight = f32(weight_in);
  const Geometry g = geometry(x, weight, stride);
  const int64_t C = g.C, KK = g.K * g.K;
  const at::Tensor gamma = f32(bn_weight), beta = f32(bn_bias);
  const float* gp = gamma.const_data_ptr<float>();
  const float* bp = beta.const_data_ptr<float>();

  at::Tensor y = at::empty({g.N, C, g.Ho, g.Wo}, x.options().memory_format(fmt));
  auto engine = cpu::make_blocked_engine(g, x.scalar_type(), act, cl);

  if (!training) {
    // BatchNorm folded into the conv: W' = W * gamma * inv, bias = beta - mean * gamma * inv.
    const at::Tensor rm = f32(running_mean), rv = f32(running_var);
    std::vector<float> w(C * KK), bias(C);
    const float* wp = weight.const_data_ptr<float>();
    for (int64_t c = 0; c < C; ++c) {
      const double scale = gp[c] / std::sqrt(static_cast<double>(rv.const_data_ptr<float>()[c]) + eps);
      for (int64_t t = 0; t < KK; ++t) w[c * KK + t] = static_cast<float>(wp[c * KK + t] * scale);
      bias[c] = static_cast<float>(bp[c] - rm.const_data_ptr<float>()[c] * scale);
    }
    engine->forward_eval(x, w.data(), bias.data(), y);
    return {y, rm.clone(), rv.clone()};
  }

  // z as float32 in y's layout: in y itself when y is float32.
  const at::Tensor z = x.scalar_type() == at::kFloat ? y : at::empty_like(y, y.options().dtype(at::kFloat));
  std::vector<cpu::Moments> part(engine->blocks() * C);
  engine->forward_stats(x, weight.const_data_ptr<float>(), z.mutable_data_ptr<float>(), part.data());
  at::Tensor save_mean = at::empty({C}, bn_weight.options().dtype(at::kFloat));
  at::Tensor save_var = at::empty({C}, bn_weight.options().dtype(at::kFloat));
  float* mp = save_mean.mutable_data_ptr<float>();
  float* vp = save_var.mutable_data_ptr<float>();
  std::vector<float> scale(C);
  for (int64_t c = 0; c < C; ++c) {
    cpu::Moments m;
    for (int64_t b = 0; b < engine->blocks(); ++b) {
      const cpu::Moments& q = part[b * C + c];
      m.merge(q.count, q.mean, q.m2);
    }
    const double var = m.m2 / m.count;
    mp[c] = static_cast<float>(m.mean);
    vp[c] = static_cast<float>(var);
    scale[c] = static_cast<float>(gp[c] / std::sqrt(var + eps));
  }
  const Coeffs k{.mean = mp, .scale = scale.data(), .beta = bp};
  cpu::with_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::with_act(act, [&](auto a) {
      normalize<T, decltype(a)::value>(z.const_data_ptr<float>(), y.mutable_data_ptr<T>(), g, cl, k);
    });
  });
  return {y, save_mean, save_var};
}

BackwardResult fused_dwconv_bn_backward_cpu(const at::Tensor& dy_in, const at::Tensor& x_in,
                                            const at::Tensor& weight_in, const at::Tensor& bn_weight,
                                            const at::Tensor& bn_bias, const at::Tensor& save_mean,
                                            const at::Tensor& save_var, int64_t stride, bool training, double eps,
                                            c10::string_view activation) {
  const Act act = parse_activation(activation);
  const bool cl = use_channels_last(x_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor dy = dy_in.contiguous(fmt);
  const at::Tensor weight = f32(weight_in);
  const Geometry g = geometry(x, weight, stride);
  const int64_t C = g.C, KK = g.K * g.K;
  const at::Tensor gamma = f32(bn_weight), beta = f32(bn_bias);
  const at::Tensor mean = f32(save_mean), var = f32(save_var);
  const float* gp = gamma.const_data_ptr<float>();
  const float* vp = var.const_data_ptr<float>();
  auto engine = backward_engine(g, x, act, cl);
  const int64_t nblk = engine->blocks();

  std::vector<double> inv(C);
  std::vector<float> scale(C), k_z(C, 0.0f), k_0(C, 0.0f);
  for (int64_t c = 0; c < C; ++c) {
    inv[c] = 1.0 / std::sqrt(static_cast<double>(vp[c]) + eps);
    scale[c] = static_cast<float>(gp[c] * inv[c]);
  }
  Coeffs k{mean.const_data_ptr<float>(), scale.data(), beta.const_data_ptr<float>(), scale.data(), k_z.data(),
           k_0.data(), training};

  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(fmt));
  std::vector<double> s1(nblk * C), s2(nblk * C);
  engine->backward_reduce(x, dy, weight.const_data_ptr<float>(), k, dx, s1.data(), s2.data());
  at::Tensor dgamma = at::empty({C}, gamma.options());
  at::Tensor dbeta = at::empty({C}, gamma.options());
  const double count = static_cast<double>(g.N * g.plane());
  for (int64_t c = 0; c < C; ++c) {
    double sum_du = 0.0, sum_du_zc = 0.0;
    for (int64_t b = 0; b < nblk; ++b) {
      sum_du += s1[b * C + c];
      sum_du_zc += s2[b * C + c];
    }
    dbeta.mutable_data_ptr<float>()[c] = static_cast<float>(sum_du);
    dgamma.mutable_data_ptr<float>()[c] = static_cast<float>(sum_du_zc * inv[c]);
    if (training) {
      // dz = scale / n * (n du - sum du - zhat * sum du zhat), zhat = (z - mean) * inv
      k_z[c] = static_cast<float>(-scale[c] * inv[c] * inv[c] * sum_du_zc / count);
      k_0[c] = static_cast<float>(-scale[c] * sum_du / count);
    }
  }

  std::vector<double> dwp(nblk * C * KK);
  engine->backward_apply(x, dy, weight.const_data_ptr<float>(), k, dx, dwp.data());
  at::Tensor dweight = at::empty({C, g.K, g.K}, weight.options());
  float* dwo = dweight.mutable_data_ptr<float>();
  for (int64_t i = 0; i < C * KK; ++i) {
    double s = 0.0;
    for (int64_t b = 0; b < nblk; ++b) s += dwp[b * C * KK + i];
    dwo[i] = static_cast<float>(s);
  }
  return {dx, dweight, dgamma, dbeta};
}

}  // namespace mixpath
