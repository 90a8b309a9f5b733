"""Samplers: uniform draws the release's architectures; fair groups use every choice of every layer equally."""
from __future__ import annotations

import math
import random
from collections import Counter
from itertools import combinations

import pytest

from mixpath.sampling import FairSampler, UniformSampler, make_sampler, rank_share
from mixpath.space import get_space


@pytest.fixture(params=[(4, (3, 5, 7, 9), (3, 6)), (2, (3, 5), (3, 6)), (3, (3, 5, 7), (2, 4, 6))])
def space(request):
    m, kernels, expansions = request.param
    return get_space("tiny", max_paths=m, kernel_sizes=kernels, expansions=expansions)


def test_uniform_is_the_release_sampler():
    space = get_space("tiny", max_paths=4)
    a, b = random.Random(7), random.Random(7)
    assert [UniformSampler(space).group(a)[0] for _ in range(50)] == [space.sample(b) for _ in range(50)]
    assert make_sampler("uniform", space).group_size == 1


def test_fair_groups_are_strictly_fair_in_every_layer(space):
    sampler = make_sampler("fair", space)
    K, E = len(space.kernel_sizes), len(space.expansions)
    assert isinstance(sampler, FairSampler) and sampler.group_size == K * E
    rng = random.Random(0)
    for _ in range(300):
        group = sampler.group(rng)
        assert len(group) == K * E
        for arch in group:
            space.check(arch)  # every member is an architecture of the space: at most m paths per layer
        for layer in range(len(space.layers)):
            choices = [arch.layers[layer] for arch in group]
            (j,) = {len(c.kernels) for c in choices}
            assert 1 <= j <= space.max_paths
            assert Counter(c.expansion for c in choices) == {t: K for t in space.expansions}
            assert Counter(k for c in choices for k in c.kernels) == {k: E * j for k in space.kernel_sizes}
            pairs = Counter((c.expansion, k) for c in choices for k in c.kernels)
            assert pairs == {(t, k): j for t in space.expansions for k in space.kernel_sizes}


def test_each_member_of_a_fair_group_is_distributed_like_a_uniform_draw():
    space = get_space("tiny", max_paths=2, kernel_sizes=(3, 5, 7, 9))
    sampler, rng = FairSampler(space), random.Random(1)
    n = 3000
    seen = Counter(sampler.group(rng)[5].layers[0] for _ in range(n))
    # uniform: t uniform (1/2), j uniform (1/2), a uniform j-subset (1/4 or 1/6)
    expected = {(t, ks): 0.25 * (1 / math.comb(4, len(ks)))
                for t in (3, 6) for j in (1, 2) for ks in combinations((3, 5, 7, 9), j)}
    assert {(c.expansion, c.kernels) for c in seen} == set(expected)
    for c, count in seen.items():
        p = expected[(c.expansion, c.kernels)]
        assert abs(count / n - p) < 4 * math.sqrt(p * (1 - p) / n), (c, count / n, p)


@pytest.mark.parametrize("size, world", [(1, 1), (1, 4), (8, 1), (8, 2), (8, 8), (4, 8), (4, 3), (6, 4)])
def test_rank_share_deals_every_member_equally_often(size, world):
    group = list(range(size))
    shares = [rank_share(group, r, world) for r in range(world)]
    passes = math.lcm(size, world)
    assert all(len(share) == passes // world for share in shares)
    assert Counter(a for share in shares for a in share) == {a: passes // size for a in group}
    if size == 1:
        assert all(share == [0] for share in shares)  # uniform: every rank trains the step's one arch


def test_unknown_sampling_is_refused():
    with pytest.raises(ValueError, match="choose one of uniform, fair"):
        make_sampler("greedy", get_space("tiny"))
