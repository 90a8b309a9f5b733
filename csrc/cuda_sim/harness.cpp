// Runs the CUDA kernels' host interface (csrc/cuda/fused_dwconv_bn_kernels.h)
// on cases read from stdin, one a line, against a float64 recomputation of
// the op, and prints one line of results per case. Built two ways: as host
// C++ on the CPU simulator (build.py; several seeded interleavings per case)
// or by nvcc for a GPU (benchmarks/gpu_check.sh; repeated runs).
//
// Case: N C H W K stride dtype(f32|f16|bf16) layout(nchw|nhwc) mode(train|eval)
//       act(relu6|relu|none) runs offset sms [l2=BYTES] [store_z=auto|0|1] [keep_z=f32|x]
//       [x@n,c,h,w=nan|inf|-inf]
//       (offset: added to x; sms 0: the device's; l2: the L2 size the kernels
//       are told, else the device's (the simulator: sim::Config's); store_z: OpShape::store_z;
//       keep_z: the forward keeps z for the backward (OpShape::keeps_z), as float32 or in x's dtype;
//       x@: one element of x replaced by NaN or an infinity, at (n, c, h, w), negative indices from the end)
// Result: ok <case> y=E mean=E var=E dx=E dw=E dgamma=E dbeta=E identical=0|1 digest=HEX
//         [nonfinite=y/mean/var/dx/dw/dgamma/dbeta counts] [mismatch=output[index]:got/want]
//         launches=name/blocks/threads/smem/resident/streaming_stores;...   (simulator only)
// or:     error <case> <why>
// digest: a hash of every output's bits (y, the statistics and the gradients).
// Each E is a normalised max error: by max |ref| (y, dx), by the scale of a
// float32 sum of the terms (dw: sum |dz * x| per tap; dgamma, dbeta: sum of
// |terms| per channel), by the standard deviation (mean), relative (var).
// Non-finite values follow PyTorch: an output element whose kind (NaN, +inf,
// -inf, finite) differs from the recomputation's makes its E inf (the first
// such is named by mismatch=); the normalised errors cover the finite rest.
// nonfinite= counts the recomputation's non-finite elements (with x@ only).
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "fused_dwconv_bn_kernels.h"
#ifdef MIXPATH_CUDA_SIM
#include "sim_control.h"
#endif

namespace ck = mixpath::cuda_kernels;

