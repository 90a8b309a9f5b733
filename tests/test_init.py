"""The release's initialisation, checked statistically on every network we build."""
import math

import pytest
import torch
from scipy import stats
from torch import nn

from mixpath import SuperNet, get_space
from mixpath.nn import MixedDepthwiseBN, ShadowRow, standalone

ARCH = {"tiny": "6:3,5|3:9|6:5,7,9|3:3,5,7,9",
        "cifar": "|".join(["6:3,5", "3:9", "6:5,7,9", "3:3,5,7,9"] * 3)}


def conv_weights(net: nn.Module):
    """(name, weight, expected std) for every convolution, the fused layer's depthwise paths included."""
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            yield name, m.weight, math.sqrt(2 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels))
        elif isinstance(m, MixedDepthwiseBN):
            for key, w in m.weight.items():
                yield f"{name}.{key}", w, math.sqrt(2 / (w.shape[2] * w.shape[3] * w.shape[0]))


def assert_release_init(net: nn.Module):
    standardized = []
    for name, w, std in conv_weights(net):
        w = w.detach().flatten()
        n = w.numel()
        # 6 standard errors of the sample std and mean: a wrong scale (e.g. torch's default 1/sqrt(3 fan_in))
        # on any big layer falls far outside
        assert abs(w.std().item() / std - 1) < 6 / math.sqrt(2 * n), name
        assert abs(w.mean().item()) < 6 * std / math.sqrt(n), name
        standardized.append(w[:2000] / std)  # i.i.d. entries: any 2000 of them are a fair sample
    assert stats.kstest(torch.cat(standardized).numpy(), "norm").pvalue > 1e-3  # normal, not uniform
    bn_rows = [m for m in net.modules() if isinstance(m, (nn.BatchNorm2d, ShadowRow))]
    assert bn_rows and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bn_rows)
    fc = net.classifier
    bound = 1 / math.sqrt(fc.out_features)
    w = fc.weight.detach().flatten()
    assert torch.all(fc.bias == 0)
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert stats.kstest(w.numpy(), "uniform", args=(-bound, 2 * bound)).pvalue > 1e-3


@pytest.mark.parametrize("name", ["tiny", "cifar"])
@pytest.mark.parametrize("layout", ["mixpath", "official"])
def test_supernet_starts_with_release_init(name, layout):
    torch.manual_seed(0)
    assert_release_init(SuperNet(get_space(name), layout=layout))


@pytest.mark.parametrize("name", ["tiny", "cifar"])
@pytest.mark.parametrize("layout", ["mixpath", "official"])
def test_standalone_starts_with_release_init(name, layout):
    torch.manual_seed(0)
    assert_release_init(standalone(get_space(name), ARCH[name], layout=layout))


def test_init_check_rejects_torch_defaults():
    """The check above is sensitive: torch's default conv and Linear initialisation fails it."""
    s = get_space("tiny")
    torch.manual_seed(0)
    net = SuperNet(s)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    with pytest.raises(AssertionError):
        assert_release_init(net)
