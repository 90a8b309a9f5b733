import random

import pytest
import torch
from torch import nn

from mixpath import ShadowBatchNorm2d, SuperNet, calibrate_bn, get_space
from mixpath.nn import InvertedResidual
from mixpath.space import Arch, LayerChoice


def fill_bn_randomly(module: nn.Module, seed=0):
    """Non-trivial BN parameters and statistics, so mixing up rows or layers shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm2d, ShadowBatchNorm2d)):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(torch.randn(t.shape, generator=g) * 0.3 + (1.0 if t is m.weight else 0.0))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


# -- Shadow BN --------------------------------------------------------------------

def test_shadow_bn_shapes():
    bn = ShadowBatchNorm2d(5, 3)
    assert bn.weight.shape == bn.bias.shape == bn.running_mean.shape == bn.running_var.shape == (3, 5)
    assert bn.num_batches_tracked.shape == (3,)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_shadow_bn_uses_and_updates_only_its_row(momentum):
    sbn = ShadowBatchNorm2d(4, 3, momentum=momentum)
    fill_bn_randomly(sbn)
    before = {k: v.clone() for k, v in sbn.state_dict().items()}
    x = torch.randn(6, 4, 5, 5)
    for j in (1, 2, 3):
        ref = nn.BatchNorm2d(4, momentum=momentum)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                getattr(ref, name).copy_(getattr(sbn, name)[j - 1])
        sbn.train()
        torch.testing.assert_close(sbn(x, j), ref(x))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(sbn, name)[j - 1], getattr(ref, name))
            for other in {0, 1, 2} - {j - 1}:
                if other > j - 1:  # rows after j are still untouched
                    assert torch.equal(getattr(sbn, name)[other], before[name][other])
        sbn.eval(), ref.eval()
        torch.testing.assert_close(sbn(x, j), ref(x))


def test_shadow_bn_gradient_reaches_only_its_row():
    sbn = ShadowBatchNorm2d(3, 4)
    sbn(torch.randn(4, 3, 2, 2), 2).pow(2).sum().backward()
    assert sbn.weight.grad[1].abs().sum() > 0
    assert sbn.weight.grad[[0, 2, 3]].abs().sum() == 0


def test_shadow_bn_bad_row():
    with pytest.raises(ValueError, match="rows for 1..2"):
        ShadowBatchNorm2d(3, 2)(torch.randn(2, 3, 2, 2), 3)


# -- the official layout against the release's block ----------------------------------

class ReleaseBlock(nn.Module):
    """A direct transcription of the release's S1 block (per-path BN+ReLU6, sum, project, mix_bn[j-1])."""

    def __init__(self, inp, oup, stride, t, kernels, m):
        super().__init__()
        hidden = inp * t
        self.use_res = stride == 1 and inp == oup
        self.expand = nn.Sequential(nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(True))
        self.dw = nn.ModuleList(nn.Sequential(
            nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(True)) for k in kernels)
        self.kernels = list(kernels)
        self.project = nn.Conv2d(hidden, oup, 1, bias=False)
        self.mix_bn = nn.ModuleList(nn.BatchNorm2d(oup) for _ in range(m))

    def forward(self, x, choice):
        out = self.expand(x)
        out = sum(self.dw[self.kernels.index(k)](out) for k in choice)
        out = self.mix_bn[len(choice) - 1](self.project(out))
        return out + x if self.use_res else out


def load_release_weights(ours: InvertedResidual, release: ReleaseBlock):
    with torch.no_grad():
        release.expand.load_state_dict(ours.expand.state_dict())
        for i, k in enumerate(release.kernels):
            release.dw[i].load_state_dict(ours.mixed.paths[f"k{k}"].state_dict())
        release.project.load_state_dict(ours.project.state_dict())
        for j, bn in enumerate(release.mix_bn):
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                getattr(bn, name).copy_(getattr(ours.project_bn, name)[j])


@pytest.mark.parametrize("stride,cin,cout", [(1, 8, 8), (2, 8, 12)])
def test_official_layout_matches_release_block(stride, cin, cout):
    torch.manual_seed(0)
    kernels = (3, 5, 7, 9)
    ours = InvertedResidual(cin, cout, 3, stride, kernels, 4, layout="official")
    fill_bn_randomly(ours)
    release = ReleaseBlock(cin, cout, stride, 3, kernels, 4)
    load_release_weights(ours, release)
    x = torch.randn(4, cin, 9, 9)
    for choice in [(3,), (5, 9), (3, 7, 9), (3, 5, 7, 9)]:
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa, choice), release(xb, choice)
        torch.testing.assert_close(ya, yb)
        ya.sum().backward(), yb.sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad)
        j = len(choice) - 1
        torch.testing.assert_close(ours.project_bn.running_mean[j], release.mix_bn[j].running_mean)
        torch.testing.assert_close(ours.project_bn.weight.grad[j], release.mix_bn[j].weight.grad)
    ours.eval(), release.eval()
    torch.testing.assert_close(ours(x, (5, 7)), release(x, (5, 7)))


# -- the mixpath layout ----------------------------------------------------------------

