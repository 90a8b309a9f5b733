// CUDA entry points of the fused op and of its z-keeping pair (schema:
// mixpath/ops/compiled_op.py; declared in csrc/fused_dwconv_bn.h,
// registered by csrc/ops.cpp, which has
// already checked shapes, dtypes and devices). This file turns tensors into
// the raw pointers of fused_dwconv_bn_kernels.h: layout, outputs, scratch,
// device guard and stream. Built only where torch has CUDA.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "../fused_dwconv_bn.h"
#include "fused_dwconv_bn_kernels.h"

namespace mixpath {
namespace {

namespace ck = cuda_kernels;

// As contract.output_memory_format: channels_last only when x is dense that
// way and not also NCHW-contiguous; y and dx follow it.
at::MemoryFormat layout_of(const at::Tensor& x) {
  return (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ? at::MemoryFormat::ChannelsLast
                                                                                 : at::MemoryFormat::Contiguous;
}

ck::DType dtype_of(const at::Tensor& x) {
  if (x.scalar_type() == at::kFloat) return ck::DType::kFloat32;
  if (x.scalar_type() == at::kHalf) return ck::DType::kFloat16;
  TORCH_CHECK(x.scalar_type() == at::kBFloat16, "mixpath CUDA kernels: x must be float32, float16 or bfloat16; got ",
              x.scalar_type());
  return ck::DType::kBFloat16;
}

ck::Activation activation_of(c10::string_view activation) {
  if (activation == "relu6") return ck::Activation::kReLU6;
  if (activation == "relu") return ck::Activation::kReLU;
  TORCH_CHECK(activation == "none", "mixpath CUDA kernels: activation must be 'relu6', 'relu' or 'none'; got '",
              std::string(activation), "'");
  return ck::Activation::kNone;
}

// MIXPATH_CUDA_STORE_Z=auto|0|1 (read once): whether a training forward stores z
// instead of recomputing the convolution (ck::StoreZ; auto: by K).
ck::StoreZ store_z_setting() {
  static const ck::StoreZ setting = [] {
    const char* v = std::getenv("MIXPATH_CUDA_STORE_Z");
    const std::string value = v != nullptr ? v : "auto";
    TORCH_CHECK(value == "auto" || value == "0" || value == "1", "MIXPATH_CUDA_STORE_Z must be auto, 0 or 1; got '",
                value, "': unset it or set one of those");
    return value == "auto" ? ck::StoreZ::kAuto : value == "1" ? ck::StoreZ::kStore : ck::StoreZ::kRecompute;
  }();
  return setting;
}

// keeps_z: the z-keeping ops (z float32: in x's 16-bit dtype the simulator
// measured bf16 y errors of 4.8e-3, above the output tolerance 4.2e-3, and
// relative dgamma errors of 3e-4; float32 z gives the bits of recomputing it).
ck::OpShape shape_of(const at::Tensor& x, const at::Tensor& weight, int64_t stride, bool training, double eps,
                     c10::string_view activation, at::MemoryFormat fmt, bool keeps_z) {
  TORCH_CHECK(x.is_cuda(), "mixpath CUDA kernels: x must be a CUDA tensor; got one on ", x.device());
  ck::OpShape s{x.size(0),
                x.size(1),
                x.size(2),
                x.size(3),
                static_cast<int32_t>(weight.size(-1)),
                static_cast<int32_t>(stride),
                dtype_of(x),
                fmt == at::MemoryFormat::ChannelsLast,
                training,
                activation_of(activation),
                static_cast<float>(eps),
                store_z_setting(),
                keeps_z,
                ck::DType::kFloat32};
  const char* reason = ck::unsupported_reason(s);
  TORCH_CHECK(reason == nullptr, "mixpath CUDA kernels: ", reason != nullptr ? reason : "", " (x ", x.sizes(),
              ", K = ", s.K, ", stride ", stride, ")");
  return s;
}

at::Tensor f32(const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, "mixpath CUDA kernels: weight and BatchNorm tensors must be float32; got ",
              t.scalar_type());
  return t.contiguous();
}

void check(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "mixpath CUDA kernels: ", what, " failed: ", cudaGetErrorString(err));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// What the kernels need to know of the current device, queried once per device:
// multiprocessors (they size the per-block partials) and the L2 size (whether
// outputs get streaming stores).
struct DeviceProps {
  int sms = 0;
  int64_t l2_bytes = 0;
};

DeviceProps device_props() {
  static std::mutex mutex;
  static std::vector<DeviceProps> cache;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() <= static_cast<size_t>(device)) cache.resize(device + 1);
  DeviceProps& p = cache[device];
  if (p.sms == 0) {
    int l2 = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&p.sms, cudaDevAttrMultiProcessorCount, device));
    p.l2_bytes = l2;
  }
  return p;
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Both forwards: with keeps_z, z (float32, y's shape and layout) is the fourth result.
ForwardZResult run_forward(const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& bn_weight,
                           const at::Tensor& bn_bias, const at::Tensor& running_mean, const at::Tensor& running_var,
                           int64_t stride, bool training, double eps, c10::string_view activation, bool keeps_z) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::MemoryFormat fmt = layout_of(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const ck::OpShape s = shape_of(x, weight_in, stride, training, eps, activation, fmt, keeps_z);
  const at::Tensor weight = f32(weight_in), gamma = f32(bn_weight), beta = f32(bn_bias);
  const int64_t Ho = (s.H - 1) / s.stride + 1, Wo = (s.W - 1) / s.stride + 1;
  at::Tensor y = at::empty({s.N, s.C, Ho, Wo}, x.options().memory_format(fmt));
  at::Tensor z = keeps_z ? at::empty({s.N, s.C, Ho, Wo}, gamma.options().memory_format(fmt)) : at::Tensor();
  // Training: the batch statistics, written by the kernels. Eval: copies of the running ones.
  at::Tensor save_mean = training ? at::empty({s.C}, gamma.options()) : f32(running_mean).clone();
  at::Tensor save_var = training ? at::empty({s.C}, gamma.options()) : f32(running_var).clone();
  const DeviceProps dev = device_props();
  // Stored z (ck::stores_z) lives in this workspace, for the forward's two passes only, unless it is kept.
  const size_t ws_bytes = ck::forward_workspace_bytes(s, dev.sms);
  at::Tensor workspace = at::empty({static_cast<int64_t>((ws_bytes + 3) / 4)}, gamma.options());
  const ck::ForwardArgs args{x.data_ptr(),
                             weight.data_ptr<float>(),
                             gamma.data_ptr<float>(),
                             beta.data_ptr<float>(),
                             save_mean.data_ptr<float>(),
                             save_var.data_ptr<float>(),
                             y.data_ptr(),
                             save_mean.data_ptr<float>(),
                             save_var.data_ptr<float>(),
                             keeps_z ? z.data_ptr() : nullptr};
  check(ck::forward(s, args, ws_bytes != 0 ? workspace.data_ptr() : nullptr, dev.sms, dev.l2_bytes, current_stream()),
        "forward");
  return {y, save_mean, save_var, z};
}

// Both backwards: z (the forward's, kept) defined: read instead of recomputed.
BackwardResult run_backward(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& z_in,
                            const at::Tensor& weight_in, const at::Tensor& bn_weight, const at::Tensor& bn_bias,
                            const at::Tensor& save_mean_in, const at::Tensor& save_var_in, int64_t stride,
                            bool training, double eps, c10::string_view activation) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::MemoryFormat fmt = layout_of(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor dy = dy_in.contiguous(fmt);
  TORCH_CHECK(dy.scalar_type() == x.scalar_type(), "mixpath CUDA kernels: dy must have x's dtype ",
              x.scalar_type(), "; got ", dy.scalar_type());
  const bool keeps_z = z_in.defined();
  const at::Tensor z = keeps_z ? f32(z_in).contiguous(fmt) : at::Tensor();
  const ck::OpShape s = shape_of(x, weight_in, stride, training, eps, activation, fmt, keeps_z);
  const at::Tensor weight = f32(weight_in), gamma = f32(bn_weight), beta = f32(bn_bias);
  const at::Tensor save_mean = f32(save_mean_in), save_var = f32(save_var_in);
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(fmt));
  at::Tensor dweight = at::empty({s.C, s.K, s.K}, weight.options());
  at::Tensor dgamma = at::empty({s.C}, gamma.options());
  at::Tensor dbeta = at::empty({s.C}, gamma.options());
  const DeviceProps dev = device_props();
  const size_t ws_bytes = ck::backward_workspace_bytes(s, dev.sms);
  at::Tensor workspace = at::empty({static_cast<int64_t>((ws_bytes + 3) / 4)}, gamma.options());
  const ck::BackwardArgs args{dy.data_ptr(),
                              x.data_ptr(),
                              weight.data_ptr<float>(),
                              gamma.data_ptr<float>(),
                              beta.data_ptr<float>(),
                              save_mean.data_ptr<float>(),
                              save_var.data_ptr<float>(),
                              dx.data_ptr(),
                              dweight.data_ptr<float>(),
                              dgamma.data_ptr<float>(),
                              dbeta.data_ptr<float>(),
                              keeps_z ? z.data_ptr() : nullptr};
  check(ck::backward(s, args, workspace.data_ptr(), dev.sms, dev.l2_bytes, current_stream()), "backward");
  return {dx, dweight, dgamma, dbeta};
}

}  // namespace

