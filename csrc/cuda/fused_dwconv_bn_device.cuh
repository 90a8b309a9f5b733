// Device helpers shared by the NCHW and NHWC kernels: element conversions,
// the activation and its derivative, moment merging, fixed-order
// (deterministic) reductions and shared-memory windows.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fused_dwconv_bn_kernels.h"

namespace mixpath {
namespace cuda_kernels {
namespace detail {

constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------- elements

// Elements by storage width: float32, or 16 bits holding a half or a bfloat16
// (told apart at run time: one select per element). Copy loops so exist in
// two versions instead of three, which keeps the build fast.
__device__ __forceinline__ float decode(float r, bool) { return r; }
__device__ __forceinline__ float decode(unsigned short r, bool bf16) {
  return bf16 ? __uint_as_float(static_cast<unsigned>(r) << 16) : __half2float(__ushort_as_half(r));
}

template <class Raw>
__device__ __forceinline__ Raw encode(float v, bool bf16);
template <>
__device__ __forceinline__ float encode<float>(float v, bool) {
  return v;
}
template <>
__device__ __forceinline__ unsigned short encode<unsigned short>(float v, bool bf16) {
  return bf16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v)) : __half_as_ushort(__float2half_rn(v));
}

// Calls f(Raw{}) with Raw = float or unsigned short, the storage of `dtype`;
// the branch is uniform.
template <class F>
__device__ __forceinline__ void with_width(int dtype, F&& f) {
  if (dtype == static_cast<int>(DType::kFloat32)) {
    f(float{});
  } else {
    f(static_cast<unsigned short>(0));
  }
}

__device__ __forceinline__ bool is_bf16(int dtype) { return dtype == static_cast<int>(DType::kBFloat16); }

// Four consecutive elements as one access: a float4, or four 16-bit values in a uint2.
template <class Raw>
struct Quad;
template <>
struct Quad<float> {
  using Bits = float4;
};
template <>
struct Quad<unsigned short> {
  using Bits = uint2;
};

__device__ __forceinline__ float4 decode4(const float4& v, bool) { return v; }
__device__ __forceinline__ float4 decode4(const uint2& v, bool bf16) {
  if (bf16) {
    return make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u), __uint_as_float(v.y << 16),
                       __uint_as_float(v.y & 0xffff0000u));
  }
  const float2 lo = __half22float2(*reinterpret_cast<const __half2*>(&v.x));
  const float2 hi = __half22float2(*reinterpret_cast<const __half2*>(&v.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}

template <class Bits>
__device__ __forceinline__ Bits encode4(const float4& v, bool bf16);
template <>
__device__ __forceinline__ float4 encode4<float4>(const float4& v, bool) {
  return v;
}
template <>
__device__ __forceinline__ uint2 encode4<uint2>(const float4& v, bool bf16) {
  const unsigned e0 = encode<unsigned short>(v.x, bf16), e1 = encode<unsigned short>(v.y, bf16);
  const unsigned e2 = encode<unsigned short>(v.z, bf16), e3 = encode<unsigned short>(v.w, bf16);
  return make_uint2(e0 | (e1 << 16), e2 | (e3 << 16));
}

// An output store (y, dx, z): streaming (__stcs, evict first) when the output
// is larger than L2, else a plain one, which leaves the line in L2 for the
// next kernel to read back.
template <class T>
__device__ __forceinline__ void store_out(T* p, const T& v, bool streaming) {
  if (streaming) {
    __stcs(p, v);
  } else {
    *p = v;
  }
}

// ------------------------------------------------------ activation and BN

// Comparisons, not fminf/fmaxf: those return 0 or 6 at NaN, PyTorch keeps NaN.
__device__ __forceinline__ float activate(float u, int act) {
  if (act == static_cast<int>(Activation::kReLU6)) return u < 0.f ? 0.f : (u > 6.f ? 6.f : u);
  if (act == static_cast<int>(Activation::kReLU)) return u < 0.f ? 0.f : u;
  return u;
}

// dL/du from dL/dy, with PyTorch's masks, NaN included: relu6 passes dy where
// 0 < u < 6 (not at NaN), relu where !(u <= 0) (at NaN too, as its
// threshold_backward does).
__device__ __forceinline__ float activate_grad(float u, float dy, int act) {
  if (act == static_cast<int>(Activation::kReLU6)) return (u > 0.f && u < 6.f) ? dy : 0.f;
  if (act == static_cast<int>(Activation::kReLU)) return u <= 0.f ? 0.f : dy;
  return dy;
}

// dL/dz from dL/du: scale * ((du - mdu) - (z - mean) * k) in training (the
// difference before the scaling, as in PyTorch); scale * du in eval, where z
// must not enter: (mean - z) * 0 is NaN at an infinite or NaN z.
__device__ __forceinline__ float bn_grad(float du, float z, float scale, float k, float mdu, float mean, bool training) {
  return training ? scale * fmaf(mean - z, k, du - mdu) : scale * du;
}

// Count, mean and sum of squared deviations of a set of values.
struct Moments {
  float n, mean, m2;
};

// Non-finite values: PyTorch's batch mean is a sum over n, so +-inf or NaN
// once an infinity or NaN is among the values, and the variance is then NaN.
// The shifted sums and merges below keep those kinds (a difference inf - inf
// would make NaN of a mean that is -inf), at no cost to finite values' bits.
__device__ __forceinline__ float nan_value() { return __uint_as_float(0x7fc00000u); }

// Chan et al.'s merge of two disjoint sets; exact in count, robust for any offset of the mean.
__device__ __forceinline__ Moments merge(const Moments& a, const Moments& b) {
  const float n = a.n + b.n;
  if (n == 0.f) return a;
  if (!isfinite(a.mean) || !isfinite(b.mean)) return {n, a.mean + b.mean, nan_value()};
  const float d = b.mean - a.mean;
  const float f = b.n / n;
  return {n, fmaf(d, f, a.mean), a.m2 + b.m2 + d * d * a.n * f};
}

// The shift of shifted sums from the first value: 0 for an infinity or NaN,
// so that the sum of deviations keeps its kind.
__device__ __forceinline__ float first_shift(float z) { return isfinite(z) ? z : 0.f; }

// Moments of n > 0 values from their shifted sums; the clamp of rounding keeps NaN.
__device__ __forceinline__ Moments shifted_moments(float n, float shift, float s1, float s2) {
  const float m = s1 / n, m2 = s2 - s1 * m;
  return {n, shift + m, m2 < 0.f ? 0.f : m2};
}

// A thread's values accumulated as sums of deviations from its first value
// (the shifted-data algorithm: no cancellation while the shift lies within a
// few standard deviations of the mean, which a sample of the data does).
struct ShiftedSums {
  float shift = 0.f, n = 0.f, s1 = 0.f, s2 = 0.f;
  __device__ __forceinline__ void add(float z) {
    if (n == 0.f) shift = first_shift(z);
    const float d = z - shift;
    n += 1.f;
    s1 += d;
    s2 = fmaf(d, d, s2);
  }
  __device__ __forceinline__ Moments moments() const {
    if (n == 0.f) return {0.f, 0.f, 0.f};
    return shifted_moments(n, shift, s1, s2);
  }
};

// ----------------------------------------------- fixed-order reductions

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;  // the same in every lane: IEEE addition commutes
}

