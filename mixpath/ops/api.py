"""`mixed_depthwise_bn`: the one entry point every backend sits behind."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .contract import check_inputs
from .registry import get_backend


def mixed_depthwise_bn(
    x: Tensor,
    weights: Sequence[Tensor],
    bn_weight: Tensor,
    bn_bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    *,
    stride: int = 1,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    activation: str = "relu6",
    backend: str | None = None,
) -> Tensor:
    """act(BN(sum_i dwconv(x, weights[i]))) with the Shadow BN row given by the BN tensors.

    x: (N, C, H, W) float32/float16/bfloat16 (float64 for `reference`/`merged`).
    weights: the active paths' depthwise kernels, each (C, 1, k, k), k odd, 1..9,
    padded by k // 2. bn_weight, bn_bias, running_mean, running_var: (C,) float32;
    the running statistics are updated in place when training, as by
    F.batch_norm. backend: one of `available_backends(x.device)`, None for the
    fastest. Under autocast x is cast to the autocast dtype first.
    """
    if isinstance(x, Tensor) and torch.is_autocast_enabled(x.device.type) and x.is_floating_point():
        x = x.to(torch.get_autocast_dtype(x.device.type))
    be = get_backend(backend, x.device if isinstance(x, Tensor) else "cpu")
    check_inputs(x, weights, bn_weight, bn_bias, running_mean, running_var, stride, training, momentum, eps,
                 activation, dtypes=be.dtypes)
    return be.run(x, weights, bn_weight, bn_bias, running_mean, running_var, stride=stride, training=training,
                  momentum=momentum, eps=eps, activation=activation)
