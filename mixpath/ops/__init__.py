"""The fused multi-path depthwise conv + Shadow BN + activation op and its backends."""
from .api import mixed_depthwise_bn
from .contract import ACTIVATIONS, merge_kernels
from .registry import BACKEND_NAMES, available_backends, backend_status, default_backend

__all__ = [
    "ACTIVATIONS",
    "BACKEND_NAMES",
    "available_backends",
    "backend_status",
    "default_backend",
    "merge_kernels",
    "mixed_depthwise_bn",
]
