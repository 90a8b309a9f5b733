// The compiled backends' entry points for the two ops declared in ops.cpp.
// Schema and semantics: mixpath/ops/compiled_op.py (weight is the merged
// (C, K, K) float32 kernel; y and dx keep x's dtype and memory format).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>
#include <tuple>

namespace mixpath {

using ForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;             // y, save_mean, save_var
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;  // dx, dweight, dgamma, dbeta
using ForwardZResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;  // y, save_mean, save_var, z

ForwardResult fused_dwconv_bn_forward_cpu(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bn_weight, const at::Tensor& bn_bias,
    const at::Tensor& running_mean, const at::Tensor& running_var, int64_t stride, bool training, double eps,
    c10::string_view activation);

BackwardResult fused_dwconv_bn_backward_cpu(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bn_weight,
    const at::Tensor& bn_bias, const at::Tensor& save_mean, const at::Tensor& save_var, int64_t stride, bool training,
    double eps, c10::string_view activation);

#ifdef MIXPATH_WITH_CUDA
ForwardResult fused_dwconv_bn_forward_cuda(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bn_weight, const at::Tensor& bn_bias,
    const at::Tensor& running_mean, const at::Tensor& running_var, int64_t stride, bool training, double eps,
    c10::string_view activation);

BackwardResult fused_dwconv_bn_backward_cuda(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bn_weight,
    const at::Tensor& bn_bias, const at::Tensor& save_mean, const at::Tensor& save_var, int64_t stride, bool training,
    double eps, c10::string_view activation);

// The CUDA-only pair that keeps z = conv(x) (float32, y's shape and layout) from the training forward for the
// backward, which then reads it instead of recomputing the convolution (FORWARD_Z_SCHEMA / BACKWARD_Z_SCHEMA).
ForwardZResult fused_dwconv_bn_forward_z_cuda(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bn_weight, const at::Tensor& bn_bias,
    const at::Tensor& running_mean, const at::Tensor& running_var, int64_t stride, bool training, double eps,
    c10::string_view activation);

BackwardResult fused_dwconv_bn_backward_z_cuda(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& z, const at::Tensor& weight,
    const at::Tensor& bn_weight, const at::Tensor& bn_bias, const at::Tensor& save_mean, const at::Tensor& save_var,
    int64_t stride, bool training, double eps, c10::string_view activation);
#endif

}  // namespace mixpath
