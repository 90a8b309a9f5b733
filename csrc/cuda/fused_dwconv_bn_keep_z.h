// CUDA entry points of the z-keeping pair of ops (registered by csrc/ops.cpp;
// schema: FORWARD_Z_SCHEMA / BACKWARD_Z_SCHEMA in mixpath/ops/compiled_op.py):
// the training forward also returns z = conv(x) (float32, y's shape and
// layout), which the backward reads instead of recomputing the convolution.
// CUDA only: cpp and Triton recompute z.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>
#include <tuple>

#include "../fused_dwconv_bn.h"

namespace mixpath {

using ForwardZResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;  // y, save_mean, save_var, z

ForwardZResult fused_dwconv_bn_forward_z_cuda(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bn_weight, const at::Tensor& bn_bias,
    const at::Tensor& running_mean, const at::Tensor& running_var, int64_t stride, bool training, double eps,
    c10::string_view activation);

BackwardResult fused_dwconv_bn_backward_z_cuda(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& z, const at::Tensor& weight,
    const at::Tensor& bn_weight, const at::Tensor& bn_bias, const at::Tensor& save_mean, const at::Tensor& save_var,
    int64_t stride, bool training, double eps, c10::string_view activation);

}  // namespace mixpath