def test_mixpath_block_is_the_fused_definition():
    """expand -> sum of linear depthwise paths -> SBN[j-1] -> ReLU6 -> project -> BN (+x)."""
    torch.manual_seed(1)
    block = InvertedResidual(6, 6, 3, 1, (3, 5, 7, 9), 4, layout="mixpath")
    fill_bn_randomly(block)
    block.eval()
    x = torch.randn(2, 6, 7, 7)
    h = block.expand(x)
    z = sum(nn.functional.conv2d(h, block.mixed.weight[f"k{k}"], padding=k // 2, groups=18) for k in (3, 9))
    sbn = block.mixed.bn
    u = (z - sbn.running_mean[1][:, None, None]) / (sbn.running_var[1][:, None, None] + sbn.eps).sqrt()
    u = torch.clamp(u * sbn.weight[1][:, None, None] + sbn.bias[1][:, None, None], 0, 6)
    expected = x + block.project_bn(block.project(u))
    torch.testing.assert_close(block(x, (3, 9)), expected)


@pytest.mark.parametrize("layout", ["mixpath", "official"])
def test_shadow_bn_switch(layout):
    s = get_space("tiny")
    on, off = SuperNet(s, layout=layout), SuperNet(s, layout=layout, shadow_bn=False)
    rows = lambda net: {m.num_shadows for m in net.modules() if isinstance(m, ShadowBatchNorm2d)}  # noqa: E731
    assert rows(on) == {4} and rows(off) == {1}
    arch = s.sample(random.Random(0))
    off(torch.randn(2, 3, 16, 16), arch)  # any path count uses the single row


@pytest.mark.parametrize("layout", ["mixpath", "official"])
def test_backends_agree_in_supernet(layout):
    s = get_space("tiny")
    torch.manual_seed(0)
    net = SuperNet(s, layout=layout)
    arch = s.sample(random.Random(2))
    x = torch.randn(3, 3, 16, 16)
    outs = []
    for backend in ("reference", "merged"):
        net.set_backend(backend)
        net.zero_grad()
        y = net(x, arch)
        y.square().sum().backward()
        outs.append((y.detach(), net.stem[0].weight.grad.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-3, atol=1e-4)


def test_set_backend_rejects_unknown():
    net = SuperNet(get_space("tiny"))
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        net.set_backend("fast")
    with pytest.raises(ValueError, match="not available"):
        net.set_backend("cuda")


# -- subnets -----------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["mixpath", "official"])
@pytest.mark.parametrize("shadow_bn", [True, False])
def test_subnet_matches_supernet(layout, shadow_bn):
    s = get_space("tiny")
    torch.manual_seed(0)
    net = SuperNet(s, layout=layout, shadow_bn=shadow_bn)
    fill_bn_randomly(net)
    arch = s.parse("6:3,5,7|3:9|6:5|3:3,5,7,9")
    sub = net.subnet(arch)
    x = torch.randn(4, 3, 16, 16)
    net.eval(), sub.eval()
    torch.testing.assert_close(sub(x), net(x, arch))
    net.train(), sub.train()
    torch.testing.assert_close(sub(x), net(x, arch))  # batch statistics: same in train mode too
    assert sum(p.numel() for p in sub.parameters()) == s.params(arch, layout)
    # copies, not views: training the subnet leaves the supernet alone
    before = net.stem[0].weight.clone()
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(1.0)
    assert torch.equal(net.stem[0].weight, before)


def test_subnet_rejects_bad_arch():
    net = SuperNet(get_space("tiny"))
    with pytest.raises(ValueError, match="layers"):
        net.subnet(Arch((LayerChoice(3, (3,)),)))


# -- BN calibration -------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["mixpath", "official"])
def test_calibrate_bn(layout):
    s = get_space("tiny")
    torch.manual_seed(0)
    net = SuperNet(s, layout=layout)
    fill_bn_randomly(net)
    arch = s.parse("6:3,5|3:9|6:5|3:3,5,7,9")
    other_branch = net.layers[0]["3"]  # layer 0 uses t=6: its t=3 branch must be untouched
    untouched = {k: v.clone() for k, v in other_branch.state_dict().items()}
    sbn = net.layers[0]["6"].shadow_bn
    unused_row = sbn.running_mean[0].clone()  # layer 0 uses 2 paths: row 1
    x1, x2 = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    net.eval()
    assert calibrate_bn(net, arch, [x1, (x2, None)]) == 2
    assert not net.training
    # the stem BN now holds the plain average of the two batches' statistics
    stem_out = [net.stem[0](x).detach() for x in (x1, x2)]
    expected_mean = sum(o.mean((0, 2, 3)) for o in stem_out) / 2
    torch.testing.assert_close(net.stem[1].running_mean, expected_mean)
    assert net.stem[1].momentum == 0.1
    for k, v in other_branch.state_dict().items():
        assert torch.equal(v, untouched[k]), k
    assert torch.equal(sbn.running_mean[0], unused_row)
    assert sbn.num_batches_tracked[1] == 2
    with pytest.raises(ValueError, match="no batches"):
        calibrate_bn(net, arch, [])
