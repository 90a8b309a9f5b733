"""Backends `cpp` and `cuda`: the compiled extension `mixpath._C` (csrc/).

csrc/ops.cpp declares the two ops of compiled_op.py's schema with
TORCH_LIBRARY(mixpath, m) and binds CPU and CUDA kernels to them; this module
loads it and adds fake kernels and autograd. A missing or broken build leaves
`import mixpath` working, with the reason kept for `backend_status()`.
"""
from __future__ import annotations

import torch

from . import compiled_op
from .registry import EXTENSION_OPS

FORWARD, BACKWARD = EXTENSION_OPS

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


def run(*args, **kwargs):
    return compiled_op.run_compiled(torch.ops.mixpath.fused_dwconv_bn_forward.default, *args, **kwargs)
