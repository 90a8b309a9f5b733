"""The release's weight initialisation (`_initialize_weights` of MixPath S1), for every network we build."""
from __future__ import annotations

import math

import torch
from torch import nn

from .shadow_bn import ShadowRow


def conv_normal_(weight: torch.Tensor) -> torch.Tensor:
    """normal(0, sqrt(2 / (k * k * out_channels))) for a conv weight (out_channels, in/groups, k, k)."""
    out_channels, _, kh, kw = weight.shape
    with torch.no_grad():
        return weight.normal_(0.0, math.sqrt(2.0 / (kh * kw * out_channels)))


def release_init_(net: nn.Module) -> nn.Module:
    """Initialise `net` in place as the release does and return it.

    Convolutions (depthwise paths included) normal(0, sqrt(2 / (k*k*out_channels)));
    BatchNorm and every Shadow BN row weight 1, bias 0; Linear layers
    uniform(-1/sqrt(n), 1/sqrt(n)) with n their fan-out (out_features), bias 0.
    """
    from .blocks import MixedDepthwiseBN  # blocks imports this module for conv_normal_

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                conv_normal_(m.weight)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, MixedDepthwiseBN):
                for weight in m.weight.values():
                    conv_normal_(weight)
            elif isinstance(m, (nn.BatchNorm2d, ShadowRow)):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                m.weight.uniform_(-bound, bound)
                if m.bias is not None:
                    m.bias.zero_()
    return net
