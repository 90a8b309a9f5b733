// Blocked loop nest: one task = 16 channels over a block of the batch, one
// image at a time. The 16 channels of an image are packed (as float32) into a
// zero-padded [h][w][16] tile, so one vector holds one position of all 16
// channels: every tap is an aligned, in-bounds 64-byte load whatever the
// stride, no lane is wasted on row tails, and the weights are one vector per
// tap. The natural order for channels_last; NCHW planes are transposed in
// registers on the way in and out (16 x 16 blocks).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "common.h"

namespace mixpath::cpu {
namespace {

constexpr int L = 16;  // channels per tile (vector lanes)
using VL = f32x16;

// out[u] = sum_{a, b} wv[a][b] * in[a][S u + b] over U consecutive output positions.
template <int K, int S, int U>
inline void bconv_block(const float* in, int64_t ld, const float* wv, float* out) {
  VL acc[U] = {};
#pragma GCC unroll 9
  for (int a = 0; a < K; ++a) {
#pragma GCC unroll 9
    for (int b = 0; b < K; ++b) {
      const VL w = loadu<VL>(wv + (a * K + b) * L);
      const float* src = in + (a * ld + b) * L;
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) acc[u] += w * loadu<VL>(src + u * S * L);
    }
  }
  for (int u = 0; u < U; ++u) storeu(out + u * L, acc[u]);
}

template <int K, int S>
MIXPATH_KERNEL void bconv_row(const float* in, int64_t ld, const float* wv, float* out, int64_t count) {
  int64_t q = 0;
  for (; q + 8 <= count; q += 8) bconv_block<K, S, 8>(in + q * S * L, ld, wv, out + q * L);
  for (; q + 4 <= count; q += 4) bconv_block<K, S, 4>(in + q * S * L, ld, wv, out + q * L);
  for (; q < count; ++q) bconv_block<K, S, 1>(in + q * S * L, ld, wv, out + q * L);
}

// Stride-2 input gradient. Padded input row r = i + P takes dz row (r - a) / 2
// from tap row a when r - a is even: with D = r & 1 the taps are a = D + 2 alpha,
// reading dz rows r2 - alpha (r2 = (r - D) / 2); columns likewise with parity E.
// dz comes P-padded, so all reads are in bounds; consecutive outputs of one
// column parity are 2 columns apart.
template <int K, int D, int E, int U>
inline void btconv_block(const float* dz, int64_t ld, const float* wv, float* out) {
  constexpr int P = K / 2, A = D ? P : P + 1, B = E ? P : P + 1;
  VL acc[U] = {};
#pragma GCC unroll 5
  for (int al = 0; al < A; ++al) {
#pragma GCC unroll 5
    for (int bt = 0; bt < B; ++bt) {
      const VL w = loadu<VL>(wv + ((D + 2 * al) * K + E + 2 * bt) * L);
      const float* src = dz - (al * ld + bt) * L;
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) acc[u] += w * loadu<VL>(src + u * L);
    }
  }
  for (int u = 0; u < U; ++u) storeu(out + 2 * u * L, acc[u]);
}

template <int K, int D, int E>
MIXPATH_KERNEL void btconv_row(const float* dz, int64_t ld, const float* wv, float* out, int64_t count) {
  int64_t q = 0;
  for (; q + 8 <= count; q += 8) btconv_block<K, D, E, 8>(dz + q * L, ld, wv, out + 2 * q * L);
  for (; q + 4 <= count; q += 4) btconv_block<K, D, E, 4>(dz + q * L, ld, wv, out + 2 * q * L);
  for (; q < count; ++q) btconv_block<K, D, E, 1>(dz + q * L, ld, wv, out + 2 * q * L);
}

