// The one registration point of mixpath._C: the schemas of the fused op
// (kept identical to FORWARD_SCHEMA / BACKWARD_SCHEMA in
// mixpath/ops/compiled_op.py), the CPU and CUDA kernels bound to them behind
// one shared argument check, the CUDA-only pair that keeps z for the
// backward (FORWARD_Z_SCHEMA / BACKWARD_Z_SCHEMA), and the Python module
// `mixpath._C` whose import runs these registrations. Python already validates through
// mixpath.ops.contract, but the raw ops can be called directly.
#include <Python.h>
#include <torch/library.h>

#include <sstream>
#include <string>

#include "fused_dwconv_bn.h"

namespace mixpath {
namespace {

std::string describe(const at::Tensor& t) {
  std::ostringstream s;
  s << "shape " << t.sizes() << ", " << t.scalar_type() << ", on " << t.device();
  return s.str();
}

// x and everything that must match it.
void check_common(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bn_weight,
                  const at::Tensor& bn_bias, const char* stat_names[2], const at::Tensor& stat0,
                  const at::Tensor& stat1, int64_t stride, double eps, c10::string_view activation) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be a 4-D (N, C, H, W) tensor; got ", describe(x));
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": x must be float32, float16 or bfloat16; got ", describe(x));
  TORCH_CHECK(x.numel() > 0, op, ": x is empty (", describe(x), "); every dimension must be at least 1");
  const int64_t C = x.size(1);
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) == C && weight.size(1) == weight.size(2), op,
              ": weight must be the merged (C, K, K) kernel with C = ", C, " (x's channels); got ", describe(weight));
  const int64_t K = weight.size(2);
  TORCH_CHECK(K % 2 == 1 && K >= 1 && K <= 9, op, ": weight's kernel size must be odd, 1 to 9; got ", K);
  TORCH_CHECK(weight.scalar_type() == at::kFloat, op, ": weight must be float32; got ", describe(weight));
  TORCH_CHECK(weight.device() == x.device(), op, ": weight is on ", weight.device(), " but x is on ", x.device());
  const char* names[4] = {"bn_weight", "bn_bias", stat_names[0], stat_names[1]};
  const at::Tensor* per_channel[4] = {&bn_weight, &bn_bias, &stat0, &stat1};
  for (int i = 0; i < 4; ++i) {
    const at::Tensor& t = *per_channel[i];
    TORCH_CHECK(t.dim() == 1 && t.size(0) == C, op, ": ", names[i], " must have shape (", C,
                ",) to match x's channels; got ", describe(t));
    TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", names[i], " must be float32; got ", describe(t));
    TORCH_CHECK(t.device() == x.device(), op, ": ", names[i], " is on ", t.device(), " but x is on ", x.device());
  }
  TORCH_CHECK(stride == 1 || stride == 2, op, ": stride must be 1 or 2; got ", stride);
  TORCH_CHECK(eps > 0, op, ": eps must be positive; got ", eps);
  TORCH_CHECK(activation == "relu6" || activation == "relu" || activation == "none", op,
              ": activation must be 'relu6', 'relu' or 'none'; got '", std::string(activation), "'");
}

void check_forward(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bn_weight,
                   const at::Tensor& bn_bias, const at::Tensor& running_mean, const at::Tensor& running_var,
                   int64_t stride, bool training, double eps, c10::string_view activation) {
  const char* stats[2] = {"running_mean", "running_var"};
  check_common(op, x, weight, bn_weight, bn_bias, stats, running_mean, running_var, stride, eps, activation);
  if (training) {
    const int64_t Ho = (x.size(2) - 1) / stride + 1, Wo = (x.size(3) - 1) / stride + 1;
    TORCH_CHECK(x.size(0) * Ho * Wo > 1, op, ": training needs more than one value per channel for the batch "
                "statistics; x ", x.sizes(), " with stride ", stride, " gives one");
  }
}

void check_backward(const char* op, const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                    const at::Tensor& bn_weight, const at::Tensor& bn_bias, const at::Tensor& save_mean,
                    const at::Tensor& save_var, int64_t stride, double eps, c10::string_view activation) {
  const char* stats[2] = {"save_mean", "save_var"};
  check_common(op, x, weight, bn_weight, bn_bias, stats, save_mean, save_var, stride, eps, activation);
  const int64_t Ho = (x.size(2) - 1) / stride + 1, Wo = (x.size(3) - 1) / stride + 1;
  TORCH_CHECK(dy.dim() == 4 && dy.size(0) == x.size(0) && dy.size(1) == x.size(1) && dy.size(2) == Ho &&
                  dy.size(3) == Wo,
              op, ": dy must have y's shape [", x.size(0), ", ", x.size(1), ", ", Ho, ", ", Wo, "]; got ",
              describe(dy));
  TORCH_CHECK(dy.scalar_type() == x.scalar_type(), op, ": dy must have x's dtype ", x.scalar_type(), "; got ",
              describe(dy));
  TORCH_CHECK(dy.device() == x.device(), op, ": dy is on ", dy.device(), " but x is on ", x.device());
}

