"""mixpath: one-shot NAS over multi-path supernets (MixPath) with fused kernels."""
from . import ops
from .ops import available_backends, backend_status, mixed_depthwise_bn

__all__ = ["ops", "available_backends", "backend_status", "mixed_depthwise_bn"]
