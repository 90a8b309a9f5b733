"""Backends by name: which exist, which run on a device, which one `backend=None` picks."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from . import pytorch_backends
from .contract import INPUT_DTYPES, REFERENCE_DTYPES

BACKEND_NAMES = ("reference", "merged", "triton", "cpp", "cuda")
TRITON_OPS = ("mixpath::triton_fused_dwconv_bn_forward", "mixpath::triton_fused_dwconv_bn_backward")
EXTENSION_OPS = ("mixpath::fused_dwconv_bn_forward", "mixpath::fused_dwconv_bn_backward")

# backend=None takes the first available name. On GPU `cuda` leads by design (shared-memory
# tiles, register blocking); the harness's GPU run (benchmarks/RESULTS.md, not yet made on
# an H100) decides between it and `triton`: reorder here if it measures triton faster.
AUTO_ORDER = {"cuda": ("cuda", "triton", "merged"), "cpu": ("cpp", "merged")}


@dataclass(frozen=True)
class Backend:
    name: str
    run: Callable
    dtypes: tuple
    # device type -> None when usable there, else the reason it is not
    why_unavailable: Callable[[str], str | None]
    # the (forward, backward) torch.library ops of a compiled backend (compiled_op.py's schema)
    op_names: tuple[str, str] | None = None


def _pytorch_ok(device_type: str) -> str | None:
    return None


def _load_triton():
    from . import triton_backend
    return triton_backend


def _load_extension():
    from . import extension_backend
    return extension_backend


def _triton_reason(device_type: str) -> str | None:
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs on CPU only in its interpreter: set TRITON_INTERPRET=1 before importing mixpath (slow; for tests)"
    if device_type not in ("cpu", "cuda"):
        return f"Triton has no {device_type} support here"
    try:
        return _load_triton().import_error()
    except ImportError as e:  # the backend module itself failed
        return f"Triton backend failed to import: {e}"


def _extension_reason(kernel_device: str) -> Callable[[str], str | None]:
    def reason(device_type: str) -> str | None:
        if device_type != kernel_device:
            return f"runs on {kernel_device} tensors only"
        return _load_extension().missing(kernel_device)
    return reason


def _run_triton(*args, **kwargs):
    return _load_triton().run(*args, **kwargs)


def _run_extension(*args, **kwargs):
    return _load_extension().run(*args, **kwargs)


BACKENDS = {
    "reference": Backend("reference", pytorch_backends.reference, REFERENCE_DTYPES, _pytorch_ok),
    "merged": Backend("merged", pytorch_backends.merged, REFERENCE_DTYPES, _pytorch_ok),
    "triton": Backend("triton", _run_triton, INPUT_DTYPES, _triton_reason, TRITON_OPS),
    "cpp": Backend("cpp", _run_extension, INPUT_DTYPES, _extension_reason("cpu"), EXTENSION_OPS),
    "cuda": Backend("cuda", _run_extension, INPUT_DTYPES, _extension_reason("cuda"), EXTENSION_OPS),
}


def _device_type(device) -> str:
    return torch.device(device).type


def backend_status(device=None) -> dict[str, str]:
    """Each backend's state on `device` (default: CUDA if present, else CPU): 'available' or why not."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dt = _device_type(device)
    return {name: (b.why_unavailable(dt) or "available") for name, b in BACKENDS.items()}


def available_backends(device="cpu") -> list[str]:
    """Backend names usable for tensors on `device`, in BACKEND_NAMES order."""
    dt = _device_type(device)
    return [name for name, b in BACKENDS.items() if b.why_unavailable(dt) is None]


def default_backend(device) -> str:
    """The fastest available backend on `device` (what backend=None and --fused pick)."""
    dt = _device_type(device)
    for name in AUTO_ORDER.get(dt, ("merged",)):
        if BACKENDS[name].why_unavailable(dt) is None:
            return name
    return "merged"


def get_backend(name: str | None, device) -> Backend:
    """The backend called `name` (None: the default) checked usable on `device`; ValueError if not."""
    if name is None:
        name = default_backend(device)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    reason = BACKENDS[name].why_unavailable(_device_type(device))
    if reason is not None:
        raise ValueError(f"backend {name!r} is not available on {torch.device(device)}: {reason}")
    return BACKENDS[name]
