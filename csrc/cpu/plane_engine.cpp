// Plane loop nest, backward only: NCHW, stride 1, small kernels (K <= 5),
// rows of at least 16 outputs. There the backward is memory-bound and the
// blocked engine's whole-image tiles overflow L2 on large planes; here one
// task is one channel over a block of the batch, one (n, c) plane at a time,
// and everything a plane needs (a few KB) stays in L1/L2. The plane is copied
// (as float32) into a zero-padded buffer, so every tap reads in bounds: the
// loops are branch-free and vectorised along the output row.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "common.h"

namespace mixpath::cpu {
namespace {

constexpr int V = 16;  // outputs per vector
using VT = f32x16;

// out[u * V + i] = sum_{a, b} w[a][b] * src[a * ld + b + u * V + i], i < V, u < U.
template <int K, int U>
inline void conv_block(const float* src, int64_t ld, const float* w, float* out) {
  VT acc[U] = {};
#pragma GCC unroll 5
  for (int a = 0; a < K; ++a) {
#pragma GCC unroll 5
    for (int b = 0; b < K; ++b) {
      const VT wv = splat<VT>(w[a * K + b]);
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) acc[u] += wv * loadu<VT>(src + a * ld + b + u * V);
    }
  }
  for (int u = 0; u < U; ++u) storeu(out + u * V, acc[u]);
}

// One output row of nv vectors from rows src .. src + (K - 1) ld of a padded plane.
template <int K>
MIXPATH_KERNEL void conv_row(const float* src, int64_t ld, const float* w, float* out, int64_t nv) {
  int64_t v = 0;
  for (; v + 4 <= nv; v += 4) conv_block<K, 4>(src + v * V, ld, w, out + v * V);
  for (; v + 2 <= nv; v += 2) conv_block<K, 2>(src + v * V, ld, w, out + v * V);
  for (; v < nv; ++v) conv_block<K, 1>(src + v * V, ld, w, out + v * V);
}

// dw[a][b] += sum_{p < Ho, q} dz[p][q] * x_padded[p + a][q + b] for one plane,
// K * K vector accumulators in registers, added in double every kRun vectors.
// dz columns past Wo (up to nv * V) are zero in its padded buffer, so the row
// tail needs no mask.
template <int K>
MIXPATH_KERNEL void dw_plane(const float* x, int64_t ldx, const float* dz, int64_t ldz, int64_t Ho, int64_t nv,
                             double* dw) {
  VT acc[K][K] = {};
  f64x16 total[K][K] = {};
  const auto flush = [&] {
    for (int a = 0; a < K; ++a)
      for (int b = 0; b < K; ++b) {
        total[a][b] += widen(acc[a][b]);
        acc[a][b] = VT{};
      }
  };
  int64_t run = 0;
  for (int64_t p = 0; p < Ho; ++p) {
    for (int64_t v = 0; v < nv; ++v) {
      const VT d = loadu<VT>(dz + p * ldz + v * V);
#pragma GCC unroll 5
      for (int a = 0; a < K; ++a) {
#pragma GCC unroll 5
        for (int b = 0; b < K; ++b) acc[a][b] += d * loadu<VT>(x + (p + a) * ldx + v * V + b);
      }
      if (++run == kRun) {
        flush();
        run = 0;
      }
    }
  }
  flush();
  for (int a = 0; a < K; ++a)
    for (int b = 0; b < K; ++b) dw[a * K + b] += hsum(total[a][b]);
}

struct PlaneKernels {
  void (*conv)(const float*, int64_t, const float*, float*, int64_t);
  void (*dw)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, double*);
};

PlaneKernels plane_kernels_for(int K) {
  switch (K) {
    case 1: return {&conv_row<1>, &dw_plane<1>};
    case 3: return {&conv_row<3>, &dw_plane<3>};
    case 5: return {&conv_row<5>, &dw_plane<5>};
    default: TORCH_CHECK(false, "mixpath CPU kernels: the plane engine takes K = 1, 3 or 5; got ", K);
  }
}

class PlaneEngine final : public Engine {
 public:
  PlaneEngine(const Geometry& g, at::ScalarType dtype, Act act)
      : Engine(g, dtype, act, g.C), P(g.P), K(g.K), kern_(plane_kernels_for(g.K)) {
    TORCH_CHECK(g.S == 1 && g.Ho == g.H && g.Wo == g.W, "mixpath CPU kernels: the plane engine is stride 1 only");
    nv_ = ceil_div(g.W, V);
    // Padded planes: P rows and columns of zeros around, and columns for the
    // vector reads past the row end. Row starts stay 64-byte aligned.
    ld_ = ceil_div(nv_ * V + K - 1, 16) * 16;
    rows_ = g.H + 2 * P;
  }