template <ForwardResult (*Impl)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, const at::Tensor&, int64_t, bool, double, c10::string_view)>
ForwardResult forward_checked(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bn_weight,
                              const at::Tensor& bn_bias, const at::Tensor& running_mean,
                              const at::Tensor& running_var, int64_t stride, bool training, double eps,
                              c10::string_view activation) {
  check_forward("mixpath::fused_dwconv_bn_forward", x, weight, bn_weight, bn_bias, running_mean, running_var, stride,
                training, eps, activation);
  return Impl(x, weight, bn_weight, bn_bias, running_mean, running_var, stride, training, eps, activation);
}

template <BackwardResult (*Impl)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, bool, double,
                                 c10::string_view)>
BackwardResult backward_checked(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bn_weight, const at::Tensor& bn_bias, const at::Tensor& save_mean,
                                const at::Tensor& save_var, int64_t stride, bool training, double eps,
                                c10::string_view activation) {
  check_backward("mixpath::fused_dwconv_bn_backward", dy, x, weight, bn_weight, bn_bias, save_mean, save_var, stride,
                 eps, activation);
  return Impl(dy, x, weight, bn_weight, bn_bias, save_mean, save_var, stride, training, eps, activation);
}

#ifdef MIXPATH_WITH_CUDA
ForwardZResult forward_z_checked(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bn_weight,
                                 const at::Tensor& bn_bias, const at::Tensor& running_mean,
                                 const at::Tensor& running_var, int64_t stride, bool training, double eps,
                                 c10::string_view activation) {
  constexpr const char* op = "mixpath::fused_dwconv_bn_forward_z";
  TORCH_CHECK(training, op, ": z is kept only in training (eval computes y in one pass); call "
              "mixpath::fused_dwconv_bn_forward instead");
  check_forward(op, x, weight, bn_weight, bn_bias, running_mean, running_var, stride, training, eps, activation);
  return fused_dwconv_bn_forward_z_cuda(x, weight, bn_weight, bn_bias, running_mean, running_var, stride, training,
                                        eps, activation);
}

BackwardResult backward_z_checked(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& z,
                                  const at::Tensor& weight, const at::Tensor& bn_weight, const at::Tensor& bn_bias,
                                  const at::Tensor& save_mean, const at::Tensor& save_var, int64_t stride,
                                  bool training, double eps, c10::string_view activation) {
  constexpr const char* op = "mixpath::fused_dwconv_bn_backward_z";
  TORCH_CHECK(training, op, ": z is kept only in training; call mixpath::fused_dwconv_bn_backward instead");
  check_backward(op, dy, x, weight, bn_weight, bn_bias, save_mean, save_var, stride, eps, activation);
  TORCH_CHECK(z.sizes() == dy.sizes() && z.scalar_type() == at::kFloat && z.device() == x.device(), op,
              ": z must be the float32 tensor of y's shape ", dy.sizes(), " that forward_z returned, on ", x.device(),
              "; got ", describe(z));
  return fused_dwconv_bn_backward_z_cuda(dy, x, z, weight, bn_weight, bn_bias, save_mean, save_var, stride, training,
                                         eps, activation);
}
#endif

}  // namespace
}  // namespace mixpath

TORCH_LIBRARY(mixpath, m) {
  m.def(
      "fused_dwconv_bn_forward(Tensor x, Tensor weight, Tensor bn_weight, Tensor bn_bias, Tensor running_mean, "
      "Tensor running_var, int stride, bool training, float eps, str activation) -> (Tensor, Tensor, Tensor)");
  m.def(
      "fused_dwconv_bn_backward(Tensor dy, Tensor x, Tensor weight, Tensor bn_weight, Tensor bn_bias, "
      "Tensor save_mean, Tensor save_var, int stride, bool training, float eps, str activation) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // CUDA only (the kernels in csrc/cuda): the training forward also returns z, which the backward reads.
  m.def(
      "fused_dwconv_bn_forward_z(Tensor x, Tensor weight, Tensor bn_weight, Tensor bn_bias, Tensor running_mean, "
      "Tensor running_var, int stride, bool training, float eps, str activation) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "fused_dwconv_bn_backward_z(Tensor dy, Tensor x, Tensor z, Tensor weight, Tensor bn_weight, Tensor bn_bias, "
      "Tensor save_mean, Tensor save_var, int stride, bool training, float eps, str activation) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mixpath, CPU, m) {
  using namespace mixpath;
  m.impl("fused_dwconv_bn_forward", TORCH_FN(forward_checked<&fused_dwconv_bn_forward_cpu>));
  m.impl("fused_dwconv_bn_backward", TORCH_FN(backward_checked<&fused_dwconv_bn_backward_cpu>));
}

#ifdef MIXPATH_WITH_CUDA
TORCH_LIBRARY_IMPL(mixpath, CUDA, m) {
  using namespace mixpath;
  m.impl("fused_dwconv_bn_forward", TORCH_FN(forward_checked<&fused_dwconv_bn_forward_cuda>));
  m.impl("fused_dwconv_bn_backward", TORCH_FN(backward_checked<&fused_dwconv_bn_backward_cuda>));
  m.impl("fused_dwconv_bn_forward_z", TORCH_FN(forward_z_checked));
  m.impl("fused_dwconv_bn_backward_z", TORCH_FN(backward_z_checked));
}
#endif

// `from mixpath import _C` loads this library, which runs the registrations above.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "mixpath's compiled kernels (torch.ops.mixpath)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
