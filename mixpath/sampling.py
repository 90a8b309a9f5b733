"""Which architectures a supernet training step trains: uniform (the release) or strictly fair groups.

A sampler draws, from a `random.Random` shared by every rank, the *group* of
architectures of one step; the group's gradients are averaged into one update.

- `uniform` (the release): a group of one architecture, `SearchSpace.sample`:
  t uniform, j ~ U{1..m}, then a uniform j-subset of the kernels, per layer.
- `fair`: FairNAS's strict fairness extended to multi-path layers. With K
  kernel sizes and E expansion rates a group holds G = E * K architectures,
  numbered i = K * b + o (block b < E, offset o < K). Independently in every
  layer the step draws a path count j ~ U{1..m} (shared by the whole group), a
  uniformly random order of the expansion rates tau and, for each block b, a
  uniformly random order pi_b of the kernels. Architecture i takes expansion
  tau[b] and the j kernels pi_b[o], pi_b[o + 1], ..., pi_b[o + j - 1] (indices
  mod K). So in every layer of every group each expansion rate is used by
  exactly K architectures, each kernel by exactly E * j, and each (expansion,
  kernel) pair, which is one weight tensor of the supernet, by exactly j; each
  architecture has j <= m paths, and on its own each one is distributed as the
  uniform sampler's (a window of a uniformly random order is a uniform j-subset).

Under torchrun the group is dealt over the W ranks: see `rank_share`.
"""
from __future__ import annotations

import math
import random

from .space import Arch, LayerChoice, SearchSpace

__all__ = ["SAMPLINGS", "Sampler", "UniformSampler", "FairSampler", "make_sampler", "rank_share"]

SAMPLINGS = ("uniform", "fair")


class Sampler:
    """Draws the group of architectures of one training step."""

    def __init__(self, space: SearchSpace):
        self.space = space

    @property
    def group_size(self) -> int:
        raise NotImplementedError

    def group(self, rng: random.Random) -> list[Arch]:
        raise NotImplementedError


class UniformSampler(Sampler):
    """One architecture per step, as the release samples it (the same draws from `rng`)."""

    @property
    def group_size(self) -> int:
        return 1

    def group(self, rng: random.Random) -> list[Arch]:
        return [self.space.sample(rng)]


class FairSampler(Sampler):
    """E * K architectures per step, every kernel, expansion and (expansion, kernel) pair equally used per layer."""

    @property
    def group_size(self) -> int:
        return len(self.space.expansions) * len(self.space.kernel_sizes)

    def group(self, rng: random.Random) -> list[Arch]:
        space = self.space
        kernels, expansions = list(space.kernel_sizes), list(space.expansions)
        K = len(kernels)
        per_layer = []
        for _ in space.layers:
            j = rng.randint(1, space.max_paths)
            tau = rng.sample(expansions, len(expansions))
            choices = []
            for t in tau:
                pi = rng.sample(kernels, K)
                choices += [LayerChoice(t, tuple(sorted(pi[(o + s) % K] for s in range(j)))) for o in range(K)]
            per_layer.append(choices)
        return [Arch(tuple(layer[i] for layer in per_layer)) for i in range(self.group_size)]


def make_sampler(name: str, space: SearchSpace) -> Sampler:
    """The sampler called `name` (one of SAMPLINGS) over `space`."""
    if name not in SAMPLINGS:
        raise ValueError(f"unknown sampling {name!r}: choose one of {', '.join(SAMPLINGS)}")
    return (UniformSampler if name == "uniform" else FairSampler)(space)


def rank_share(group: list, rank: int, world_size: int) -> list:
    """The members of `group` that rank `rank` of `world_size` trains this step, each on its own batch shard.

    The step's L = lcm(G, W) (architecture, rank) passes are dealt round-robin:
    rank r trains group[(r + W * s) % G] for s < L / W. Every architecture is
    trained on exactly L / G ranks and every rank runs L / W passes, so the
    average over all passes weights each member of the group equally.
    With W = 1 a rank trains the whole group on the same batch (FairNAS).
    """
    size = len(group)
    passes = math.lcm(size, world_size) // world_size
    return [group[(rank + world_size * s) % size] for s in range(passes)]