// dw[a][b] += sum_{p, q} dz[p][q] * x_tile[S p + a][S q + b], per lane (dw as
// [tap][lane] doubles): float32 over kRun positions at a time, then in double.
template <int K, int S>
MIXPATH_KERNEL void bdw_tile(const float* xt, int64_t ldx, const float* dz, int64_t ldz, int64_t Ho, int64_t Wo,
                             double* dw) {
  for (int a = 0; a < K; ++a) {
    VL acc[K] = {};
    const auto flush = [&] {
      for (int b = 0; b < K; ++b) {
        double* d = dw + (a * K + b) * L;
        storeu(d, loadu<f64x16>(d) + widen(acc[b]));
        acc[b] = VL{};
      }
    };
    int64_t run = 0;
    for (int64_t p = 0; p < Ho; ++p) {
      const float* xr = xt + (S * p + a) * ldx * L;
      const float* dr = dz + p * ldz * L;
      for (int64_t q = 0; q < Wo; ++q) {
        const VL d = loadu<VL>(dr + q * L);
        const float* src = xr + S * q * L;
#pragma GCC unroll 9
        for (int b = 0; b < K; ++b) acc[b] += d * loadu<VL>(src + b * L);
        if (++run == kRun) {
          flush();
          run = 0;
        }
      }
    }
    flush();
  }
}

// The kernels for one (K, stride), chosen once per call.
struct BlockedKernels {
  using Conv = void (*)(const float*, int64_t, const float*, float*, int64_t);
  using Dw = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, double*);
  Conv conv;          // forward, stride S
  Conv conv_s1;       // stride-1 input gradient (a stride-1 conv with the flipped kernel)
  Conv tconv[2][2];   // stride-2 input gradient by [row parity][column parity]
  Dw dw;
};

template <int K, int S>
BlockedKernels blocked_kernels() {
  return {&bconv_row<K, S>,
          &bconv_row<K, 1>,
          {{&btconv_row<K, 0, 0>, &btconv_row<K, 0, 1>}, {&btconv_row<K, 1, 0>, &btconv_row<K, 1, 1>}},
          &bdw_tile<K, S>};
}

template <int K>
BlockedKernels blocked_kernels_for(int S) {
  return S == 1 ? blocked_kernels<K, 1>() : blocked_kernels<K, 2>();
}

BlockedKernels blocked_kernels_for(int K, int S) {
  switch (K) {
    case 1: return blocked_kernels_for<1>(S);
    case 3: return blocked_kernels_for<3>(S);
    case 5: return blocked_kernels_for<5>(S);
    case 7: return blocked_kernels_for<7>(S);
    case 9: return blocked_kernels_for<9>(S);
    default: TORCH_CHECK(false, "mixpath CPU kernels: kernel size ", K, " is not one of 1, 3, 5, 7, 9");
  }
}

// 16 x 16 transpose in registers: four butterfly stages, each swapping one bit
// of the row index with the same bit of the column index (two-source shuffles).
#define MIXPATH_SWAP_BITS(H, LO, HI)                                 \
  for (int i = 0; i < 16; ++i) {                                     \
    if (i & H) continue;                                             \
    const VL a = r[i], b = r[i + H];                                 \
    r[i] = __builtin_shufflevector(a, b, LO);                        \
    r[i + H] = __builtin_shufflevector(a, b, HI);                    \
  }