// Lane 0's merge tree, broadcast: the merge does not commute bit for bit.
__device__ __forceinline__ Moments warp_merge(Moments m) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Moments other{__shfl_down_sync(kFullMask, m.n, o), __shfl_down_sync(kFullMask, m.mean, o),
                  __shfl_down_sync(kFullMask, m.m2, o)};
    m = merge(m, other);
  }
  return {__shfl_sync(kFullMask, m.n, 0), __shfl_sync(kFullMask, m.mean, 0), __shfl_sync(kFullMask, m.m2, 0)};
}

// Merges count entries (n, mean, m2 at p[3 * i * stride]) with one warp, in a
// fixed order: lane l takes entries l, l + 32, ... in turn, then a tree.
// Every lane must call it; every lane returns the result.
__device__ __forceinline__ Moments warp_merge_strided(const float* p, int count, int stride) {
  const int lane = threadIdx.x & 31;
  Moments m{0.f, 0.f, 0.f};
  for (int i = lane; i < count; i += 32) {
    const float* q = p + static_cast<int64_t>(i) * stride;
    m = merge(m, Moments{q[0], q[1], q[2]});
  }
  return warp_merge(m);
}

// Fixed-order sum of p[i * stride], i < count, by one warp (every lane gets it).
__device__ __forceinline__ float warp_sum_strided(const float* p, int count, int stride) {
  const int lane = threadIdx.x & 31;
  float s = 0.f;
  for (int i = lane; i < count; i += 32) s += p[static_cast<int64_t>(i) * stride];
  return warp_sum(s);
}

// --------------------------------------------------------- shared memory

__device__ __forceinline__ float4 lds4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ void sts4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }

// Loads the window [SH, SH + N) of a shared-memory row whose start `p` is
// 16-byte aligned, as whole float4 chunks; SH is a compile-time offset.
template <int N, int SH>
__device__ __forceinline__ void load_window(const float* p, float (&w)[N]) {
  constexpr int kFirst = SH / 4;
  constexpr int kLast = (SH + N - 1) / 4;
#pragma unroll
  for (int c = kFirst; c <= kLast; ++c) {
    const float4 v = lds4(p + 4 * c);
    const float e[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int i = 4 * c + k - SH;
      if (i >= 0 && i < N) w[i] = e[k];
    }
  }
}

__device__ __forceinline__ void zero_shared(float* p, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) p[i] = 0.f;
}

// Per-channel BN coefficients.
struct BnCoef {
  float scale, shift;  // u = z * scale + shift
};

__device__ __forceinline__ BnCoef bn_coef(float gamma, float beta, float mean, float var, float eps) {
  const float scale = gamma * rsqrtf(var + eps);
  return {scale, fmaf(-mean, scale, beta)};
}

}  // namespace detail
}  // namespace cuda_kernels
}  // namespace mixpath