namespace {

struct Case {
  long N, C, H, W;
  int K, stride;
  ck::DType dtype;
  bool channels_last, training;
  ck::Activation act;
  int runs;
  double offset;
  int sms;
  long long l2 = -1;  // -1: the device's
  ck::StoreZ store_z = ck::StoreZ::kAuto;
  bool keeps_z = false;
  ck::DType z_dtype = ck::DType::kFloat32;
  bool poke = false;  // x@: x[poke_at] = poke_value
  long poke_at[4] = {0, 0, 0, 0};
  double poke_value = 0;
};

// "n,c,h,w=nan|inf|-inf" (after "x@") into c.
bool parse_poke(const std::string& spec, Case* c) {
  char value[8] = {};
  if (std::sscanf(spec.c_str(), "%ld,%ld,%ld,%ld=%7s", &c->poke_at[0], &c->poke_at[1], &c->poke_at[2], &c->poke_at[3],
                  value) != 5) {
    return false;
  }
  const std::string v(value);
  if (v != "nan" && v != "inf" && v != "-inf") return false;
  c->poke_value = v == "nan" ? NAN : v == "inf" ? INFINITY : -INFINITY;
  const long dims[4] = {c->N, c->C, c->H, c->W};
  for (int d = 0; d < 4; ++d) {
    if (c->poke_at[d] < 0) c->poke_at[d] += dims[d];
    if (c->poke_at[d] < 0 || c->poke_at[d] >= dims[d]) return false;
  }
  return c->poke = true;
}

bool parse(const std::string& line, Case* c, std::string* why) {
  std::istringstream in(line);
  std::string dtype, layout, mode, act;
  if (!(in >> c->N >> c->C >> c->H >> c->W >> c->K >> c->stride >> dtype >> layout >> mode >> act >> c->runs >>
        c->offset >> c->sms)) {
    *why = "expected: N C H W K stride dtype layout mode act runs offset sms";
    return false;
  }
  c->dtype = dtype == "f32" ? ck::DType::kFloat32 : dtype == "f16" ? ck::DType::kFloat16 : ck::DType::kBFloat16;
  if (dtype != "f32" && dtype != "f16" && dtype != "bf16") return *why = "dtype must be f32, f16 or bf16", false;
  c->channels_last = layout == "nhwc";
  c->training = mode == "train";
  c->act = act == "relu6" ? ck::Activation::kReLU6 : act == "relu" ? ck::Activation::kReLU : ck::Activation::kNone;
  c->runs = std::max(c->runs, 1);
  for (std::string opt; in >> opt;) {
    if (opt.rfind("l2=", 0) == 0) {
      c->l2 = std::stoll(opt.substr(3));
    } else if (opt == "store_z=auto" || opt == "store_z=0" || opt == "store_z=1") {
      c->store_z = opt == "store_z=auto" ? ck::StoreZ::kAuto : opt == "store_z=1" ? ck::StoreZ::kStore : ck::StoreZ::kRecompute;
    } else if (opt == "keep_z=f32" || opt == "keep_z=x") {
      c->keeps_z = true;
      c->z_dtype = opt == "keep_z=f32" ? ck::DType::kFloat32 : c->dtype;
    } else if (opt.rfind("x@", 0) == 0) {
      if (!parse_poke(opt.substr(2), c)) return *why = "bad " + opt + ": expected x@n,c,h,w=nan|inf|-inf inside x", false;
    } else {
      return *why = "unknown option " + opt + " (l2=BYTES, store_z=auto|0|1, keep_z=f32|x, x@n,c,h,w=nan|inf|-inf)", false;
    }
  }
  return true;
}

// Deterministic uniform numbers in [lo, hi).
struct Rng {
  uint64_t s;
  double next(double lo, double hi) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return lo + (hi - lo) * static_cast<double>(s >> 11) * (1.0 / 9007199254740992.0);
  }
};

// A tensor of x's dtype on the host: raw 16- or 32-bit values.
struct Raw {
  ck::DType dtype;
  std::vector<unsigned char> bytes;
  size_t width() const { return dtype == ck::DType::kFloat32 ? 4 : 2; }
  Raw(ck::DType d, size_t n) : dtype(d), bytes(n * (d == ck::DType::kFloat32 ? 4 : 2)) {}
  // Stores v rounded to the dtype; returns the stored value.
  double put(size_t i, double v) {
    const float f = static_cast<float>(v);
    if (dtype == ck::DType::kFloat32) {
      std::memcpy(&bytes[4 * i], &f, 4);
      return f;
    }
    unsigned short u;
    if (dtype == ck::DType::kFloat16) {
      const __half h = __float2half_rn(f);
      std::memcpy(&u, &h, 2);
    } else {
      const __nv_bfloat16 b = __float2bfloat16_rn(f);
      std::memcpy(&u, &b, 2);
    }
    std::memcpy(&bytes[2 * i], &u, 2);
    return get(i);
  }
  double get(size_t i) const {
    if (dtype == ck::DType::kFloat32) {
      float f;
      std::memcpy(&f, &bytes[4 * i], 4);
      return f;
    }
    unsigned short u;
    std::memcpy(&u, &bytes[2 * i], 2);
    if (dtype == ck::DType::kBFloat16) {
      const unsigned bits = static_cast<unsigned>(u) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
    __half h;
    std::memcpy(&h, &u, 2);
    return __half2float(h);
  }
};

struct Device {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Device(size_t n) : bytes(n) {
    if (n != 0 && cudaMalloc(&p, n) != cudaSuccess) p = nullptr;
  }
  ~Device() { cudaFree(p); }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  void upload(const void* src) const { cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice); }
  void poison() const { cudaMemset(p, 0xff, bytes); }  // NaN in every dtype: unwritten output shows
  std::vector<unsigned char> download() const {
    std::vector<unsigned char> h(bytes);
    cudaMemcpy(h.data(), p, bytes, cudaMemcpyDeviceToHost);
    return h;
  }
  float* f() const { return static_cast<float*>(p); }
};

