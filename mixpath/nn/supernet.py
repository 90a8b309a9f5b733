"""The MixPath supernet, the subnets extracted from it, and stand-alone networks built from scratch."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..ops.registry import get_backend
from ..space import Arch, ArchError, SearchSpace
from .blocks import ConvBNAct, InvertedResidual, MixedDepthwiseBN
from .init import release_init_


def _ends(space: SearchSpace) -> dict[str, nn.Module]:
    """Stem, optional separable block, head and classifier: the fixed parts of every network of `space`."""
    ends = dict(stem=ConvBNAct(space.in_channels, space.stem_channels, 3, space.stem_stride), separable=nn.Identity(),
                head=ConvBNAct(space.layers[-1].out_channels, space.head_channels, 1),
                classifier=nn.Linear(space.head_channels, space.num_classes))
    if space.separable_channels:
        c, s = space.stem_channels, space.separable_channels
        ends["separable"] = nn.Sequential(ConvBNAct(c, c, 3, groups=c), ConvBNAct(c, s, 1, act=False))
    return ends


class _Network(nn.Module):
    """Stem, optional separable block, layers, head: what supernet and subnet share."""

    def __init__(self, space: SearchSpace, layout: str, stem, separable, layers, head, classifier):
        super().__init__()
        self.space, self.layout = space, layout
        self.stem, self.separable, self.head, self.classifier = stem, separable, head, classifier
        self.layers = layers

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
    Weights start as the release initialises them. `arch` may be an `Arch` or its
    compact string; one that does not fit the space raises ArchError.
    """

    def __init__(self, space: SearchSpace, layout: str = "mixpath", shadow_bn: bool = True):
        shadows = space.max_paths if shadow_bn else 1
        layers = nn.ModuleList(
            nn.ModuleDict({str(t): InvertedResidual(spec.in_channels, spec.out_channels, t, spec.stride,
                                                    space.kernel_sizes, shadows, layout)
                           for t in space.expansions})
            for spec in space.layers)
        super().__init__(space, layout, layers=layers, **_ends(space))
        self.shadow_bn = shadow_bn
        release_init_(self)

    def check_arch(self, arch: Arch | str) -> Arch:
        """`arch` as an Arch of this supernet's space; ArchError if it does not fit (cached: cheap per step)."""
        return self.space.check(arch)

    def _blocks(self, arch: Arch | str):
        arch = self.check_arch(arch)
        return [(layer[str(c.expansion)], c.kernels) for layer, c in zip(self.layers, arch.layers)]

    def forward(self, x: torch.Tensor, arch: Arch | str) -> torch.Tensor:
        x = self._features_in(x)
        for block, kernels in self._blocks(arch):
            x = block(x, kernels)
        return self._logits(x)

    def batchnorms(self, arch: Arch | str):
        """(module, j) for every BatchNorm the arch uses; j selects a Shadow BN row, None for plain BN."""
        used = self._end_batchnorms()
        for block, kernels in self._blocks(arch):
            used += block.batchnorms(kernels)
        return used

    def subnet(self, arch: Arch | str) -> "SubNet":
        """A stand-alone copy of `arch`: only its weights, the same outputs as `self(x, arch)`."""
        arch = self.check_arch(arch)
        layers = nn.ModuleList(block.extract(kernels) for block, kernels in self._blocks(arch))
        ends = {name: copy.deepcopy(getattr(self, name)) for name in ("stem", "separable", "head", "classifier")}
        return SubNet(self.space, arch, self.layout, layers=layers, **ends).train(self.training)


class SubNet(_Network):
    """One architecture as an ordinary nn.Module (`forward(x)`), one Shadow BN row per layer.

    Made by `SuperNet.subnet` (weights copied from the supernet) or `standalone`
    (fresh weights, to train from scratch).
    """

    def __init__(self, space: SearchSpace, arch: Arch, layout: str, *, stem, separable, layers, head, classifier):
        super().__init__(space, layout, stem, separable, layers, head, classifier)
        self.arch = arch

    def check_arch(self, arch: Arch | str | None) -> None:
        """None (this subnet's own arch is implied); ArchError for any other architecture."""
        if arch is not None and self.space.check(arch) != self.arch:
            raise ArchError(f"this SubNet runs {self.arch} only; got {arch}: pass arch=None "
                            "or take the subnet of that architecture from the supernet")

    def forward(self, x: torch.Tensor, arch: Arch | str | None = None) -> torch.Tensor:
        self.check_arch(arch)
        x = self._features_in(x)
        for block in self.layers:
            x = block(x)
        return self._logits(x)

    def batchnorms(self, arch: Arch | str | None = None):
        self.check_arch(arch)
        used = self._end_batchnorms()
        for block in self.layers:
            used += block.batchnorms()
        return used


def standalone(space: SearchSpace, arch: Arch | str, layout: str = "mixpath") -> SubNet:
    """A fresh network of `arch` alone (no supernet built), initialised as the release does: to train from scratch."""
    arch = space.check(arch)
    layers = nn.ModuleList(InvertedResidual(spec.in_channels, spec.out_channels, c.expansion, spec.stride, c.kernels,
                                            1, layout)
                           for spec, c in zip(space.layers, arch.layers))
    return release_init_(SubNet(space, arch, layout, layers=layers, **_ends(space)))