inline void transpose16(VL* r) {
  MIXPATH_SWAP_BITS(8, MIXPATH_ARGS(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
                    MIXPATH_ARGS(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31))
  MIXPATH_SWAP_BITS(4, MIXPATH_ARGS(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27),
                    MIXPATH_ARGS(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31))
  MIXPATH_SWAP_BITS(2, MIXPATH_ARGS(0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29),
                    MIXPATH_ARGS(2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31))
  MIXPATH_SWAP_BITS(1, MIXPATH_ARGS(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30),
                    MIXPATH_ARGS(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31))
}
#undef MIXPATH_SWAP_BITS

// n <= 16 consecutive elements as float32 lanes, the rest zero.
template <class T>
inline VL load_n(const T* p, int64_t n) {
  if (n == L) return load16(p);
  float tmp[L] = {};
  for (int64_t i = 0; i < n; ++i) tmp[i] = static_cast<float>(p[i]);
  return loadu<VL>(tmp);
}

template <class T>
inline void store_n(T* p, const VL& v, int64_t n) {
  if (n == L) return store16(p, v);
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(v[i]);
}

// Where an (N, C, rows, cols) tensor keeps channel c0's (0, 0) of image n,
// and whether its channels are the contiguous dimension (channels_last).
struct Layout {
  bool channels_last;
  int64_t C, rows, cols;
  int64_t image() const { return C * rows * cols; }
  int64_t offset(int64_t n, int64_t c0) const { return n * image() + c0 * (channels_last ? 1 : rows * cols); }
};

// nc channels of one image (src at its channel c0) into
// tile[(h + pad) * ld + w + pad][16]; lanes past nc are zero.
template <class T>
void pack_tile(const T* src, const Layout& lay, int64_t nc, float* dst, int64_t ld, int64_t pad) {
  if (lay.channels_last) {
    for (int64_t h = 0; h < lay.rows; ++h)
      for (int64_t w = 0; w < lay.cols; ++w)
        storeu(dst + ((h + pad) * ld + w + pad) * L, load_n(src + (h * lay.cols + w) * lay.C, nc));
    return;
  }
  // NCHW: 16 positions of each of the 16 planes, transposed in registers.
  const int64_t hw = lay.rows * lay.cols;
  int64_t h = 0, w = 0;
  for (int64_t p0 = 0; p0 < hw; p0 += L) {
    const int64_t n = std::min<int64_t>(L, hw - p0);
    VL r[L];
    for (int64_t l = 0; l < L; ++l) r[l] = l < nc ? load_n(src + l * hw + p0, n) : VL{};
    transpose16(r);
    for (int64_t i = 0; i < n; ++i) {
      storeu(dst + ((h + pad) * ld + w + pad) * L, r[i]);
      if (++w == lay.cols) w = 0, ++h;
    }
  }
}

// f(tile[rows * cols][16]) out to nc channels of one image (dst at its channel c0).
template <class T, class F>
void unpack_tile(const float* src, const Layout& lay, int64_t nc, T* dst, const F& f) {
  const int64_t hw = lay.rows * lay.cols;
  if (lay.channels_last) {
    for (int64_t i = 0; i < hw; ++i) store_n(dst + i * lay.C, f(loadu<VL>(src + i * L)), nc);
    return;
  }
  for (int64_t p0 = 0; p0 < hw; p0 += L) {
    const int64_t n = std::min<int64_t>(L, hw - p0);
    VL r[L];
    for (int64_t i = 0; i < L; ++i) r[i] = i < n ? f(loadu<VL>(src + (p0 + i) * L)) : VL{};
    transpose16(r);
    for (int64_t l = 0; l < nc; ++l) store_n(dst + l * hw + p0, r[l], n);
  }
}

// Software prefetch of the channel block that the next pack or unpack will
// touch, spread over the rows of the compute before it. The hardware
// prefetchers follow neither 16 NCHW planes at once (16 streams) nor the
// channels_last block well enough (one short run every C elements).
class Prefetch {
 public:
  template <class T>
  void add(const T* p, const Layout& lay, int64_t nc, bool write) {
    const int64_t hw = lay.rows * lay.cols, size = static_cast<int64_t>(sizeof(T));
    const char* base = reinterpret_cast<const char*>(p);
    if (lay.channels_last) {
      targets_[count_++] = {base, hw, lay.C * size, nc * size, write, false};
    } else {
      targets_[count_++] = {base, nc, hw * size, hw * size, write, true};
    }
  }

  // Part `part` of `parts` of every target: a slice of each NCHW plane, or a
  // slice of the channels_last positions.
  void step(int64_t part, int64_t parts) const {
    for (int i = 0; i < count_; ++i) {
      const Target& t = targets_[i];
      if (t.planar) {
        const int64_t lo = t.bytes * part / parts / 64 * 64, hi = t.bytes * (part + 1) / parts;
        for (int64_t k = 0; k < t.items; ++k)
          for (int64_t off = lo; off < hi; off += 64) fetch(t.base + k * t.stride + off, t.write);
      } else {
        for (int64_t k = t.items * part / parts; k < t.items * (part + 1) / parts; ++k) {
          const char* run = t.base + k * t.stride;
          fetch(run, t.write);
          fetch(run + t.bytes - 1, t.write);  // the run may straddle two lines
        }
      }
    }
  }

 private:
  static void fetch(const char* p, bool write) {
    if (write) {
      __builtin_prefetch(p, 1, 2);
    } else {
      __builtin_prefetch(p, 0, 2);
    }
  }

  // items runs of `bytes` bytes, `stride` bytes apart
  struct Target {
    const char* base;
    int64_t items, stride, bytes;
    bool write, planar;
  };
  Target targets_[2];
  int count_ = 0;
};

class BlockedEngine final : public ForwardEngine {
 public:
  BlockedEngine(const Geometry& g, at::ScalarType dtype, Act act, bool channels_last)
      : ForwardEngine(g, dtype, act, ceil_div(g.C, L)),
        P(g.P),
        K(g.K),
        S(g.S),
        kern_(blocked_kernels_for(g.K, g.S)),
        ncb_(ceil_div(g.C, L)),
        in_{channels_last, g.C, g.H, g.W},
        out_{channels_last, g.C, g.Ho, g.Wo} {
    hp_ = g.H + 2 * P;
    wp_ = g.W + 2 * P;
    // dz padded by P: reads of the stride-1 (flipped conv) and stride-2 input gradients.
    hz_ = std::max<int64_t>(g.Ho + 2 * P, (g.H - 1 + P) / 2 + P + 1);
    wz_ = std::max<int64_t>(g.Wo + 2 * P, (g.W - 1 + P) / 2 + P + 1);
  }

  void forward_stats(const at::Tensor& x, const float* w, float* z, Moments* part) override {
    with_dtype(dtype_, [&](auto tag) {
      using T = decltype(tag);
      const T* xs = x.const_data_ptr<T>();
      parallel_tasks(w, [&](int64_t cb, int64_t blk, Scratch& s) {
        const int64_t nc = lanes(cb), c0 = cb * L;
        Moments m[L];
        for (int64_t n = batch_begin(blk); n < batch_end(blk); ++n) {
          float* zt = s.out.data();
          Prefetch pf;
          pf.add(z + out_.offset(n, c0), out_, nc, true);
          prefetch_next(pf, xs, n, cb, blk);
          conv_tile(xs + in_.offset(n, c0), nc, s, zt, pf);
          // Two passes over the image's tile: the mean, then squares about it
          // (no cancellation when the mean is large against the spread).
          const int64_t hw = g_.plane();
          f64x16 sum = {}, sq = {};
          for_runs(hw, kRun, [&](int64_t b, int64_t e) {
            VL part = {};
            for (int64_t i = b; i < e; ++i) part += loadu<VL>(zt + i * L);
            sum += widen(part);
          });
          const f64x16 mean = sum / static_cast<double>(hw);
          const VL centre = __builtin_convertvector(mean, VL);
          for_runs(hw, kRun, [&](int64_t b, int64_t e) {
            VL part = {};
            for (int64_t i = b; i < e; ++i) {
              const VL d = loadu<VL>(zt + i * L) - centre;
              part += d * d;
            }
            sq += widen(part);
          });
          for (int64_t l = 0; l < nc; ++l) m[l].merge(static_cast<double>(hw), mean[l], sq[l]);
          unpack_tile(zt, out_, nc, z + out_.offset(n, c0), [](const VL& v) { return v; });
        }
        for (int64_t l = 0; l < nc; ++l) part[blk * g_.C + c0 + l] = m[l];
      });
    });
  }

  void forward_eval(const at::Tensor& x, const float* w, const float* bias, at::Tensor& y) override {
    with_dtype(dtype_, [&](auto tag) {
      using T = decltype(tag);
      const T* xs = x.const_data_ptr<T>();
      T* ys = y.mutable_data_ptr<T>();
      with_act(act_, [&](auto a) {
        constexpr Act A = decltype(a)::value;
        parallel_tasks(w, [&](int64_t cb, int64_t blk, Scratch& s) {
          const int64_t nc = lanes(cb), c0 = cb * L;
          const VL bv = lane_coeffs(bias, c0, nc);
          for (int64_t n = batch_begin(blk); n < batch_end(blk); ++n) {
            Prefetch pf;
            pf.add(ys + out_.offset(n, c0), out_, nc, true);
            prefetch_next(pf, xs, n, cb, blk);
            conv_tile(xs + in_.offset(n, c0), nc, s, s.out.data(), pf);
            unpack_tile(s.out.data(), out_, nc, ys + out_.offset(n, c0),
                        [&](const VL& v) { return act_vec<A>(v + bv); });
          }
        });
      });
    });
  }

  void backward_reduce(const at::Tensor& x, const at::Tensor& dy, const float* w, const Coeffs& k, at::Tensor&,
                       double* s1, double* s2) override {
    z_ = scratch(x);
    du_ = scratch(x);
    float* z = z_.mutable_data_ptr<float>();
    float* du = du_.mutable_data_ptr<float>();
    with_dtype(dtype_, [&](auto tag) {
      using T = decltype(tag);
      const T* xs = x.const_data_ptr<T>();
      const T* dys = dy.const_data_ptr<T>();
      with_act(act_, [&](auto a) {
        constexpr Act A = decltype(a)::value;
        parallel_tasks(w, [&](int64_t cb, int64_t blk, Scratch& s) {
          const int64_t nc = lanes(cb), c0 = cb * L;
          const VL m = lane_coeffs(k.mean, c0, nc), sc = lane_coeffs(k.scale, c0, nc);
          const VL be = lane_coeffs(k.beta, c0, nc);
          f64x16 t1 = {}, t2 = {};
          for (int64_t n = batch_begin(blk); n < batch_end(blk); ++n) {
            float* zt = tile(z, n, cb);
            float* dt = tile(du, n, cb);
            Prefetch pf;
            pf.add(dys + out_.offset(n, c0), out_, nc, false);
            prefetch_next(pf, xs, n, cb, blk);
            conv_tile(xs + in_.offset(n, c0), nc, s, zt, pf);
            pack_tile(dys + out_.offset(n, c0), out_, nc, dt, g_.Wo, 0);
            for_runs(g_.plane(), kRun, [&](int64_t b, int64_t e) {
              VL a1 = {}, a2 = {};
              for (int64_t i = b; i < e; ++i) {
                const VL zc = loadu<VL>(zt + i * L) - m;
                const VL g = act_grad_vec<A>(zc * sc + be, loadu<VL>(dt + i * L));
                storeu(dt + i * L, g);
                a1 += g;
                a2 += g * zc;
              }
              t1 += widen(a1);
              t2 += widen(a2);
            });
          }
          for (int64_t l = 0; l < nc; ++l) {
            s1[blk * g_.C + c0 + l] = t1[l];
            s2[blk * g_.C + c0 + l] = t2[l];
          }
        });
      });
    });
  }

  void backward_apply(const at::Tensor& x, const at::Tensor&, const float* w, const Coeffs& k, at::Tensor& dx,
                      double* dw) override {
    const float* z = z_.const_data_ptr<float>();
    const float* du = du_.const_data_ptr<float>();
    with_dtype(dtype_, [&](auto tag) {
      using T = decltype(tag);
      const T* xs = x.const_data_ptr<T>();
      T* dxs = dx.mutable_data_ptr<T>();
      parallel_tasks(w, [&](int64_t cb, int64_t blk, Scratch& s) {
        const int64_t nc = lanes(cb), c0 = cb * L;
        const VL m = lane_coeffs(k.mean, c0, nc), kdu = lane_coeffs(k.k_du, c0, nc);
        const VL kz = lane_coeffs(k.k_z, c0, nc), k0 = lane_coeffs(k.k_0, c0, nc);
        double acc[kMaxTaps * L] = {};
        for (int64_t n = batch_begin(blk); n < batch_end(blk); ++n) {
          const float* zt = tile(z, n, cb);
          const float* dt = tile(du, n, cb);
          for (int64_t p = 0; p < g_.Ho; ++p) {
            float* o = s.dz.data() + ((P + p) * wz_ + P) * L;
            for (int64_t q = 0; q < g_.Wo; ++q) {
              const int64_t i = (p * g_.Wo + q) * L;
              const VL dz = kdu * loadu<VL>(dt + i);
              storeu(o + q * L, k.batch_stats ? dz + kz * (loadu<VL>(zt + i) - m) + k0 : dz);
            }
          }
          Prefetch pf;
          pf.add(dxs + in_.offset(n, c0), in_, nc, true);
          pf.add(xs + in_.offset(n, c0), in_, nc, false);
          input_grad(s, pf);
          unpack_tile(s.out.data(), in_, nc, dxs + in_.offset(n, c0), [](const VL& v) { return v; });
          pack_tile(xs + in_.offset(n, c0), in_, nc, s.x.data(), wp_, P);
          kern_.dw(s.x.data(), wp_, s.dz.data() + (P * wz_ + P) * L, wz_, g_.Ho, g_.Wo, acc);
        }
        for (int64_t l = 0; l < nc; ++l)
          for (int t = 0; t < K * K; ++t) dw[(blk * g_.C + c0 + l) * K * K + t] = acc[t * L + l];
      });
    });
    z_ = at::Tensor();
    du_ = at::Tensor();
  }

 private:
  static constexpr int kMaxTaps = 81;

  // Per-thread buffers (the zero borders are written once and never touched
  // again), and the task's kernel as [tap][lane] (wv) and flipped (wflip).
  struct Scratch {
    Buffer x, dz, out, wv, wflip;
  };

  int64_t lanes(int64_t cb) const { return std::min<int64_t>(L, g_.C - cb * L); }

  // Float32 tiles of z or du for every (image, channel block), in that order.
  at::Tensor scratch(const at::Tensor& x) const {
    return at::empty({g_.N * ncb_ * g_.plane() * L}, x.options().dtype(at::kFloat));
  }
  template <class Ptr>
  Ptr* tile(Ptr* base, int64_t n, int64_t cb) const {
    return base + (n * ncb_ + cb) * g_.plane() * L;
  }

  static VL lane_coeffs(const float* v, int64_t c0, int64_t nc) { return load_n(v + c0, nc); }

  // f(channel block, batch block, scratch) for every task, in parallel.
  template <class F>
  void parallel_tasks(const float* w, const F& f) {
    const int64_t nblk = blocks();
    at::parallel_for(0, ncb_ * nblk, 1, [&](int64_t b, int64_t e) {
      Scratch s;
      s.x = Buffer(hp_ * wp_ * L);
      s.dz = Buffer(hz_ * wz_ * L);
      s.out = Buffer(std::max(g_.H * g_.W, g_.plane()) * L);
      s.wv = Buffer(K * K * L);
      s.wflip = Buffer(K * K * L);
      for (int64_t t = b; t < e; ++t) {
        const int64_t cb = t / nblk, blk = t % nblk, nc = lanes(cb);
        for (int tap = 0; tap < K * K; ++tap)
          for (int64_t l = 0; l < L; ++l) {
            const float v = l < nc ? w[(cb * L + l) * K * K + tap] : 0.0f;
            s.wv.data()[tap * L + l] = v;
            s.wflip.data()[(K * K - 1 - tap) * L + l] = v;
          }
        f(cb, blk, s);
      }
    });
  }

  // The x block of the task's next image, into pf.
  template <class T>
  void prefetch_next(Prefetch& pf, const T* xs, int64_t n, int64_t cb, int64_t blk) const {
    if (n + 1 < batch_end(blk)) pf.add(xs + in_.offset(n + 1, cb * L), in_, lanes(cb), false);
  }

  // out[Ho][Wo][16] = conv of the image's nc channels at src.
  template <class T>
  void conv_tile(const T* src, int64_t nc, Scratch& s, float* out, const Prefetch& pf) const {
    pack_tile(src, in_, nc, s.x.data(), wp_, P);
    for (int64_t p = 0; p < g_.Ho; ++p) {
      kern_.conv(s.x.data() + S * p * wp_ * L, wp_, s.wv.data(), out + p * g_.Wo * L, g_.Wo);
      pf.step(p, g_.Ho);
    }
  }

  // s.out[H][W][16] = input gradient from the padded dz in s.dz.
  void input_grad(Scratch& s, const Prefetch& pf) const {
    const float* dz = s.dz.data();
    float* out = s.out.data();
    for (int64_t i = 0; i < g_.H; ++i) {
      pf.step(i, g_.H);
      if (S == 1) {
        kern_.conv_s1(dz + i * wz_ * L, wz_, s.wflip.data(), out + i * g_.W * L, g_.W);
      } else {
        const int64_t d = (i + P) & 1, top = (i + P - d) / 2 + P;
        for (int e = 0; e < 2; ++e) {
          const int64_t j0 = (e + P) & 1;
          if (j0 >= g_.W) continue;
          const int64_t count = (g_.W - j0 + 1) / 2, col = (j0 + P - e) / 2 + P;
          kern_.tconv[d][e](dz + (top * wz_ + col) * L, wz_, s.wv.data(), out + (i * g_.W + j0) * L, count);
        }
      }
    }
  }

  const int P, K, S;
  BlockedKernels kern_;
  int64_t ncb_;
  Layout in_, out_;
  int64_t hp_, wp_, hz_, wz_;
  at::Tensor z_, du_;  // float32 z and du tiles between the backward passes
};

}  // namespace

std::unique_ptr<ForwardEngine> make_blocked_engine(const Geometry& g, at::ScalarType dtype, Act act,
                                                   bool channels_last) {
  return std::make_unique<BlockedEngine>(g, dtype, act, channels_last);
}

}  // namespace mixpath::cpu