// PyTorch's activations at NaN: relu and relu6 keep it; relu's gradient there
// is dy (threshold_backward: y <= 0 ? 0 : dy), relu6's is 0 (its vectorised
// hardtanh_backward).
double act_fwd(double u, ck::Activation a) {
  if (a == ck::Activation::kReLU6) return u < 0 ? 0 : (u > 6 ? 6 : u);
  if (a == ck::Activation::kReLU) return u < 0 ? 0 : u;
  return u;
}
double act_grad(double u, double g, ck::Activation a) {
  if (a == ck::Activation::kReLU6) return (u > 0 && u < 6) ? g : 0;
  if (a == ck::Activation::kReLU) return u <= 0 ? 0 : g;
  return g;
}

// 0 finite, 1 NaN, 2 +inf, 3 -inf.
int kind(double v) { return std::isnan(v) ? 1 : std::isinf(v) ? (v > 0 ? 2 : 3) : 0; }

std::vector<float> floats(const std::vector<unsigned char>& b) {
  std::vector<float> f(b.size() / 4);
  std::memcpy(f.data(), b.data(), f.size() * 4);
  return f;
}

std::string run_case(const Case& c) {
  const long N = c.N, C = c.C, H = c.H, W = c.W, K = c.K, S = c.stride, P = K / 2;
  const long Ho = (H - 1) / S + 1, Wo = (W - 1) / S + 1;
  const float eps = 1e-5f;
  const ck::OpShape shape{N,         C,          H,         W,   c.K,       c.stride, c.dtype,
                          c.channels_last, c.training, c.act, eps, c.store_z, c.keeps_z, c.z_dtype};
  if (const char* why = ck::unsupported_reason(shape)) return std::string("unsupported: ") + why;
  auto in_at = [&](long n, long ch, long h, long w) {
    return static_cast<size_t>(c.channels_last ? ((n * H + h) * W + w) * C + ch : ((n * C + ch) * H + h) * W + w);
  };
  auto out_at = [&](long n, long ch, long i, long j) {
    return static_cast<size_t>(c.channels_last ? ((n * Ho + i) * Wo + j) * C + ch : ((n * C + ch) * Ho + i) * Wo + j);
  };

  // Inputs, rounded to their dtypes; the recomputation uses the rounded values.
  Rng rng{0x9e3779b97f4a7c15ull ^ static_cast<uint64_t>(N * 131 + C * 31 + H * 7 + W + K * 1009 + S)};
  Raw x(c.dtype, N * C * H * W), dy(c.dtype, N * C * Ho * Wo);
  std::vector<double> xd(N * C * H * W), dyd(N * C * Ho * Wo);
  for (long n = 0; n < N; ++n)
    for (long ch = 0; ch < C; ++ch)
      for (long h = 0; h < H; ++h)
        for (long w = 0; w < W; ++w) {
          const size_t i = ((n * C + ch) * H + h) * W + w;
          xd[i] = x.put(in_at(n, ch, h, w), c.offset + rng.next(-1, 1));
        }
  if (c.poke) {
    const long* p = c.poke_at;
    xd[((p[0] * C + p[1]) * H + p[2]) * W + p[3]] = x.put(in_at(p[0], p[1], p[2], p[3]), c.poke_value);
  }
  for (long n = 0; n < N; ++n)
    for (long ch = 0; ch < C; ++ch)
      for (long i = 0; i < Ho; ++i)
        for (long j = 0; j < Wo; ++j) dyd[((n * C + ch) * Ho + i) * Wo + j] = dy.put(out_at(n, ch, i, j), rng.next(-1, 1));
  std::vector<float> wt(C * K * K), gamma(C), beta(C), rmean(C), rvar(C);
  for (auto& v : wt) v = static_cast<float>(rng.next(-1, 1) / K);
  for (long ch = 0; ch < C; ++ch) {
    gamma[ch] = static_cast<float>(rng.next(0.5, 1.5));
    beta[ch] = static_cast<float>(rng.next(-0.5, 0.5));
    rmean[ch] = static_cast<float>(c.offset * 0.1 + rng.next(-0.2, 0.2));
    rvar[ch] = static_cast<float>(rng.next(0.2, 0.6));
  }

  // float64 recomputation.
  const double M = static_cast<double>(N * Ho * Wo);
  std::vector<double> z(N * C * Ho * Wo);
  auto xat = [&](long n, long ch, long h, long w) {
    return (h < 0 || h >= H || w < 0 || w >= W) ? 0.0 : xd[((n * C + ch) * H + h) * W + w];
  };
  for (long n = 0; n < N; ++n)
    for (long ch = 0; ch < C; ++ch)
      for (long i = 0; i < Ho; ++i)
        for (long j = 0; j < Wo; ++j) {
          double s = 0;
          for (long a = 0; a < K; ++a)
            for (long b = 0; b < K; ++b) s += wt[(ch * K + a) * K + b] * xat(n, ch, S * i + a - P, S * j + b - P);
          z[((n * C + ch) * Ho + i) * Wo + j] = s;
        }
  std::vector<double> mean(C), var(C), yref(N * C * Ho * Wo), dz(N * C * Ho * Wo), dbeta(C), dgamma(C), sdb(C), sdg(C);
  for (long ch = 0; ch < C; ++ch) {
    double m = rmean[ch], v = rvar[ch];
    if (c.training) {
      double s = 0, s2 = 0;
      for (long n = 0; n < N; ++n)
        for (long p = 0; p < Ho * Wo; ++p) s += z[(n * C + ch) * Ho * Wo + p];
      m = s / M;
      for (long n = 0; n < N; ++n)
        for (long p = 0; p < Ho * Wo; ++p) s2 += (z[(n * C + ch) * Ho * Wo + p] - m) * (z[(n * C + ch) * Ho * Wo + p] - m);
      v = s2 / M;
    }
    mean[ch] = m;
    var[ch] = v;
    const double inv = 1 / std::sqrt(v + eps);
    std::vector<double> du(N * Ho * Wo), xh(N * Ho * Wo);
    for (long n = 0; n < N; ++n)
      for (long p = 0; p < Ho * Wo; ++p) {
        const size_t i = (n * C + ch) * Ho * Wo + p;
        xh[n * Ho * Wo + p] = (z[i] - m) * inv;
        const double u = gamma[ch] * xh[n * Ho * Wo + p] + beta[ch];
        yref[i] = act_fwd(u, c.act);
        du[n * Ho * Wo + p] = act_grad(u, dyd[i], c.act);
        dbeta[ch] += du[n * Ho * Wo + p];
        dgamma[ch] += du[n * Ho * Wo + p] * xh[n * Ho * Wo + p];
        sdb[ch] += std::fabs(du[n * Ho * Wo + p]);
        sdg[ch] += std::fabs(du[n * Ho * Wo + p] * xh[n * Ho * Wo + p]);
      }
    for (long n = 0; n < N; ++n)
      for (long p = 0; p < Ho * Wo; ++p) {
        const double d = du[n * Ho * Wo + p], h = xh[n * Ho * Wo + p];
        dz[(n * C + ch) * Ho * Wo + p] =
            gamma[ch] * inv * (c.training ? d - dbeta[ch] / M - h * dgamma[ch] / M : d);
      }
  }
  std::vector<double> dxref(N * C * H * W, 0.0), dwref(C * K * K, 0.0), dwscale(C * K * K, 0.0);
  for (long n = 0; n < N; ++n)
    for (long ch = 0; ch < C; ++ch)
      for (long i = 0; i < Ho; ++i)
        for (long j = 0; j < Wo; ++j) {
          const double g = dz[((n * C + ch) * Ho + i) * Wo + j];
          for (long a = 0; a < K; ++a)
            for (long b = 0; b < K; ++b) {
              const long h = S * i + a - P, w = S * j + b - P;
              if (h < 0 || h >= H || w < 0 || w >= W) continue;
              const double xv = xd[((n * C + ch) * H + h) * W + w];
              dxref[((n * C + ch) * H + h) * W + w] += wt[(ch * K + a) * K + b] * g;
              dwref[(ch * K + a) * K + b] += g * xv;
              dwscale[(ch * K + a) * K + b] += std::fabs(g * xv);
            }
        }

  // The kernels.
  int sms = c.sms;
#ifdef MIXPATH_CUDA_SIM
  sim::Config cfg;
  if (sms > 0) cfg.sms = sms;
#endif
  int dev = 0;
  cudaGetDevice(&dev);
  if (sms <= 0) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  int64_t l2 = c.l2;
  if (l2 < 0) {
    int bytes = 0;
    cudaDeviceGetAttribute(&bytes, cudaDevAttrL2CacheSize, dev);
    l2 = bytes;
  }
  const size_t fws = ck::forward_workspace_bytes(shape, sms), bws = ck::backward_workspace_bytes(shape, sms);
  Device dx_in(x.bytes.size()), ddy(dy.bytes.size()), dw(wt.size() * 4), dg(C * 4), db(C * 4), drm(C * 4),
      drv(C * 4), dyo(dy.bytes.size()), dsm(C * 4), dsv(C * 4), ddx(x.bytes.size()), ddw(C * c.K * c.K * 4),
      ddg(C * 4), ddb(C * 4), fwork(fws), bwork(bws),
      zkept(c.keeps_z ? N * C * Ho * Wo * (c.z_dtype == ck::DType::kFloat32 ? 4 : 2) : 0);
  dx_in.upload(x.bytes.data());
  ddy.upload(dy.bytes.data());
  dw.upload(wt.data());
  dg.upload(gamma.data());
  db.upload(beta.data());
  drm.upload(rmean.data());
  drv.upload(rvar.data());
  std::vector<std::vector<unsigned char>> first;
  bool identical = true;
  std::string launches;
#ifdef MIXPATH_CUDA_SIM
  sim::take_records();  // only this case's launches
#endif
  for (int run = 0; run < c.runs; ++run) {
#ifdef MIXPATH_CUDA_SIM
    cfg.seed = 1 + 7919 * static_cast<uint64_t>(run);
    sim::configure(cfg);
#endif
    for (const Device* d : {&dyo, &ddx, &ddw, &ddg, &ddb, &fwork, &bwork, &zkept}) d->poison();
    // Eval: the kernels normalise with the given statistics, which the binding
    // passes as save_mean / save_var (copies of the running ones).
    if (c.training) {
      dsm.poison();
      dsv.poison();
    } else {
      dsm.upload(rmean.data());
      dsv.upload(rvar.data());
    }
    const ck::ForwardArgs fa{dx_in.p, dw.f(), dg.f(), db.f(), drm.f(), drv.f(), dyo.p, dsm.f(), dsv.f(), zkept.p};
    cudaError_t err = ck::forward(shape, fa, fwork.p, sms, l2, nullptr);
    if (err != cudaSuccess) return std::string("forward failed: ") + cudaGetErrorString(err);
    const ck::BackwardArgs ba{ddy.p, dx_in.p, dw.f(), dg.f(), db.f(), dsm.f(), dsv.f(),
                              ddx.p, ddw.f(), ddg.f(), ddb.f(), zkept.p};
    err = ck::backward(shape, ba, bwork.p, sms, l2, nullptr);
    if (err == cudaSuccess) err = cudaDeviceSynchronize();
    if (err != cudaSuccess) return std::string("backward failed: ") + cudaGetErrorString(err);
    std::vector<std::vector<unsigned char>> got{dyo.download(), dsm.download(), dsv.download(), ddx.download(),
                                                ddw.download(), ddg.download(), ddb.download()};
    if (run == 0) {
      first = got;
#ifdef MIXPATH_CUDA_SIM
      for (const sim::LaunchRecord& r : sim::take_records()) {
        std::string name(r.name);
        name.erase(std::remove(name.begin(), name.end(), ' '), name.end());
        launches += (launches.empty() ? "" : ";") + name + "/" + std::to_string(r.blocks) + "/" +
                    std::to_string(r.threads) + "/" + std::to_string(r.smem) + "/" + std::to_string(r.resident) +
                    "/" + std::to_string(r.streaming_stores);
      }
#endif
    } else {
      identical = identical && got == first;
    }
  }

  // Errors.
  Raw yo(c.dtype, N * C * Ho * Wo), dxo(c.dtype, N * C * H * W);
  yo.bytes = first[0];
  dxo.bytes = first[3];
  const std::vector<float> sm = floats(first[1]), sv = floats(first[2]), gw = floats(first[4]), gg = floats(first[5]),
                           gb = floats(first[6]);
  enum { kY, kMean, kVar, kDx, kDw, kDgamma, kDbeta, kOutputs };
  const char* const names[kOutputs] = {"y", "mean", "var", "dx", "dw", "dgamma", "dbeta"};
  double err[kOutputs] = {};
  long nonfinite[kOutputs] = {};
  std::string mismatch;
  // err[out] = max |got - want| / scale over finite pairs; inf where the kinds differ.
  auto upd = [&](int out, std::initializer_list<long> at, double got, double want, double scale) {
    nonfinite[out] += kind(want) != 0;
    if (kind(got) != kind(want)) {
      err[out] = INFINITY;
      if (mismatch.empty()) {
        std::ostringstream m;
        m << names[out] << "[";
        for (const long& i : at) m << (&i == at.begin() ? "" : ",") << i;
        m << "]:" << got << "/" << want;
        mismatch = m.str();
      }
    } else if (kind(want) == 0) {
      err[out] = std::max(err[out], std::fabs(got - want) / scale);
    }
  };
  // y and dx: (N, C, rows, cols) planes, errors relative to the largest finite reference value.
  auto planes = [&](int out, const std::vector<double>& ref, const Raw& got, long rows, long cols, auto at) {
    double refmax = 0;
    for (long n = 0; n < N; ++n)
      for (long ch = 0; ch < C; ++ch)
        for (long i = 0; i < rows; ++i)
          for (long j = 0; j < cols; ++j) {
            const double r = ref[((n * C + ch) * rows + i) * cols + j];
            upd(out, {n, ch, i, j}, got.get(at(n, ch, i, j)), r, 1);
            if (kind(r) == 0) refmax = std::max(refmax, std::fabs(r));
          }
    err[out] /= std::max(refmax, 1e-30);
  };
  planes(kY, yref, yo, Ho, Wo, out_at);
  planes(kDx, dxref, dxo, H, W, in_at);
  for (long ch = 0; ch < C; ++ch) {
    if (c.training) {
      upd(kMean, {ch}, sm[ch], mean[ch], std::sqrt(var[ch] + eps));
      upd(kVar, {ch}, sv[ch], var[ch], var[ch] + eps);
    }
    upd(kDgamma, {ch}, gg[ch], dgamma[ch], std::max(sdg[ch], 1e-30));
    upd(kDbeta, {ch}, gb[ch], dbeta[ch], std::max(sdb[ch], 1e-30));
    for (long t = 0; t < K * K; ++t) {
      upd(kDw, {ch, t / K, t % K}, gw[ch * K * K + t], dwref[ch * K * K + t], std::max(dwscale[ch * K * K + t], 1e-30));
    }
  }
  uint64_t digest = 0xcbf29ce484222325ull;  // FNV-1a over every output's bytes
  for (const auto& out : first) {
    for (unsigned char b : out) digest = (digest ^ b) * 0x100000001b3ull;
  }
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "y=%.3g mean=%.3g var=%.3g dx=%.3g dw=%.3g dgamma=%.3g dbeta=%.3g identical=%d digest=%016llx",
                err[kY], err[kMean], err[kVar], err[kDx], err[kDw], err[kDgamma], err[kDbeta], identical ? 1 : 0,
                static_cast<unsigned long long>(digest));
  std::string out = std::string("ok ") + buf;
  if (c.poke) {
    out += " nonfinite=";
    for (int i = 0; i < kOutputs; ++i) out += (i ? "/" : "") + std::to_string(nonfinite[i]);
  }
  if (!mismatch.empty()) out += " mismatch=" + mismatch;
  return out + (launches.empty() ? "" : " launches=" + launches);
}

}  // namespace

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty() || line[0] == '#') continue;
    Case c{};
    std::string why;
    std::string out = parse(line, &c, &why) ? run_case(c) : "error " + why;
    if (out.rfind("ok ", 0) == 0) {
      std::printf("ok %s %s\n", line.c_str(), out.c_str() + 3);
    } else {
      std::printf("error %s %s\n", line.c_str(), out.c_str());
    }
    std::fflush(stdout);
  }
  return 0;
}
