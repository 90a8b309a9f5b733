"""Backends `cpp` and `cuda`: the compiled extension `mixpath._C` (csrc/).

csrc/ops.cpp declares the two ops of compiled_op.py's schema with
TORCH_LIBRARY(mixpath, m) and binds CPU and CUDA kernels to them, and the
CUDA-only pair that keeps z for the backward; this module loads it and adds
fake kernels and autograd. A missing or broken build leaves `import mixpath`
working, with the reason kept for `backend_status()`.

On CUDA a training call takes the z-keeping pair when `keeps_z` says so:
MIXPATH_CUDA_STORE_Z=auto (default: merged K >= STORE_Z_MIN_K), 1 (always) or
0 (never), the same setting that makes the kernels store z between their two
forward passes. Keeping z saves float32 z (4 bytes per output element) for the
backward, which then skips the convolution in two of its passes.
"""
from __future__ import annotations

import functools
import os

import torch

from . import compiled_op
from .registry import EXTENSION_OPS

FORWARD, BACKWARD = EXTENSION_OPS
FORWARD_Z, BACKWARD_Z = "mixpath::fused_dwconv_bn_forward_z", "mixpath::fused_dwconv_bn_backward_z"
# As kStoreZMinK in csrc/cuda/fused_dwconv_bn_kernels.h: from this merged K up the
# convolution's float32 FMAs cost more than writing and reading z (to be set by GPU measurement).
STORE_Z_MIN_K = 7

try:
    from mixpath import _C  # noqa: F401  (loading it registers the ops)
except (ImportError, OSError) as e:
    _LOAD_ERROR: str | None = (
        f"the compiled extension mixpath._C did not load ({e}); build it with "
        "`pip install -e . --no-build-isolation` (or `make build`)"
    )
else:
    _LOAD_ERROR = None
    compiled_op.register(FORWARD, BACKWARD)
    compiled_op.register(FORWARD_Z, BACKWARD_Z, keeps_z=True)

# Read once: the dispatcher query is not traceable by torch.compile, and the answer never changes.
_HAS_KERNEL = {key: _LOAD_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(FORWARD, key)
               for key in ("CPU", "CUDA")}


def missing(device_type: str) -> str | None:
    """None when the extension has a kernel for `device_type` ('cpu' or 'cuda'), else why not."""
    if _LOAD_ERROR is not None:
        return _LOAD_ERROR
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    if not _HAS_KERNEL[key]:
        return (f"mixpath._C was built without {key} kernels"
                + (" (torch has no CUDA, or MIXPATH_SKIP_CUDA=1 was set)" if key == "CUDA" else ""))
    if key == "CUDA" and not torch.cuda.is_available():
        return "no CUDA device is visible"
    return None


@functools.cache
def _store_z_setting() -> str:
    """MIXPATH_CUDA_STORE_Z, read once (as the kernels do): 'auto', '0' or '1'."""
    value = os.environ.get("MIXPATH_CUDA_STORE_Z", "auto")
    if value not in ("auto", "0", "1"):
        raise ValueError(f"MIXPATH_CUDA_STORE_Z must be auto, 0 or 1; got {value!r}: unset it or set one of those")
    return value


def keeps_z(device_type: str, K: int, training: bool) -> bool:
    """Whether a call takes the z-keeping pair: CUDA, training, and K >= STORE_Z_MIN_K or MIXPATH_CUDA_STORE_Z=1."""
    if device_type != "cuda" or not training:
        return False
    setting = _store_z_setting()
    return setting == "1" or (setting == "auto" and K >= STORE_Z_MIN_K)


def run(x, weights, *args, training, **kwargs):
    K = max(w.shape[-1] for w in weights)
    forward_op = (torch.ops.mixpath.fused_dwconv_bn_forward_z.default if keeps_z(x.device.type, K, training)
                  else torch.ops.mixpath.fused_dwconv_bn_forward.default)
    return compiled_op.run_compiled(forward_op, x, weights, *args, training=training, **kwargs)
