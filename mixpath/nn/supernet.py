"""The MixPath supernet and the stand-alone subnets extracted from it."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..ops.registry import get_backend
from ..space import Arch, SearchSpace
from .blocks import ConvBNAct, InvertedResidual, MixedDepthwiseBN


class _Network(nn.Module):
    """Stem, optional separable block, layers, head: what supernet and subnet share."""

    def _build_ends(self, space: SearchSpace):
        self.stem = ConvBNAct(space.in_channels, space.stem_channels, 3, space.stem_stride)
        if space.separable_channels:
            c, s = space.stem_channels, space.separable_channels
            self.separable = nn.Sequential(ConvBNAct(c, c, 3, groups=c), ConvBNAct(c, s, 1, act=False))
        else:
            self.separable = nn.Identity()
        self.head = ConvBNAct(space.layers[-1].out_channels, space.head_channels, 1)
        self.classifier = nn.Linear(space.head_channels, space.num_classes)

    def _features_in(self, x):
        return self.separable(self.stem(x))

    def _logits(self, x):
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.head(x), 1), 1))

    def _end_batchnorms(self):
        bns = [m for part in (self.stem, self.separable, self.head) for m in part.modules()
               if isinstance(m, nn.BatchNorm2d)]
        return [(m, None) for m in bns]

    def set_backend(self, name: str | None) -> "_Network":
        """Use backend `name` (None: the fastest available) for every fused multi-path layer."""
        device = next(self.parameters()).device
        if name is not None:
            get_backend(name, device)  # raises a clear ValueError for unknown or unavailable names
        for m in self.modules():
            if isinstance(m, MixedDepthwiseBN):
                m.backend = name
        return self


class SuperNet(_Network):
    """All choices of a space; `forward(x, arch)` runs one architecture.

    layout: 'mixpath' (fused-op layout, default) or 'official' (the release's
    block). shadow_bn=False keeps a single BN where MixPath keeps one per path count.
    """

    def __init__(self, space: SearchSpace, layout: str = "mixpath", shadow_bn: bool = True):
        super().__init__()
        self.space, self.layout, self.shadow_bn = space, layout, shadow_bn
        self._build_ends(space)
        shadows = space.max_paths if shadow_bn else 1
        self.layers = nn.ModuleList(
            nn.ModuleDict({str(t): InvertedResidual(spec.in_channels, spec.out_channels, t, spec.stride,
                                                    space.kernel_sizes, shadows, layout)
                           for t in space.expansions})
            for spec in space.layers)

    def _blocks(self, arch: Arch):
        return [(layer[str(c.expansion)], c.kernels) for layer, c in zip(self.layers, arch.layers)]

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        x = self._features_in(x)
        for block, kernels in self._blocks(arch):
            x = block(x, kernels)
        return self._logits(x)

    def batchnorms(self, arch: Arch):
        """(module, j) for every BatchNorm the arch uses; j selects a Shadow BN row, None for plain BN."""
        used = self._end_batchnorms()
        for block, kernels in self._blocks(arch):
            used += block.batchnorms(kernels)
        return used

    def subnet(self, arch: Arch) -> "SubNet":
        """A stand-alone copy of `arch`: only its weights, the same outputs as `self(x, arch)`."""
        return SubNet(self, self.space.check(arch))


class SubNet(_Network):
    """One architecture as an ordinary nn.Module (`forward(x)`); made by `SuperNet.subnet`."""

    def __init__(self, supernet: SuperNet, arch: Arch):
        super().__init__()
        self.arch, self.space = arch, supernet.space
        for name in ("stem", "separable", "head", "classifier"):
            setattr(self, name, copy.deepcopy(getattr(supernet, name)))
        self.layers = nn.ModuleList(block.extract(kernels) for block, kernels in supernet._blocks(arch))
        self.train(supernet.training)

    def forward(self, x: torch.Tensor, arch: Arch | None = None) -> torch.Tensor:
        x = self._features_in(x)
        for block in self.layers:
            x = block(x)
        return self._logits(x)

    def batchnorms(self, arch: Arch | None = None):
        used = self._end_batchnorms()
        for block in self.layers:
            used += block.batchnorms()
        return used
