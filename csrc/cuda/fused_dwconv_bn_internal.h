// Declarations shared by the .cu files (host side): each layout's launcher and
// the final reduction of the backward partials.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "fused_dwconv_bn_kernels.h"

namespace mixpath {
namespace cuda_kernels {
namespace detail {

// Each layout's launcher sizes its scratch and enqueues its kernels in one
// function, so the size and the launches cannot disagree: given ws_floats, it
// only stores there the number of floats of workspace it needs; given nullptr,
// it launches. stream_stores: write y and dx with streaming stores (they are
// larger than L2).
cudaError_t nchw_forward(const OpShape& s, const ForwardArgs& a, float* workspace, int num_sms, bool stream_stores,
                         cudaStream_t stream, size_t* ws_floats);
cudaError_t nchw_backward(const OpShape& s, const BackwardArgs& a, float* workspace, int num_sms, bool stream_stores,
                          cudaStream_t stream, size_t* ws_floats, int out_k);
cudaError_t nhwc_forward(const OpShape& s, const ForwardArgs& a, float* workspace, int num_sms, bool stream_stores,
                         cudaStream_t stream, size_t* ws_floats);
cudaError_t nhwc_backward(const OpShape& s, const BackwardArgs& a, float* workspace, int num_sms, bool stream_stores,
                          cudaStream_t stream, size_t* ws_floats, int out_k);

// A training forward that stores z (stores_z): the layouts' statistics pass
// writes z (stored_z_dtype, y's shape and layout) at `z` with its moments
// partials (n, mean, m2 per [channel][slot]), then this merges each channel's
// partials in the same fixed order as the apply pass (-> save_mean, save_var,
// and the BN scale and shift in coef, 2 * C floats) and applies BN and the
// activation to z elementwise.
cudaError_t launch_apply_stored_z(const OpShape& s, const ForwardArgs& a, const void* z, const float* part, int slots,
                                  float* coef, int num_sms, bool stream_stores, cudaStream_t stream);

// Floats of workspace a stored z takes: 0 when the caller keeps z, else float32
// z rounded up to a multiple of 4 (what follows stays 16-byte aligned).
size_t stored_z_floats(const OpShape& s);

// Where the statistics pass writes a stored z, and as what: the caller's
// ForwardArgs::z in z_dtype when it keeps z, else the workspace in float32.
inline DType stored_z_dtype(const OpShape& s) { return s.keeps_z ? s.z_dtype : DType::kFloat32; }
inline void* stored_z_at(const OpShape& s, const ForwardArgs& a, float* workspace_z) {
  return s.keeps_z ? a.z : workspace_z;
}

inline int dtype_bytes(DType d) { return d == DType::kFloat32 ? 4 : 2; }

// dbeta[c] = sum of grad_part[c][i][0], dgamma[c] = rsqrt(var[c] + eps) * sum of
// grad_part[c][i][1] (i < grad_slots), dweight[c] = sum of dw_part[c][i]
// (i < dw_slots, K * K floats each), of which the centred out_k x out_k taps
// are written (out_k < K when a 1 x 1 kernel ran as a padded 3 x 3); all in a
// fixed order.
cudaError_t launch_backward_finish(const float* grad_part, int grad_slots, const float* dw_part, int dw_slots,
                                   const float* save_var, float eps, int64_t C, int K, int out_k, float* dweight,
                                   float* dgamma, float* dbeta, cudaStream_t stream);

// Blocks of `threads` threads and `smem` bytes resident per multiprocessor (at least 1).
int resident_blocks(const void* kernel, int threads, size_t smem);

// Blocks per channel group (partial-sum slots) for `groups` groups of `items`
// equal items: the count whose whole waves of per_sm * num_sms resident blocks
// finish first, never with a mostly empty last wave (with equal work per
// block that tail nearly doubles a kernel's time).
int wave_slots(int64_t groups, int64_t items, int per_sm, int num_sms);

// Allows `kernel` up to kSmemBudget of dynamic shared memory when `smem` needs more than 48 KB.
cudaError_t allow_smem(const void* kernel, size_t smem);

constexpr size_t kSmemBudget = 72 * 1024;  // per block: three blocks fit an H100 SM, two an A100's

// Calls F<K, S>::run(args...) for the templated kernel size and stride; K = 1 runs as a
// zero-padded 3 x 3 (fused_dwconv_bn.cu), so it never reaches a layout's launcher.
// static: g++ gives an instantiation on a template template argument from an
// unnamed namespace external (weak) linkage, so the two layouts' same-named
// ForwardOp instantiations would merge at link time and one layout's launcher
// would run the other's kernels.
template <template <int, int> class F, class... Args>
static cudaError_t dispatch_kernel_size(int K, int S, Args&&... args) {
#define MIXPATH_CASE(k) \
  case k:               \
    return S == 1 ? F<k, 1>::run(std::forward<Args>(args)...) : F<k, 2>::run(std::forward<Args>(args)...);
  switch (K) {
    MIXPATH_CASE(3)
    MIXPATH_CASE(5)
    MIXPATH_CASE(7)
    MIXPATH_CASE(9)
    default:
      return cudaErrorInvalidValue;
  }
#undef MIXPATH_CASE
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

}  // namespace detail
}  // namespace cuda_kernels
}  // namespace mixpath
