"""Modules: Shadow BN, the multi-path depthwise layer and block, the supernet, the release's initialisation."""
from .blocks import LAYOUTS, ConvBNAct, InvertedResidual, MixedDepthwiseBN, PerPathDepthwise
from .init import release_init_
from .shadow_bn import ShadowBatchNorm2d, ShadowRow
from .supernet import SubNet, SuperNet, standalone

__all__ = ["LAYOUTS", "ConvBNAct", "InvertedResidual", "MixedDepthwiseBN", "PerPathDepthwise",
           "ShadowBatchNorm2d", "ShadowRow", "SubNet", "SuperNet", "release_init_", "standalone"]
