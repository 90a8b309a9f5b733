"""The two backends written in plain PyTorch: `reference` (the oracle) and `merged`."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .contract import apply_activation, merge_kernels


def _batch_norm_act(z, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps, activation):
    u = F.batch_norm(z, running_mean, running_var, bn_weight, bn_bias, training, momentum, eps)
    return apply_activation(u, activation)


def reference(x: Tensor, weights: Sequence[Tensor], bn_weight, bn_bias, running_mean, running_var, *,
              stride, training, momentum, eps, activation) -> Tensor:
    """FUSED_OP.md literally: one depthwise conv per path, their sum, BatchNorm, activation."""
    C = x.shape[1]
    z = None
    for w in weights:
        k = w.shape[-1]
        out = F.conv2d(x, w.to(x.dtype), stride=stride, padding=k // 2, groups=C)
        z = out if z is None else z + out
    return _batch_norm_act(z, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps, activation)


def merged(x: Tensor, weights: Sequence[Tensor], bn_weight, bn_bias, running_mean, running_var, *,
           stride, training, momentum, eps, activation) -> Tensor:
    """The paths merged into one kernel first (exact up to rounding), then one conv."""
    # merged in float32 (exact for float32 paths) and rounded once to x's dtype
    W = merge_kernels(weights, torch.promote_types(x.dtype, torch.float32)).to(x.dtype)
    z = F.conv2d(x, W, stride=stride, padding=W.shape[-1] // 2, groups=x.shape[1])
    return _batch_norm_act(z, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps, activation)
