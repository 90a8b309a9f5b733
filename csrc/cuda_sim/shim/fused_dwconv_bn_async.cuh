// Simulator model of csrc/cuda/fused_dwconv_bn_async.cuh (inline PTX cannot
// run on the host): a copy is checked, recorded and carried out only at the
// thread's wait, so reading its destination before the wait sees poison.
#pragma once

#include <cuda_runtime.h>

namespace mixpath {
namespace cuda_kernels {
namespace detail {

inline void cp_async16(void* dst, const void* src, int bytes) { ::sim::cp_async(dst, src, bytes, __FILE__, __LINE__); }
inline void cp_async_wait_all() { ::sim::cp_async_wait_all(); }

}  // namespace detail
}  // namespace cuda_kernels
}  // namespace mixpath
