"""Backend `triton`: the Triton kernels of mixpath.kernels.fused_dwconv_bn behind compiled_op.py's schema.

The two ops are torch.library custom ops (opaque to torch.compile, which sees
their fake kernels); compiled_op.register adds fakes and autograd. A missing or
broken Triton leaves `import mixpath` working, with the reason kept for
`backend_status()`. On CPU tensors the kernels run only under TRITON_INTERPRET=1,
which must be set before this module is first imported. The kernels run NCHW
input with 16 or more channels in channels_last (converting x in and y, dx
back) and return x's layout; see "Layout" in mixpath.kernels.fused_dwconv_bn.
"""
from __future__ import annotations

from torch import Tensor

from . import compiled_op
from .registry import TRITON_OPS

FORWARD, BACKWARD = TRITON_OPS

try:
    import triton  # noqa: F401
    from mixpath.kernels import fused_dwconv_bn as _kernels
except Exception as e:  # ImportError, or a Triton too old or broken for the kernels
    _IMPORT_ERROR: str | None = f"Triton or the Triton kernels did not import ({type(e).__name__}: {e})"
else:
    _IMPORT_ERROR = None


def import_error() -> str | None:
    """None when Triton and the kernels imported, else why not."""
    return _IMPORT_ERROR


if _IMPORT_ERROR is None:
    import torch

    @torch.library.custom_op(FORWARD, mutates_args=())
    def forward_op(x: Tensor, weight: Tensor, bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor,
                   running_var: Tensor, stride: int, training: bool, eps: float,
                   activation: str) -> tuple[Tensor, Tensor, Tensor]:
        return _kernels.forward(x, weight, bn_weight, bn_bias, running_mean, running_var, stride, training, eps,
                                activation)

    @torch.library.custom_op(BACKWARD, mutates_args=())
    def backward_op(dy: Tensor, x: Tensor, weight: Tensor, bn_weight: Tensor, bn_bias: Tensor, save_mean: Tensor,
                    save_var: Tensor, stride: int, training: bool, eps: float,
                    activation: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return _kernels.backward(dy, x, weight, bn_weight, bn_bias, save_mean, save_var, stride, training, eps,
                                 activation)

    compiled_op.register(FORWARD, BACKWARD)


def run(x, weights, bn_weight, bn_bias, running_mean, running_var, *, stride, training, momentum, eps, activation):
    if _IMPORT_ERROR is not None:
        raise RuntimeError(f"backend 'triton' is unavailable: {_IMPORT_ERROR}")
    return compiled_op.run_compiled(forward_op, x, weights, bn_weight, bn_bias, running_mean, running_var,
                                    stride=stride, training=training, momentum=momentum, eps=eps,
                                    activation=activation)
