"""The schema every compiled backend implements, and its fake kernels and autograd.

A compiled backend (`triton`, `cpp`, `cuda`) provides two functional ops on the
merged kernel W (C, K, K), float32:

    forward(x, weight, bn_weight, bn_bias, running_mean, running_var,
            stride, training, eps, activation) -> (y, save_mean, save_var)
    backward(dy, x, weight, bn_weight, bn_bias, save_mean, save_var,
             stride, training, eps, activation) -> (dx, dweight, dbn_weight, dbn_bias)

y and dx have x's dtype and memory format (`output_memory_format`); the rest is
float32. In training save_mean/save_var are the batch mean and biased variance;
in eval they are copies of the running statistics. Backward recomputes z from x,
so only x and two per-channel vectors are kept between the passes.

The `cuda` backend also has a pair that keeps z = conv(x) (float32, y's shape
and memory format) for the backward instead, for large K in training, where
recomputing the convolution costs more than storing it:

    forward_z(same arguments) -> (y, save_mean, save_var, z)
    backward_z(dy, x, z, weight, ...as backward) -> (dx, dweight, dbn_weight, dbn_bias)

The ops are functional (PyTorch only takes autograd formulas for those), so the
running-statistics update happens in `run_compiled` from save_mean/save_var:
two per-channel lerps of C elements each.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .contract import merge_kernels, output_memory_format, output_size, update_running_stats

FORWARD_SCHEMA = (
    "(Tensor x, Tensor weight, Tensor bn_weight, Tensor bn_bias, Tensor running_mean, Tensor running_var, "
    "int stride, bool training, float eps, str activation) -> (Tensor, Tensor, Tensor)"
)
BACKWARD_SCHEMA = (
    "(Tensor dy, Tensor x, Tensor weight, Tensor bn_weight, Tensor bn_bias, Tensor save_mean, Tensor save_var, "
    "int stride, bool training, float eps, str activation) -> (Tensor, Tensor, Tensor, Tensor)"
)
FORWARD_Z_SCHEMA = FORWARD_SCHEMA.replace("-> (Tensor, Tensor, Tensor)", "-> (Tensor, Tensor, Tensor, Tensor)")
BACKWARD_Z_SCHEMA = BACKWARD_SCHEMA.replace("Tensor dy, Tensor x,", "Tensor dy, Tensor x, Tensor z,")


def _fake_forward(x, weight, bn_weight, bn_bias, running_mean, running_var, stride, training, eps, activation):
    N, C, H, W = x.shape
    y = torch.empty((N, C, output_size(H, stride), output_size(W, stride)), dtype=x.dtype, device=x.device,
                    memory_format=output_memory_format(x))
    return y, bn_weight.new_empty((C,)), bn_weight.new_empty((C,))


def _fake_forward_z(x, weight, bn_weight, bn_bias, running_mean, running_var, stride, training, eps, activation):
    y, save_mean, save_var = _fake_forward(x, weight, bn_weight, bn_bias, running_mean, running_var, stride,
                                           training, eps, activation)
    return y, save_mean, save_var, torch.empty_like(y, dtype=torch.float32)


def _fake_backward(dy, x, weight, bn_weight, bn_bias, save_mean, save_var, stride, training, eps, activation):
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    return dx, torch.empty_like(weight), torch.empty_like(bn_weight), torch.empty_like(bn_bias)


def _fake_backward_z(dy, x, z, *rest):
    return _fake_backward(dy, x, *rest)


def register(forward_name: str, backward_name: str, keeps_z: bool = False) -> None:
    """Attach fake kernels (torch.compile, opcheck) and the autograd formula to a backend's two ops.

    keeps_z: the ops are a z-keeping pair (FORWARD_Z_SCHEMA, BACKWARD_Z_SCHEMA): z is saved for the backward
    beside x and handed to it.
    """
    torch.library.register_fake(forward_name)(_fake_forward_z if keeps_z else _fake_forward)
    torch.library.register_fake(backward_name)(_fake_backward_z if keeps_z else _fake_backward)
    namespace, name = backward_name.split("::")
    backward_op = getattr(getattr(torch.ops, namespace), name).default

    def setup_context(ctx, inputs, output):
        x, weight, bn_weight, bn_bias, _, _, stride, training, eps, activation = inputs
        _, save_mean, save_var, *z = output
        ctx.mark_non_differentiable(save_mean, save_var, *z)
        ctx.save_for_backward(x, *z, weight, bn_weight, bn_bias, save_mean, save_var)
        ctx.args = (stride, training, eps, activation)

    def backward(ctx, dy, _dmean, _dvar, *_dz):
        x, *kept = ctx.saved_tensors  # kept: (z,) + the rest with keeps_z
        dy = dy.contiguous(memory_format=output_memory_format(x))
        dx, dweight, dgamma, dbeta = backward_op(dy, x, *kept, *ctx.args)
        return dx, dweight, dgamma, dbeta, None, None, None, None, None, None

    torch.library.register_autograd(forward_name, backward, setup_context=setup_context)


def run_compiled(forward_op: Callable, x: Tensor, weights, bn_weight, bn_bias, running_mean, running_var, *,
                 stride, training, momentum, eps, activation) -> Tensor:
    """Merge the paths into W (float32, differentiable), call the backend's op, update the running stats."""
    C = x.shape[1]
    K = max(w.shape[-1] for w in weights)
    weight = merge_kernels(weights, torch.float32).reshape(C, K, K)
    x = x.contiguous(memory_format=output_memory_format(x))
    # A z-keeping forward_op also returns z, which only its backward uses.
    y, save_mean, save_var, *_ = forward_op(x, weight, bn_weight, bn_bias, running_mean, running_var,
                                            stride, training, eps, activation)
    if training:
        count = x.shape[0] * y.shape[2] * y.shape[3]
        update_running_stats(running_mean, running_var, save_mean, save_var, count, momentum)
    return y
