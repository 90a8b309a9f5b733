"""The multi-path depthwise layer and the inverted-bottleneck block, in both layouts.

`mixpath` layout: linear depthwise paths summed, Shadow BN row j-1, ReLU6 — one
call of the fused op — then the 1x1 projection with its own BN.
`official` layout (the release's block): each path is depthwise conv, its own
BN and ReLU6; the paths are summed, projected, and the projection's output goes
through Shadow BN row j-1 (no activation).

A block built with `kernel_sizes=(k, ...)` holds weights for those kernels only;
`InvertedResidual.extract(kernels)` returns such a block (one BN row) with
copied weights, which is how stand-alone subnets are made.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops import mixed_depthwise_bn
from .init import conv_normal_
from .shadow_bn import ShadowBatchNorm2d

LAYOUTS = ("mixpath", "official")


def shadow_row(bn: ShadowBatchNorm2d, kernels) -> int:
    """j for a Shadow BN: the number of active paths, or 1 when it keeps a single row (ablation, subnets)."""
    return len(kernels) if bn.num_shadows > 1 else 1


class ConvBNAct(nn.Sequential):
    """Conv (no bias), BatchNorm, optional ReLU6: stem, expansion, head."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        super().__init__(*layers, *([nn.ReLU6(inplace=True)] if act else []))


class MixedDepthwiseBN(nn.Module):
    """Sum of depthwise paths -> Shadow BN row j-1 -> activation, computed by the fused op."""

    def __init__(self, channels: int, kernel_sizes, num_shadows: int, stride: int = 1, activation: str = "relu6"):
        super().__init__()
        self.channels, self.stride, self.activation = channels, stride, activation
        self.kernel_sizes = tuple(kernel_sizes)
        self.weight = nn.ParameterDict({
            f"k{k}": nn.Parameter(conv_normal_(torch.empty(channels, 1, k, k)))
            for k in self.kernel_sizes})
        self.bn = ShadowBatchNorm2d(channels, num_shadows)
        self.backend: str | None = None  # None: the fastest available (mixpath.ops.default_backend)

    def forward(self, x: torch.Tensor, kernels=None) -> torch.Tensor:
        kernels = self.kernel_sizes if kernels is None else kernels
        j = shadow_row(self.bn, kernels)
        momentum = self.bn.step(j)
        gamma, beta, mean, var = self.bn.row(j)
        return mixed_depthwise_bn(x, [self.weight[f"k{k}"] for k in kernels], gamma, beta, mean, var,
                                  stride=self.stride, training=self.training, momentum=momentum, eps=self.bn.eps,
                                  activation=self.activation, backend=self.backend)


class PerPathDepthwise(nn.Module):
    """The release's multi-path layer: each path depthwise conv -> own BN -> ReLU6, then the sum."""

    def __init__(self, channels: int, kernel_sizes, stride: int = 1):
        super().__init__()
        self.kernel_sizes = tuple(kernel_sizes)
        self.paths = nn.ModuleDict({f"k{k}": ConvBNAct(channels, channels, k, stride, groups=channels)
                                    for k in self.kernel_sizes})

    def forward(self, x: torch.Tensor, kernels=None) -> torch.Tensor:
        kernels = self.kernel_sizes if kernels is None else kernels
        return sum(self.paths[f"k{k}"](x) for k in kernels)


class InvertedResidual(nn.Module):
    """1x1 expand -> multi-path depthwise -> 1x1 project, residual when shapes allow.

    One instance per expansion rate: the release keeps separate weights per t.
    """

    def __init__(self, cin: int, cout: int, expansion: int, stride: int, kernel_sizes, num_shadows: int,
                 layout: str = "mixpath"):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
        hidden = cin * expansion
        self.cin, self.cout, self.expansion, self.stride = cin, cout, expansion, stride
        self.layout, self.residual = layout, stride == 1 and cin == cout
        self.expand = ConvBNAct(cin, hidden, 1)
        self.project = nn.Conv2d(hidden, cout, 1, bias=False)
        if layout == "mixpath":
            self.mixed = MixedDepthwiseBN(hidden, kernel_sizes, num_shadows, stride)
            self.project_bn = nn.BatchNorm2d(cout)
        else:
            self.mixed = PerPathDepthwise(hidden, kernel_sizes, stride)
            self.project_bn = ShadowBatchNorm2d(cout, num_shadows)

    @property
    def kernel_sizes(self):
        return self.mixed.kernel_sizes

    def forward(self, x: torch.Tensor, kernels=None) -> torch.Tensor:
        kernels = self.kernel_sizes if kernels is None else kernels
        out = self.project(self.mixed(self.expand(x), kernels))
        if self.layout == "mixpath":
            out = self.project_bn(out)
        else:
            out = self.project_bn(out, shadow_row(self.project_bn, kernels))
        return x + out if self.residual else out

    @property
    def shadow_bn(self) -> ShadowBatchNorm2d:
        return self.mixed.bn if self.layout == "mixpath" else self.project_bn

    def extract(self, kernels) -> "InvertedResidual":
        """A stand-alone copy of this block for `kernels`: only their weights and the Shadow BN row they use."""
        kernels = tuple(kernels)
        row = shadow_row(self.shadow_bn, kernels) - 1
        out = InvertedResidual(self.cin, self.cout, self.expansion, self.stride, kernels, 1, self.layout)
        # the copy's single Shadow BN row 0 takes this block's row `row`
        rows = ("mixed.bn" if self.layout == "mixpath" else "project_bn") + ".rows."
        state = self.state_dict()
        out.load_state_dict({key: state[f"{rows}{row}.{key[len(rows) + 2:]}" if key.startswith(rows) else key]
                             for key in out.state_dict()})
        if self.layout == "mixpath":
            out.mixed.backend = self.mixed.backend
        return out.to(self.project.weight.device)

    def batchnorms(self, kernels=None):
        """(module, j) for each BatchNorm this block uses with `kernels`; j is None for a plain BatchNorm2d."""
        kernels = self.kernel_sizes if kernels is None else kernels
        used = [(self.expand[1], None)]
        if self.layout == "mixpath":
            used += [(self.mixed.bn, shadow_row(self.mixed.bn, kernels)), (self.project_bn, None)]
        else:
            used += [(self.mixed.paths[f"k{k}"][1], None) for k in kernels]
            used += [(self.project_bn, shadow_row(self.project_bn, kernels))]
        return used
