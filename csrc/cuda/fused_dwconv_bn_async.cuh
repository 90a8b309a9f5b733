// Asynchronous global -> shared memory copies (cp.async, sm_80+): they keep a
// whole item of x and dy in flight without holding it in registers.
#pragma once

#include <cuda_runtime.h>

namespace mixpath {
namespace cuda_kernels {
namespace detail {

// Copies the first `bytes` (1..16) of the 16 at src to dst and zero-fills the
// rest; both 16-byte aligned. Only `bytes` bytes are read.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int bytes) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(bytes) : "memory");
}

// Waits for all of this thread's copies (a barrier then shows them to the block).
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

}  // namespace detail
}  // namespace cuda_kernels
}  // namespace mixpath
