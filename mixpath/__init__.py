"""mixpath: one-shot NAS over multi-path supernets (MixPath) with fused kernels."""
from . import ops, space
from .calibrate import calibrate_bn
from .nn import ShadowBatchNorm2d, SubNet, SuperNet
from .ops import available_backends, backend_status, mixed_depthwise_bn
from .space import Arch, ArchError, SearchSpace, get_space

__all__ = ["Arch", "ArchError", "SearchSpace", "ShadowBatchNorm2d", "SubNet", "SuperNet", "available_backends",
           "backend_status", "calibrate_bn", "get_space", "mixed_depthwise_bn", "ops", "space"]