  void backward_reduce(const at::Tensor& x, const at::Tensor& dy, const float* w, const Coeffs& k, at::Tensor& dx,
                       double* s1, double* s2) override {
    // z of plane (n, c) goes to dx's plane (n, c) when dx is float32: pass 2
    // turns that plane into dz before it writes dx there.
    z_ = dtype_ == at::kFloat ? dx : at::empty({g_.N * g_.C * g_.plane()}, x.options().dtype(at::kFloat));
    float* z = z_.mutable_data_ptr<float>();
    with_dtype(dtype_, [&](auto tag) {
      using T = decltype(tag);
      const T* xs = x.const_data_ptr<T>();
      const T* dys = dy.const_data_ptr<T>();
      with_act(act_, [&](auto a) {
        constexpr Act A = decltype(a)::value;
        parallel_tasks([&](int64_t c, int64_t blk, Scratch& s) {
          const float* wc = w + c * K * K;
          const float m = k.mean[c], sc = k.scale[c], be = k.beta[c];
          double t1 = 0.0, t2 = 0.0;
          for (int64_t n = batch_begin(blk); n < batch_end(blk); ++n) {
            const int64_t plane = (n * g_.C + c) * g_.plane();
            pack(xs + plane, s.x.data());
            for (int64_t p = 0; p < g_.H; ++p) {
              float* zr = z + plane + p * g_.W;
              float* dr = s.row.data();
              kern_.conv(s.x.data() + p * ld_, ld_, wc, dr, nv_);
              std::copy(dr, dr + g_.W, zr);
              to_float(dys + plane + p * g_.W, dr, g_.W);
              for_runs(g_.W, kRun * V, [&](int64_t b, int64_t e) {
                float a1 = 0.0f, a2 = 0.0f;
#pragma omp simd reduction(+ : a1, a2)
                for (int64_t q = b; q < e; ++q) {
                  const float zc = zr[q] - m;
                  const float du = dr[q] * act_grad<A>(zc * sc + be);
                  a1 += du;
                  a2 += du * zc;
                }
                t1 += a1;
                t2 += a2;
              });
            }
          }
          s1[blk * g_.C + c] = t1;
          s2[blk * g_.C + c] = t2;
        });
      });
    });
  }

  void backward_apply(const at::Tensor& x, const at::Tensor& dy, const float* w, const Coeffs& k, at::Tensor& dx,
                      double* dw) override {
    const float* z = z_.const_data_ptr<float>();
    with_dtype(dtype_, [&](auto tag) {
      using T = decltype(tag);
      const T* xs = x.const_data_ptr<T>();
      const T* dys = dy.const_data_ptr<T>();
      T* dxs = dx.mutable_data_ptr<T>();
      with_act(act_, [&](auto a) {
        constexpr Act A = decltype(a)::value;
        parallel_tasks([&](int64_t c, int64_t blk, Scratch& s) {
          const float* wc = w + c * K * K;
          float flip[25];  // the input gradient is a stride-1 conv of dz with the flipped kernel
          for (int t = 0; t < K * K; ++t) flip[t] = wc[K * K - 1 - t];
          const float m = k.mean[c], sc = k.scale[c], be = k.beta[c];
          const float kdu = k.k_du[c], kz = k.k_z[c], k0 = k.k_0[c];
          const bool batch_stats = k.batch_stats;
          double acc[25] = {};
          for (int64_t n = batch_begin(blk); n < batch_end(blk); ++n) {
            const int64_t plane = (n * g_.C + c) * g_.plane();
            for (int64_t p = 0; p < g_.H; ++p) {
              float* dzr = s.dz.data() + (P + p) * ld_ + P;
              const float* zr = z + plane + p * g_.W;
              float* dr = s.row.data();
              to_float(dys + plane + p * g_.W, dr, g_.W);
#pragma omp simd
              for (int64_t q = 0; q < g_.W; ++q) {
                const float zc = zr[q] - m;
                const float du = dr[q] * act_grad<A>(zc * sc + be);
                dzr[q] = batch_stats ? kdu * du + kz * zc + k0 : kdu * du;
              }
            }
            for (int64_t i = 0; i < g_.H; ++i) {
              kern_.conv(s.dz.data() + i * ld_, ld_, flip, s.row.data(), nv_);
              from_float(s.row.data(), dxs + plane + i * g_.W, g_.W);
            }
            pack(xs + plane, s.x.data());
            kern_.dw(s.x.data(), ld_, s.dz.data() + P * ld_ + P, ld_, g_.H, nv_, acc);
          }
          std::copy(acc, acc + K * K, dw + (blk * g_.C + c) * K * K);
        });
      });
    });
    z_ = at::Tensor();
  }

 private:
  // Per-thread buffers; the zero borders are written once and never touched again.
  struct Scratch {
    Buffer x, dz, row;
  };

  // f(c, batch block, scratch) for every task, in parallel.
  template <class F>
  void parallel_tasks(const F& f) {
    const int64_t nblk = blocks();
    at::parallel_for(0, g_.C * nblk, 1, [&](int64_t b, int64_t e) {
      Scratch s;
      s.x = Buffer(rows_ * ld_);
      s.dz = Buffer(rows_ * ld_);
      s.row = Buffer(nv_ * V);
      for (int64_t t = b; t < e; ++t) f(t / nblk, t % nblk, s);
    });
  }

  // The plane's interior into a padded buffer.
  template <class T>
  void pack(const T* src, float* buf) const {
    for (int64_t h = 0; h < g_.H; ++h) to_float(src + h * g_.W, buf + (P + h) * ld_ + P, g_.W);
  }

  const int P, K;
  PlaneKernels kern_;
  int64_t nv_, ld_, rows_;
  at::Tensor z_;  // float32 z between the passes
};

}  // namespace

std::unique_ptr<Engine> make_plane_engine(const Geometry& g, at::ScalarType dtype, Act act) {
  return std::make_unique<PlaneEngine>(g, dtype, act);
}

}  // namespace mixpath::cpu
