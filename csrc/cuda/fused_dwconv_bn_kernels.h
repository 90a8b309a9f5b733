// Host interface of the CUDA kernels of the fused op (multi-path depthwise conv
// merged into one K x K kernel, BatchNorm, activation): raw pointers and a
// cudaStream_t, no torch types, so the .cu files build without torch's headers.
// fused_dwconv_bn_cuda.cpp binds these to at::Tensor.
//
// Every launch is deterministic: cross-block reductions go through per-block
// partials in `workspace`, summed in a fixed order (no float atomics).
// Results depend on `num_sms` (it sets how many partials there are), so keep
// it fixed per device for bit-identical runs.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace mixpath {
namespace cuda_kernels {

enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
enum class Activation : int32_t { kReLU6 = 0, kReLU = 1, kNone = 2 };
// Training forward: store z = conv(x) (float32, in the workspace) in the
// statistics pass and apply BN to it, instead of recomputing the convolution
// in the apply pass; the results are the same bits either way. kAuto: by K
// (stores_z). The backward recomputes z unless the forward kept it (keeps_z).
enum class StoreZ : int32_t { kAuto = -1, kRecompute = 0, kStore = 1 };

// kAuto stores z from this merged kernel size up: the convolution's float32
// FMAs then cost more than writing and reading z. To be set by measurement on
// a GPU (the review's estimate: about 1.8x for the forward at K = 9).
constexpr int32_t kStoreZMinK = 7;

struct OpShape {
  int64_t N, C, H, W;    // x: (N, C, H, W), NCHW-contiguous or channels_last
  int32_t K;             // merged kernel size: odd, 1..9
  int32_t stride;        // 1 or 2; padding K / 2; output (H - 1) / stride + 1
  DType dtype;           // of x, y, dy, dx; everything else is float32
  bool channels_last;
  bool training;         // batch statistics (training) or the given ones (eval)
  Activation activation;
  float eps;
  StoreZ store_z = StoreZ::kAuto;
  // Training only: the forward writes z (y's shape and layout, z_dtype) to
  // ForwardArgs::z, which the caller keeps, and the backward reads it from
  // BackwardArgs::z instead of recomputing the convolution in B1 and B3. With
  // a float32 z the results are the same bits as recomputing it.
  bool keeps_z = false;
  DType z_dtype = DType::kFloat32;
};

// Whether the forward of `s` stores z (only a training forward has two passes
// to share it): always when it keeps z, else by store_z.
bool stores_z(const OpShape& s);

struct ForwardArgs {
  const void* x;
  const float* weight;   // (C, K, K)
  const float* gamma;    // (C,)
  const float* beta;     // (C,)
  // eval: the statistics to normalise with (running mean and variance);
  // training: unused, the batch statistics are computed.
  const float* mean;
  const float* var;
  void* y;               // x's shape at the output size, x's dtype and layout
  float* save_mean;      // training only: batch mean (C,)
  float* save_var;       // training only: biased batch variance (C,)
  void* z = nullptr;     // keeps_z: z is written here (y's shape and layout, z_dtype)
};

struct BackwardArgs {
  const void* dy;        // y's shape, dtype and layout
  const void* x;
  const float* weight;
  const float* gamma;
  const float* beta;
  const float* save_mean;  // forward's save_mean / save_var
  const float* save_var;
  void* dx;              // x's shape, dtype and layout
  float* dweight;        // (C, K, K)
  float* dgamma;         // (C,)
  float* dbeta;          // (C,)
  const void* z = nullptr;  // keeps_z: the forward's z, read instead of recomputed
};

// Upper bound of the shapes the kernels take: a message when `s` is not
// supported (K, stride, sizes), else nullptr.
const char* unsupported_reason(const OpShape& s);

// Bytes of scratch memory each launch needs (16-byte aligned, uninitialised is fine);
// the forward's includes z when stores_z(s) and not keeps_z.
size_t forward_workspace_bytes(const OpShape& s, int num_sms);
size_t backward_workspace_bytes(const OpShape& s, int num_sms);

// Enqueue the kernels on `stream`; returns the first launch error. l2_bytes:
// the device's L2 cache (cudaDevAttrL2CacheSize). y and dx are written with
// streaming (evict-first) stores only when they are larger than it: a smaller
// output stays in L2 for the next layer, which reads it back at once.
cudaError_t forward(const OpShape& s, const ForwardArgs& a, void* workspace, int num_sms, int64_t l2_bytes,
                    cudaStream_t stream);
cudaError_t backward(const OpShape& s, const BackwardArgs& a, void* workspace, int num_sms, int64_t l2_bytes,
                     cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace mixpath
