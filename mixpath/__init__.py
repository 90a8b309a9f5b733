"""mixpath: one-shot NAS over multi-path supernets (MixPath) with fused kernels."""
import importlib

from . import ops, space
from .calibrate import calibrate_bn
from .nn import ShadowBatchNorm2d, SubNet, SuperNet
from .ops import available_backends, backend_status, mixed_depthwise_bn
from .space import Arch, ArchError, SearchSpace, get_space

# Imported on first use: they pull in pymoo, matplotlib, scikit-learn.
_LAZY_MODULES = ("data", "evaluate", "ranking", "search", "training", "checkpoint", "runs", "export", "latency",
                 "stats", "shrink", "distributed", "sampling", "outdir", "differentiable")


def __getattr__(name):
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'mixpath' has no attribute {name!r}")


__all__ = ["Arch", "ArchError", "SearchSpace", "ShadowBatchNorm2d", "SubNet", "SuperNet", "available_backends",
           "backend_status", "calibrate_bn", "get_space", "mixed_depthwise_bn", "ops", "space", *_LAZY_MODULES]
