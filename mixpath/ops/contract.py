"""The fused op's contract: argument checks, kernel merging and shared helpers.

Every backend computes FUSED_OP.md's definition on the same arguments; this
module holds what they share so each backend only supplies the arithmetic.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS = ("relu6", "relu", "none")
STRIDES = (1, 2)
MAX_KERNEL = 9
INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# float64 is accepted by the PyTorch backends only: tests use it as the oracle.
REFERENCE_DTYPES = INPUT_DTYPES + (torch.float64,)


def apply_activation(u: Tensor, activation: str) -> Tensor:
    if activation == "relu6":
        return F.relu6(u)
    if activation == "relu":
        return F.relu(u)
    return u


def output_size(size: int, stride: int) -> int:
    """Spatial output size with centred padding (k - 1) / 2, the same for every odd k."""
    return (size - 1) // stride + 1


def output_memory_format(x: Tensor) -> torch.memory_format:
    """The layout every backend returns y and dx in: x's own."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return torch.contiguous_format
    return torch.channels_last


def merge_kernels(weights: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """Sum of centre-padded path kernels: one (C, 1, K, K) kernel, K the largest k.

    Built from differentiable ops, so autograd hands each path the centre crop
    of the merged kernel's gradient.
    """
    K = max(w.shape[-1] for w in weights)
    merged = None
    for w in weights:
        p = (K - w.shape[-1]) // 2
        w = w if dtype is None else w.to(dtype)
        w = F.pad(w, (p, p, p, p)) if p else w
        merged = w if merged is None else merged + w
    return merged


def _describe(t: Tensor) -> str:
    return f"shape {tuple(t.shape)}, {t.dtype}, on {t.device}"


def check_inputs(
    x: Tensor,
    weights: Sequence[Tensor],
    bn_weight: Tensor,
    bn_bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    stride: int,
    training: bool,
    momentum: float,
    eps: float,
    activation: str,
    dtypes: Sequence[torch.dtype] = REFERENCE_DTYPES,
) -> None:
    """Raise ValueError naming the problem and the fix; return None when all is well."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        got = _describe(x) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a 4-D (N, C, H, W) tensor; got {got}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"x has dtype {x.dtype}; this backend takes {names}: cast x first")
    N, C, H, W = x.shape
    if x.numel() == 0:
        raise ValueError(f"x is empty ({_describe(x)}); every dimension must be at least 1")
    if isinstance(weights, Tensor) or not isinstance(weights, Sequence) or len(weights) == 0:
        raise ValueError("weights must be a non-empty list of (C, 1, k, k) depthwise kernels, one per active path")
    weight_dtypes = {x.dtype, torch.float32}
    for i, w in enumerate(weights):
        if not isinstance(w, Tensor) or w.dim() != 4:
            raise ValueError(f"weights[{i}] must be a (C, 1, k, k) tensor; got {type(w).__name__ if not isinstance(w, Tensor) else _describe(w)}")
        k = w.shape[-1]
        if w.shape[0] != C or w.shape[1] != 1 or w.shape[2] != k:
            raise ValueError(f"weights[{i}] has {_describe(w)}; expected ({C}, 1, k, k) to match x's {C} channels")
        if k % 2 == 0 or not 1 <= k <= MAX_KERNEL:
            raise ValueError(f"weights[{i}] has kernel size {k}; kernels must be odd and between 1 and {MAX_KERNEL}")
        if w.device != x.device:
            raise ValueError(f"weights[{i}] is on {w.device} but x is on {x.device}: move both to one device")
        if w.dtype not in weight_dtypes:
            raise ValueError(f"weights[{i}] has dtype {w.dtype}; use x's dtype ({x.dtype}) or float32")
    stat_dtypes = {torch.float32, torch.float64} if x.dtype == torch.float64 else {torch.float32}
    for name, t in (("bn_weight", bn_weight), ("bn_bias", bn_bias), ("running_mean", running_mean), ("running_var", running_var)):
        if not isinstance(t, Tensor) or t.shape != (C,):
            got = _describe(t) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must have shape ({C},) to match x's channels; got {got}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}: move both to one device")
        if t.dtype not in stat_dtypes:
            raise ValueError(f"{name} has dtype {t.dtype}; BatchNorm parameters and statistics must be float32")
    if stride not in STRIDES:
        raise ValueError(f"stride must be one of {STRIDES}; got {stride!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")
    if not eps > 0:
        raise ValueError(f"eps must be positive; got {eps!r}")
    if training:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1]; got {momentum!r}")
        if N * output_size(H, stride) * output_size(W, stride) == 1:
            raise ValueError(
                f"training needs more than one value per channel to compute batch statistics; "
                f"x {tuple(x.shape)} with stride {stride} gives one: use a larger batch or eval mode"
            )


def update_running_stats(
    running_mean: Tensor, running_var: Tensor, batch_mean: Tensor, batch_var: Tensor, count: int, momentum: float
) -> None:
    """PyTorch's BatchNorm update: the running variance takes the unbiased batch variance."""
    with torch.no_grad():
        running_mean.lerp_(batch_mean.to(running_mean.dtype), momentum)
        unbiased = batch_var * (count / (count - 1))
        running_var.lerp_(unbiased.to(running_var.dtype), momentum)
