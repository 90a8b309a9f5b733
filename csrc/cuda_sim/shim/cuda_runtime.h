// The CPU simulator's stand-in for the CUDA headers (csrc/cuda_sim/README.md):
// the types, intrinsics and runtime calls that csrc/cuda uses, as host C++.
// Kernels run as one fiber per CUDA thread (sim.cpp); barriers and warp
// shuffles are scheduling points, vector accesses check their alignment.
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define MIXPATH_CUDA_SIM 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __maxnreg__(n)
#define __launch_bounds__(...)

// ------------------------------------------------------------------ types

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }

struct __half { unsigned short x; };
struct alignas(4) __half2 { __half x, y; };
struct __nv_bfloat16 { unsigned short x; };

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;
struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr : int { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrL2CacheSize = 38 };
enum cudaMemcpyKind : int { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };

// ------------------------------------------------------ the simulator core

namespace sim {
extern dim3 cur_thread, cur_block, cur_block_dim, cur_grid_dim;
void* dynamic_smem_base();
template <class T>
T* dynamic_smem() {
  return static_cast<T*>(dynamic_smem_base());
}
void syncthreads(const char* file, int line);
// One warp shuffle of 8 bytes of payload: returns the payload of lane `src` (own when out of range).
uint64_t shuffle(unsigned mask, uint64_t payload, int src, const char* file, int line);
int lane();
[[noreturn]] void fail(const char* what, const char* file, int line);
void check_aligned(const void* p, size_t align, const char* what, const char* file, int line);
void cp_async(void* dst, const void* src, int bytes, const char* file, int line);
void cp_async_wait_all();
void count_streaming_store();  // the launch record counts __stcs (sim_control.h)

using Body = void (*)(void* ctx);
// Runs body(ctx) as a grid; returns the launch error (also stored for cudaGetLastError).
cudaError_t run_grid(const void* kernel, const char* name, dim3 grid, dim3 block, size_t smem, Body body, void* ctx);

template <class... P>
struct Launcher {
  void (*kernel)(P...);
  const char* name;
  dim3 grid, block;
  size_t smem;
  template <class... A>
  void operator()(A&&... args) const {
    struct Ctx {
      void (*k)(P...);
      std::tuple<std::decay_t<P>...> args;
    } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    run_grid(reinterpret_cast<const void*>(kernel), name, grid, block, smem,
             [](void* c) {
               Ctx& x = *static_cast<Ctx*>(c);
               std::apply(x.k, x.args);  // by value: each thread gets its own copy of the arguments
             },
             &ctx);
  }
};
template <class... P>
Launcher<P...> launch(void (*kernel)(P...), const char* name, dim3 grid, dim3 block, size_t smem = 0,
                      cudaStream_t = nullptr) {
  return {kernel, name, grid, block, smem};
}
}  // namespace sim

#define threadIdx (::sim::cur_thread)
#define blockIdx (::sim::cur_block)
#define blockDim (::sim::cur_block_dim)
#define gridDim (::sim::cur_grid_dim)
#define __syncthreads() ::sim::syncthreads(__FILE__, __LINE__)

// ------------------------------------------------------------ intrinsics

template <class T>
T sim_shfl_(unsigned mask, T v, int src, const char* file, int line) {
  static_assert(sizeof(T) <= 8, "shuffle payload");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = ::sim::shuffle(mask, bits, src, file, line);
  T r;
  std::memcpy(&r, &bits, sizeof(T));
  return r;
}
#define __shfl_sync(mask, v, src, ...) sim_shfl_(mask, v, (src) & 31, __FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, o, ...) sim_shfl_(mask, v, ::sim::lane() ^ (o), __FILE__, __LINE__)
#define __shfl_down_sync(mask, v, d, ...) sim_shfl_(mask, v, ::sim::lane() + (d), __FILE__, __LINE__)
#define __shfl_up_sync(mask, v, d, ...) sim_shfl_(mask, v, ::sim::lane() - (d), __FILE__, __LINE__)

// Read-only and streaming accesses: checked for their type's alignment.
template <class T>
inline T sim_ldg_(const T* p, const char* file, int line) {
  ::sim::check_aligned(p, alignof(T), "__ldg", file, line);
  return *p;
}
template <class T>
inline void sim_stcs_(T* p, const T& v, const char* file, int line) {
  ::sim::check_aligned(p, alignof(T), "__stcs", file, line);
  ::sim::count_streaming_store();
  *p = v;
}
#define __ldg(p) sim_ldg_(p, __FILE__, __LINE__)
#define __stcs(p, v) sim_stcs_(p, v, __FILE__, __LINE__)

inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
using std::isfinite;  // CUDA declares it in the global namespace too
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

// Half and bfloat16, round to nearest even as the device's _rn conversions.
inline float __half2float(__half h) { return static_cast<float>(std::bit_cast<_Float16>(h.x)); }
inline __half __float2half_rn(float f) { return {std::bit_cast<unsigned short>(static_cast<_Float16>(f))}; }
inline __half __ushort_as_half(unsigned short u) { return {u}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline float2 __half22float2(const __half2& h) { return {__half2float(h.x), __half2float(h.y)}; }
inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float(static_cast<unsigned>(b.x) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const unsigned u = __float_as_uint(f);
  if (std::isnan(f)) return {static_cast<unsigned short>((u >> 16) | 0x40)};
  return {static_cast<unsigned short>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.x; }

// ------------------------------------------------------------ runtime API

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attr, int value);
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void* kernel, int threads, size_t smem);
template <class... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}
template <class... P>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, void (*kernel)(P...), int threads,
                                                          size_t smem) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, reinterpret_cast<const void*>(kernel), threads, smem);
}
cudaError_t cudaMalloc(void** p, size_t bytes);
template <class T>
cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
cudaError_t cudaFree(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaDeviceSynchronize();
