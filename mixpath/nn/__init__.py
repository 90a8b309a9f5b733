"""Modules: Shadow BN, the multi-path depthwise layer and block, the supernet."""
from .blocks import LAYOUTS, ConvBNAct, InvertedResidual, MixedDepthwiseBN, PerPathDepthwise
from .shadow_bn import ShadowBatchNorm2d
from .supernet import SubNet, SuperNet

__all__ = ["LAYOUTS", "ConvBNAct", "InvertedResidual", "MixedDepthwiseBN", "PerPathDepthwise",
           "ShadowBatchNorm2d", "SubNet", "SuperNet"]
