import collections
import math
import random

import pytest
import torch
from torch import nn

from mixpath import Arch, ArchError, SuperNet, get_space
from mixpath.nn import MixedDepthwiseBN
from mixpath.space import LayerChoice, space_from_dict


def test_cifar_matches_s1():
    s = get_space("cifar")
    channels = [32, 48, 48, 96, 96, 96, 192, 192, 192, 256, 256, 320, 320]
    assert s.stem_channels == 32 and s.stem_stride == 1 and s.head_channels == 1280
    assert [(l.in_channels, l.out_channels) for l in s.layers] == list(zip(channels, channels[1:]))
    assert [i for i, l in enumerate(s.layers) if l.stride == 2] == [2, 5]
    assert s.resolutions()[-1] == 8


@pytest.mark.parametrize("m,expected", [(1, 8), (2, 20), (3, 28), (4, 30)])
def test_choices_per_layer(m, expected):
    s = get_space("cifar", max_paths=m)
    assert s.choices_per_layer() == expected
    assert s.size() == expected ** 12


def test_imagenet_skeleton():
    s = get_space("imagenet")
    assert len(s.layers) == 19 and s.stem_stride == 2 and s.separable_channels == 16
    assert s.layers[0].in_channels == 16
    outs = collections.Counter(l.out_channels for l in s.layers)
    assert outs == {32: 2, 40: 4, 80: 4, 96: 4, 192: 4, 320: 1}
    assert s.resolutions()[-1] == 7


def test_width_multiplier_and_options():
    s = get_space("cifar", width_mult=0.5, kernel_sizes=(3, 5), expansions=(4,), max_paths=2, num_classes=100)
    assert s.stem_channels == 16 and s.layers[-1].out_channels == 160
    assert s.choices_per_layer() == 3 and s.num_classes == 100
    assert space_from_dict(s.to_dict()) == s


@pytest.mark.parametrize("kwargs", [dict(max_paths=5), dict(max_paths=0), dict(kernel_sizes=(4,)),
                                    dict(kernel_sizes=(11,)), dict(kernel_sizes=(3,), max_paths=2),
                                    dict(width_mult=0), dict(expansions=())])
def test_bad_space_options(kwargs):
    with pytest.raises(ValueError):
        get_space("tiny", **kwargs)


def test_unknown_space():
    with pytest.raises(ValueError, match="unknown search space"):
        get_space("nope")


def test_sampler_distribution_and_seed():
    s = get_space("cifar", max_paths=3)
    a1 = [s.sample(random.Random(5)) for _ in range(2)]
    assert a1[0] == a1[1]
    rng = random.Random(0)
    counts, ts = collections.Counter(), collections.Counter()
    for _ in range(600):
        arch = s.check(s.sample(rng))
        for c in arch.layers:
            counts[len(c.kernels)] += 1
            ts[c.expansion] += 1
    total = sum(counts.values())
    for j in (1, 2, 3):  # j ~ U{1..m}, not uniform over subsets
        assert abs(counts[j] / total - 1 / 3) < 0.03
    assert abs(ts[3] / total - 0.5) < 0.03


def test_arch_string_and_json_round_trip():
    s = get_space("cifar")
    rng = random.Random(1)
    for _ in range(20):
        a = s.sample(rng)
        assert s.parse(str(a)) == a
        assert s.check(Arch.from_json(a.to_json())) == a


def four_layers(first: str) -> str:
    """An otherwise valid tiny-space string whose first layer reads `first`."""
    return "|".join([first, "3:3", "3:3", "3:3"])


@pytest.mark.parametrize("text,match", [
    ("", "empty"),
    ("6:3,5|x|3:3|3:3", "layer 1"),
    (four_layers("6:4"), "kernel 4"),
    (four_layers("6:"), "empty kernel set"),
    (four_layers("6:3,3"), "repeats"),
    (four_layers("5:3"), "expansion 5"),
    ("6:3", "has 1 layers"),
])
def test_arch_rejections(text, match):
    with pytest.raises(ArchError, match=match):
        get_space("tiny").parse(text)


def test_arch_with_too_many_paths():
    with pytest.raises(ArchError, match="exceed"):
        get_space("tiny", max_paths=1).parse(four_layers("6:3,5"))


def test_arch_json_rejection():
    with pytest.raises(ArchError, match="malformed"):
        Arch.from_json('{"layers": [{"kernels": [3]}]}')


def hook_counts(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds counted from the shapes each conv/linear layer really sees."""
    total = 0

    def conv_hook(m, inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]

    def linear_hook(m, inp, out):
        nonlocal total
        total += m.in_features * m.out_features

    def mixed_hook(m, inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * sum(w.shape[-1] ** 2 for w in m.weight.values())

    for m in model.modules():
        hook = {nn.Conv2d: conv_hook, nn.Linear: linear_hook, MixedDepthwiseBN: mixed_hook}.get(type(m))
        if hook:
            m.register_forward_hook(hook)
    model.eval()
    with torch.no_grad():
        model(x)
    return total


@pytest.mark.parametrize("name,layout", [("tiny", "mixpath"), ("tiny", "official"), ("cifar", "mixpath"),
                                         ("cifar", "official"), ("imagenet", "mixpath")])
def test_flops_and_params_against_hooks(name, layout):
    opts = {"input_size": 64, "width_mult": 0.5} if name == "imagenet" else {}
    s = get_space(name, **opts)
    net = SuperNet(s, layout=layout)
    rng = random.Random(3)
    for _ in range(2):
        arch = s.sample(rng)
        sub = net.subnet(arch)
        assert s.params(arch, layout) == sum(p.numel() for p in sub.parameters())
        assert s.flops(arch) == hook_counts(sub, torch.randn(1, 3, s.input_size, s.input_size))


def test_largest_arch_is_costliest():
    s = get_space("tiny")
    big = s.largest()
    rng = random.Random(0)
    assert all(s.flops(s.sample(rng)) <= s.flops(big) for _ in range(50))
    assert big == Arch(tuple(LayerChoice(6, (3, 5, 7, 9)) for _ in s.layers))
    assert math.isclose(s.size(), 30 ** 4)