ForwardResult fused_dwconv_bn_forward_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bn_weight,
                                           const at::Tensor& bn_bias, const at::Tensor& running_mean,
                                           const at::Tensor& running_var, int64_t stride, bool training, double eps,
                                           c10::string_view activation) {
  auto [y, save_mean, save_var, z] =
      run_forward(x, weight, bn_weight, bn_bias, running_mean, running_var, stride, training, eps, activation, false);
  return {y, save_mean, save_var};
}

ForwardZResult fused_dwconv_bn_forward_z_cuda(const at::Tensor& x, const at::Tensor& weight,
                                              const at::Tensor& bn_weight, const at::Tensor& bn_bias,
                                              const at::Tensor& running_mean, const at::Tensor& running_var,
                                              int64_t stride, bool training, double eps, c10::string_view activation) {
  return run_forward(x, weight, bn_weight, bn_bias, running_mean, running_var, stride, training, eps, activation, true);
}

BackwardResult fused_dwconv_bn_backward_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                                             const at::Tensor& bn_weight, const at::Tensor& bn_bias,
                                             const at::Tensor& save_mean, const at::Tensor& save_var, int64_t stride,
                                             bool training, double eps, c10::string_view activation) {
  return run_backward(dy, x, at::Tensor(), weight, bn_weight, bn_bias, save_mean, save_var, stride, training, eps,
                      activation);
}

BackwardResult fused_dwconv_bn_backward_z_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& z,
                                               const at::Tensor& weight, const at::Tensor& bn_weight,
                                               const at::Tensor& bn_bias, const at::Tensor& save_mean,
                                               const at::Tensor& save_var, int64_t stride, bool training, double eps,
                                               c10::string_view activation) {
  return run_backward(dy, x, z, weight, bn_weight, bn_bias, save_mean, save_var, stride, training, eps, activation);
}

}  // namespace mixpath
