// What the CPU kernels share: SIMD vector types, activations, dtype dispatch,
// the problem geometry and the interface of the two loop nests ("engines"):
//   blocked engine (blocked_engine.cpp): 16 channels at a time in a packed
//       [h][w][16] tile, vectorised over channels; every case, both directions;
//   plane engine (plane_engine.cpp): one NCHW (n, c) plane at a time, vectorised
//       along output rows; the backward of stride 1, K <= 5, rows >= 16, where
//       it is memory-bound and keeps a smaller working set.
// Every reduction is split into tasks fixed by the shape alone (never by the
// thread count) and merged in task order, so results are bit-identical across
// runs and thread counts. Within a task, float32 sums run over at most kRun
// terms per lane before they are added in double (for_runs), so their rounding
// error does not grow with the plane size.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>

namespace mixpath::cpu {

// GCC/Clang vector extensions: explicit SIMD without intrinsics. With
// -march=native on AVX-512 an f32x16 is one zmm register (two ymm on AVX2).
typedef float f32x16 __attribute__((vector_size(64)));
typedef double f64x16 __attribute__((vector_size(128)));

inline f64x16 widen(const f32x16& v) { return __builtin_convertvector(v, f64x16); }

// The unrolled conv loops are kept out of line: compiled once per (K, stride)
// rather than once per dtype and activation (which also keeps builds short).
#define MIXPATH_KERNEL __attribute__((noinline))

template <class V>
inline constexpr int kWidth = sizeof(V) / sizeof(std::declval<V&>()[0]);

template <class V, class E>
inline V loadu(const E* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <class V, class E>
inline void storeu(E* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// A macro argument holding commas (shuffle index lists).
#define MIXPATH_ARGS(...) __VA_ARGS__

template <class V>
inline V splat(float s) {
  return V{} + s;
}

// Lanes summed in a fixed order (deterministic), in double.
template <class V>
inline double hsum(const V& v) {
  double s = 0.0;
  for (int i = 0; i < kWidth<V>; ++i) s += v[i];
  return s;
}

// Terms per lane of one float32 partial sum. Each add rounds the running total,
// so a float32 sum of m terms is off by about sqrt(m) of its roundings: a whole
// plane's worth (50176 at 224 x 224) lost 3 digits. 64 keeps sums as exact as
// PyTorch's, and one double add per 64 terms costs little.
inline constexpr int64_t kRun = 64;

// f(begin, end) for the consecutive runs of [0, n) of at most `run` indices, in order.
template <class F>
inline void for_runs(int64_t n, int64_t run, const F& f) {
  for (int64_t b = 0; b < n; b += run) f(b, std::min(n, b + run));
}

// 16 elements of x's dtype <-> 16 float32 lanes, vectorised (c10's scalar
// conversions do not vectorise); rounding as c10: nearest even, NaN kept.
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

inline f32x16 load16(const float* p) { return loadu<f32x16>(p); }
inline void store16(float* p, const f32x16& v) { storeu(p, v); }

inline f32x16 load16(const c10::BFloat16* p) {
  u16x16 h;
  std::memcpy(&h, p, sizeof(h));
  const u32x16 w = __builtin_convertvector(h, u32x16) << 16;
  f32x16 v;
  std::memcpy(&v, &w, sizeof(v));
  return v;
}

inline void store16(c10::BFloat16* p, const f32x16& v) {
  u32x16 b;
  std::memcpy(&b, &v, sizeof(b));
  b = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
  b = v != v ? 0x7FC0u : b;
  const u16x16 h = __builtin_convertvector(b, u16x16);
  std::memcpy(p, &h, sizeof(h));
}

#ifdef __FLT16_MAX__  // the compiler has _Float16 (F16C or AVX512-FP16 conversions with -march=native)
typedef _Float16 f16x16 __attribute__((vector_size(32)));
inline f32x16 load16(const c10::Half* p) {
  f16x16 h;
  std::memcpy(&h, p, sizeof(h));
  return __builtin_convertvector(h, f32x16);
}
inline void store16(c10::Half* p, const f32x16& v) {
  const f16x16 h = __builtin_convertvector(v, f16x16);
  std::memcpy(p, &h, sizeof(h));
}
#else
inline f32x16 load16(const c10::Half* p) {
  f32x16 v;
  for (int i = 0; i < 16; ++i) v[i] = static_cast<float>(p[i]);
  return v;
}
inline void store16(c10::Half* p, const f32x16& v) {
  for (int i = 0; i < 16; ++i) p[i] = static_cast<c10::Half>(v[i]);
}
#endif

// Rows of n elements between x's dtype and float32.
template <class T>
inline void to_float(const T* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) storeu(dst + i, load16(src + i));
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <class T>
inline void from_float(const float* src, T* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) store16(dst + i, loadu<f32x16>(src + i));
  for (; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

enum class Act { kRelu6, kRelu, kNone };

template <Act A>
inline float act_fn(float u) {
  if constexpr (A == Act::kRelu6) return std::min(std::max(u, 0.0f), 6.0f);
  if constexpr (A == Act::kRelu) return std::max(u, 0.0f);
  return u;
}

// Written so that NaN passes through, as in act_fn and PyTorch.
template <Act A, class V>
inline V act_vec(V u) {
  if constexpr (A != Act::kNone) u = u < 0.0f ? V{} : u;
  if constexpr (A == Act::kRelu6) u = u > 6.0f ? splat<V>(6.0f) : u;
  return u;
}

// act'(u) as PyTorch's CPU backward kernels give it: 0 at the kinks; at u = NaN
// 0 for relu6 (hardtanh_backward, vectorised: 0 < u < 6) and 1 for relu
// (threshold_backward: zero only where u <= 0).
template <Act A>
inline float act_grad(float u) {
  if constexpr (A == Act::kRelu6) return (u > 0.0f && u < 6.0f) ? 1.0f : 0.0f;
  if constexpr (A == Act::kRelu) return u <= 0.0f ? 0.0f : 1.0f;
  return 1.0f;
}

// g * act'(u) lane by lane, as act_grad.
template <Act A, class V>
inline V act_grad_vec(const V& u, const V& g) {
  if constexpr (A == Act::kRelu6) return (u > 0.0f) & (u < 6.0f) ? g : V{};
  if constexpr (A == Act::kRelu) return u <= 0.0f ? V{} : g;
  return g;
}

template <class F>
decltype(auto) with_act(Act act, F&& f) {
  switch (act) {
    case Act::kRelu6: return f(std::integral_constant<Act, Act::kRelu6>{});
    case Act::kRelu: return f(std::integral_constant<Act, Act::kRelu>{});
    default: return f(std::integral_constant<Act, Act::kNone>{});
  }
}

// Calls f(T{}) with T the element type of x, y, dy and dx.
template <class F>
decltype(auto) with_dtype(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kBFloat16: return f(c10::BFloat16{});
    case at::kHalf: return f(c10::Half{});
    default: TORCH_CHECK(false, "mixpath CPU kernels: unsupported dtype ", t);
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Zero-filled float scratch on a 64-byte boundary, so the blocked engine's
// vectors and the plane engine's row starts never straddle cache lines.
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(int64_t n) {
    const size_t bytes = static_cast<size_t>(ceil_div(std::max<int64_t>(n, 1) * 4, 64) * 64);
    p_.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    TORCH_CHECK(p_, "mixpath CPU kernels: out of memory allocating ", bytes, " bytes of scratch");
    std::memset(p_.get(), 0, bytes);
  }
  float* data() const { return p_.get(); }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> p_;
};

struct Geometry {
  int64_t N, C, H, W, Ho, Wo;
  int K, P, S;
  int64_t plane() const { return Ho * Wo; }
};

// Batch statistics of z for one channel over part of the batch (Chan et al. merge).
struct Moments {
  double count = 0.0, mean = 0.0, m2 = 0.0;
  void merge(double n, double m, double q) {
    const double total = count + n;
    const double delta = m - mean;
    mean += delta * (n / total);
    m2 += q + delta * delta * (count * n / total);
    count = total;
  }
};

// Per-channel float32 coefficients (length C) of the elementwise parts:
//   u  = (z - mean) * scale + beta,     du = dy * act'(u)
//   dz = k_du * du + k_z * (z - mean) + k_0   (batch_stats: training)
//   dz = k_du * du                            (eval: dz does not depend on z, not even on a NaN in it)
struct Coeffs {
  const float* mean;
  const float* scale;
  const float* beta;
  const float* k_du;
  const float* k_z;
  const float* k_0;
  bool batch_stats;
};

// A loop nest over the problem. Reductions come back per (batch block, channel):
// index [blk * C + c] (dW: [(blk * C + c) * K * K + tap]); the batch is cut into
// blocks() blocks by the shape alone. This base is the backward; ForwardEngine adds the forward.
class Engine {
 public:
  Engine(const Geometry& g, at::ScalarType dtype, Act act, int64_t channel_groups)
      : g_(g), dtype_(dtype), act_(act) {
    // Enough (channel group, batch block) tasks to balance any thread count,
    // few enough that the per-task partials stay small.
    const int64_t want = std::min<int64_t>(g.N, ceil_div(64, channel_groups));
    batch_per_block_ = ceil_div(g.N, want);
    blocks_ = ceil_div(g.N, batch_per_block_);
  }
  virtual ~Engine() = default;
  int64_t blocks() const { return blocks_; }

  // Backward pass 1: z recomputed and kept (dx's memory may hold it); sums of
  // du (s1) and du * (z - mean) (s2).
  virtual void backward_reduce(const at::Tensor& x, const at::Tensor& dy, const float* w, const Coeffs& k,
                               at::Tensor& dx, double* s1, double* s2) = 0;
  // Backward pass 2: dz on the fly, dx = conv_transpose(dz, w), weight-gradient partials.
  virtual void backward_apply(const at::Tensor& x, const at::Tensor& dy, const float* w, const Coeffs& k,
                              at::Tensor& dx, double* dw) = 0;

 protected:
  int64_t batch_begin(int64_t blk) const { return blk * batch_per_block_; }
  int64_t batch_end(int64_t blk) const { return std::min(g_.N, (blk + 1) * batch_per_block_); }

  Geometry g_;
  at::ScalarType dtype_;
  Act act_;

 private:
  int64_t batch_per_block_ = 1, blocks_ = 1;
};

class ForwardEngine : public Engine {
 public:
  using Engine::Engine;
  // Training pass 1: z = conv(x, w) as float32 in y's layout, and its moments.
  virtual void forward_stats(const at::Tensor& x, const float* w, float* z, Moments* part) = 0;
  // Eval, one pass: y = act(conv(x, w) + bias) with BatchNorm folded into w and bias.
  virtual void forward_eval(const at::Tensor& x, const float* w, const float* bias, at::Tensor& y) = 0;
};

// Every case, forward and backward.
std::unique_ptr<ForwardEngine> make_blocked_engine(const Geometry& g, at::ScalarType dtype, Act act,
                                                   bool channels_last);
// The backward of NCHW, stride 1, K <= 5 (see plane_engine.cpp).
std::unique_ptr<Engine> make_plane_engine(const Geometry& g, at::ScalarType dtype, Act act);

}  // namespace mixpath::cpu
