"""The differentiable supernet: softmax-weighted kernels merged into one depthwise conv per layer.

Per searchable layer the architecture holds two logit vectors, one over the
space's kernel sizes and one over its expansion rates. A layer computes, for
each expansion rate t, the inverted-bottleneck block of t with the depthwise
kernel sum_k softmax(alpha)_k * W_k: because the paths are linear, share input,
stride and centred padding, that is exactly sum_k softmax(alpha)_k * dwconv_k(x),
and `mixed_depthwise_bn` computes it as ONE depthwise conv plus one BatchNorm,
however many kernels the space has. Autograd reaches each alpha_k through the
product alpha_k * W_k, so every backend that returns dW (all of them: it is part
of the op's contract) trains the logits. The blocks' outputs are mixed by
softmax(beta) over the expansion rates.

The weights are a `SuperNet` built with shadow_bn=False, so a differentiable run
is also an ordinary supernet (`mixpath search` and `rank` open it). Why one BN
row: the merged kernel is a convex combination of the kernels (the weights sum
to 1), so its output has the scale of ONE path, never of j summed paths; Shadow
BN's rows for j > 1 would never see a batch. The derived architecture's subnets
are scored with BN recalibration, which re-estimates that row for j kernels.

Partial channels (PC-DARTS, used by BNAS-v2): with K > 1, only the first 1/K of
a layer's hidden channels go through the mixed depthwise op; the rest bypass it
(max-pooled where the layer has stride 2, as PC-DARTS does), then the channels
are shuffled in K groups, so across layers every channel takes its turn.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import InvertedResidual, SuperNet
from ..ops import mixed_depthwise_bn
from ..space import ArchError, SearchSpace

__all__ = ["ArchitectureLogits", "DifferentiableNet", "channel_shuffle", "indivisible_widths",
           "weighted_depthwise_bn"]

# The row a differentiable layer uses in every Shadow BN (see the module docstring).
DIFFERENTIABLE_ROW = 1


class ArchitectureLogits(nn.Module):
    """alpha (layers, kernels) and beta (layers, expansions), zero at the start: every choice equally likely."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.kernel_sizes, self.expansions = tuple(space.kernel_sizes), tuple(space.expansions)
        self.kernels = nn.Parameter(torch.zeros(len(space.layers), len(self.kernel_sizes)))
        self.expansion = nn.Parameter(torch.zeros(len(space.layers), len(self.expansions)))

    def kernel_probs(self) -> torch.Tensor:
        return F.softmax(self.kernels, dim=-1)

    def expansion_probs(self) -> torch.Tensor:
        return F.softmax(self.expansion, dim=-1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """PC-DARTS's shuffle: channels (g, c/g) -> (c/g, g), so each group's channels interleave."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def indivisible_widths(space: SearchSpace, k: int) -> list[int]:
    """The hidden widths of `space` that `k` does not divide (empty: partial channels apply)."""
    widths = {spec.in_channels * t for spec in space.layers for t in space.expansions}
    return sorted(c for c in widths if c % k)


def weighted_depthwise_bn(x: torch.Tensor, block: InvertedResidual, probs: torch.Tensor, *,
                          literal: bool = False) -> torch.Tensor:
    """act(BN(sum_k probs[k] * dwconv(x, W_k))) of `block`'s depthwise layer, on x's channels.

    x may hold only the block's first channels (partial channels): the kernels and
    the BN row are taken for those. literal=True computes the sum the way DARTS
    implementations do, one conv per kernel, then BatchNorm: the same function
    at len(probs) times the convolutions (the benchmark's and the tests' baseline).
    """
    mixed, c = block.mixed, x.shape[1]
    weights = [mixed.weight[f"k{k}"][:c] * p for k, p in zip(mixed.kernel_sizes, probs)]
    momentum = mixed.bn.step(DIFFERENTIABLE_ROW)
    gamma, beta, mean, var = (t[:c] for t in mixed.bn.row(DIFFERENTIABLE_ROW))
    # the literal baseline is the `reference` backend: one F.conv2d per kernel, summed, then BN
    return mixed_depthwise_bn(x, weights, gamma, beta, mean, var, stride=mixed.stride, training=mixed.training,
                              momentum=momentum, eps=mixed.bn.eps, activation=mixed.activation,
                              backend="reference" if literal else mixed.backend)


class DifferentiableNet(nn.Module):
    """forward(x): the softmax-mixed network of `supernet` under `logits`; both stay the caller's modules.

    partial_channels: K (1 = off); K must divide every hidden width (`indivisible_widths`).
    literal: compute each depthwise layer as separate convs (see `weighted_depthwise_bn`).
    """

    def __init__(self, supernet: SuperNet, logits: ArchitectureLogits, partial_channels: int = 1,
                 literal: bool = False):
        super().__init__()
        if supernet.layout != "mixpath":
            raise ValueError("the differentiable network merges kernels in the fused op: build the supernet "
                             "with layout='mixpath'")
        bad = indivisible_widths(supernet.space, partial_channels)
        if bad:
            raise ValueError(f"partial channels {partial_channels} must divide every hidden width; "
                             f"{', '.join(map(str, bad))} are not multiples")
        self.supernet, self.logits = supernet, logits
        self.partial_channels, self.literal = partial_channels, literal

    def _block(self, block: InvertedResidual, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        h = block.expand(x)
        k = self.partial_channels
        if k == 1:
            y = weighted_depthwise_bn(h, block, probs, literal=self.literal)
        else:
            c = h.shape[1] // k
            bypass = h[:, c:]
            if block.stride == 2:  # centred padding halves H to (H - 1) // 2 + 1, as this pool does
                bypass = F.max_pool2d(bypass, 3, 2, 1)
            y = weighted_depthwise_bn(h[:, :c], block, probs, literal=self.literal)
            y = channel_shuffle(torch.cat([y, bypass], dim=1), k)
        out = block.project_bn(block.project(y))
        return x + out if block.residual else out

    def check_arch(self, arch) -> None:
        """None (the mixture is the architecture), as `mixpath.evaluate.accuracy` asks of a network."""
        if arch is not None:
            raise ArchError(f"the differentiable network runs its softmax mixture, not {arch}: score a derived "
                            "architecture on its supernet")

    def forward(self, x: torch.Tensor, arch=None) -> torch.Tensor:
        self.check_arch(arch)
        net = self.supernet
        kernel_probs, expansion_probs = self.logits.kernel_probs(), self.logits.expansion_probs()
        x = net._features_in(x)
        for i, layer in enumerate(net.layers):
            x = sum(p * self._block(layer[str(t)], x, kernel_probs[i])
                    for t, p in zip(self.logits.expansions, expansion_probs[i]))
        return net._logits(x)
