import random

import pytest
import torch
from torch import nn

from mixpath import ArchError, ShadowBatchNorm2d, SubNet, SuperNet, calibrate_bn, get_space
from mixpath.evaluate import score_arch
from mixpath.nn import InvertedResidual, ShadowRow, standalone
from mixpath.space import Arch, LayerChoice


def fill_bn_randomly(module: nn.Module, seed=0):
    """Non-trivial BN parameters and statistics, so mixing up rows or layers shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm2d, ShadowRow)):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(torch.randn(t.shape, generator=g) * 0.3 + (1.0 if t is m.weight else 0.0))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


# -- Shadow BN --------------------------------------------------------------------

def test_shadow_bn_shapes():
    bn = ShadowBatchNorm2d(5, 3)
    assert len(bn.rows) == 3
    for j in (1, 2, 3):
        assert [t.shape for t in bn.row(j)] == [(5,)] * 4
        assert bn.rows[j - 1].num_batches_tracked.shape == ()


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
                getattr(ref, name).copy_(getattr(sbn.rows[j - 1], name))
        sbn.train()
        torch.testing.assert_close(sbn(x, j), ref(x))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(sbn.rows[j - 1], name), getattr(ref, name))
            for other in range(j, 3):  # rows after j are still untouched
                assert torch.equal(getattr(sbn.rows[other], name), before[f"rows.{other}.{name}"])
        sbn.eval(), ref.eval()
        torch.testing.assert_close(sbn(x, j), ref(x))


def test_shadow_bn_gradient_reaches_only_its_row():
    sbn = ShadowBatchNorm2d(3, 4)
    sbn(torch.randn(4, 3, 2, 2), 2).pow(2).sum().backward()
    assert sbn.rows[1].weight.grad.abs().sum() > 0
    assert all(sbn.rows[r].weight.grad is None for r in (0, 2, 3))


def sgd(params):
    """The training recipe's optimizer: momentum and weight decay move any row that gets a gradient, even a zero one."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=3e-4)


def row_snapshot(sbn: ShadowBatchNorm2d, j: int):
    return [t.detach().clone() for t in sbn.row(j)]


def test_sgd_leaves_unused_shadow_rows_bit_identical():
    torch.manual_seed(0)
    sbn = ShadowBatchNorm2d(4, 3)
    fill_bn_randomly(sbn)
    opt = sgd(sbn.parameters())
    x = torch.randn(6, 4, 3, 3)

    def train_step(j):
        opt.zero_grad()
        sbn(x, j).sin().sum().backward()
        opt.step()

    train_step(1), train_step(3)  # rows 0 and 2 now have momentum buffers
    frozen = {j: row_snapshot(sbn, j) for j in (1, 3)}
    for _ in range(3):
        train_step(2)
        assert sbn.row(1)[0].grad is None and sbn.row(3)[1].grad is None  # why SGD skips them
        for j, before in frozen.items():
            assert all(torch.equal(a, b) for a, b in zip(sbn.row(j), before)), f"row {j - 1} moved"
    # the counter-check: a zero gradient instead of None (the release's zero_grad) lets momentum and
    # weight decay move row 0
    weight = sbn.row(1)[0]
    weight.grad = torch.zeros_like(weight)
    opt.step()
    assert not torch.equal(weight, frozen[1][0])


@pytest.mark.parametrize("layout", ["mixpath", "official"])
def test_supernet_step_leaves_other_path_counts_bit_identical(layout):
    s = get_space("tiny")
    torch.manual_seed(0)
    net = SuperNet(s, layout=layout).set_backend("merged")
    opt = sgd(net.parameters())
    x = torch.randn(4, 3, 16, 16)
    one_path, two_paths = s.parse("6:3|6:5|6:7|6:9"), s.parse("6:3,5|6:5,7|6:7,9|6:3,9")
    sbns = [layer["6"].shadow_bn for layer in net.layers]
    for arch in (one_path, two_paths, two_paths):
        frozen = [[row_snapshot(sbn, j) for j in (1, 3, 4)] for sbn in sbns] if arch is two_paths else None
        opt.zero_grad()
        net(x, arch).logsumexp(1).sum().backward()
        opt.step()
    for sbn, rows in zip(sbns, frozen):
        for j, before in zip((1, 3, 4), rows):
            assert all(torch.equal(a, b) for a, b in zip(sbn.row(j), before)), f"row {j - 1} moved"


def stacked_state_dict(state: dict) -> dict:
    """A state dict in the former Shadow BN layout: `X.rows.R.name` rows stacked into `X.name`."""
    rows, out = {}, {}
    for key, value in state.items():
        head, sep, tail = key.partition("rows.")
        if sep and tail.split(".", 1)[0].isdigit():
            r, name = tail.split(".", 1)
            rows.setdefault(head + name, {})[int(r)] = value
        else:
            out[key] = value
    out.update({key: torch.stack([by_row[r] for r in sorted(by_row)]) for key, by_row in rows.items()})
    return out


def test_old_stacked_state_dict_loads():
    sbn = ShadowBatchNorm2d(4, 3)
    fill_bn_randomly(sbn, seed=3)
    old = stacked_state_dict(sbn.state_dict())
    assert old["weight"].shape == (3, 4) and old["num_batches_tracked"].shape == (3,)
    fresh = ShadowBatchNorm2d(4, 3)
    fresh.load_state_dict(old)
    x = torch.randn(5, 4, 3, 3)
    for j in (1, 2, 3):
        sbn.eval(), fresh.eval()
        torch.testing.assert_close(fresh(x, j), sbn(x, j), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="holds 3 Shadow BN rows, this module 2"):
        ShadowBatchNorm2d(4, 2).load_state_dict(old)


@pytest.mark.parametrize("layout", ["mixpath", "official"])
def test_old_supernet_checkpoint_loads(layout):
    s = get_space("tiny")
    torch.manual_seed(0)
    net = SuperNet(s, layout=layout)
    fill_bn_randomly(net)
    fresh = SuperNet(s, layout=layout)
    fresh.load_state_dict(stacked_state_dict(net.state_dict()))
    net.eval(), fresh.eval()
    arch, x = s.parse("6:3,5,7|3:9|6:5|3:3,5,7,9"), torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fresh(x, arch), net(x, arch), rtol=0, atol=0)


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
                getattr(bn, name).copy_(getattr(ours.project_bn.rows[j], name))


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
        torch.testing.assert_close(ours.project_bn.rows[j].running_mean, release.mix_bn[j].running_mean)
        torch.testing.assert_close(ours.project_bn.rows[j].weight.grad, release.mix_bn[j].weight.grad)
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
    gamma, beta, mean, var = (t[:, None, None] for t in block.mixed.bn.row(2))
    u = torch.clamp((z - mean) / (var + block.mixed.bn.eps).sqrt() * gamma + beta, 0, 6)
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


def bad_archs(space):
    """Architectures that do not fit `space` (tiny, m=2), each with what its ArchError must name."""
    ok = LayerChoice(3, (3,))
    n = len(space.layers)
    return [(Arch((ok,) * (n - 1)), "3 layers"), (Arch((ok,) * (n + 1)), "5 layers"),
            (Arch((LayerChoice(6, (3, 5, 7)),) + (ok,) * (n - 1)), "exceed"),
            (Arch((LayerChoice(6, (4,)),) + (ok,) * (n - 1)), "kernel 4"),
            (Arch((LayerChoice(4, (3,)),) + (ok,) * (n - 1)), "expansion 4"),
            ("|".join(["6:3,5"] * n) + "|", "layer 4")]


def entry_points(net, x):
    """Every call an architecture enters through, as arch -> call."""
    return {
        "forward": lambda arch: net(x, arch),
        "subnet": lambda arch: net.subnet(arch),
        "batchnorms": lambda arch: net.batchnorms(arch),
        "calibrate_bn": lambda arch: calibrate_bn(net, arch, [x]),
        "score_arch": lambda arch: score_arch(net, arch, lambda: [x], lambda: [(x, torch.zeros(len(x)))]),
    }


@pytest.mark.parametrize("layout", ["mixpath", "official"])
def test_arch_error_wherever_an_arch_enters(layout):
    s = get_space("tiny", max_paths=2)
    net = SuperNet(s, layout=layout)
    x = torch.randn(2, 3, 16, 16)
    for name, call in entry_points(net, x).items():
        for arch, match in bad_archs(s):
            with pytest.raises(ArchError, match=match):
                call(arch)
        with pytest.raises(ArchError, match="expected an Arch"):
            call(None)


def test_arch_strings_accepted_wherever_an_arch_is():
    s = get_space("tiny")
    torch.manual_seed(0)
    net = SuperNet(s)
    x = torch.randn(2, 3, 16, 16)
    text = "6:3,5|3:9|6:5,7,9|3:3,5,7,9"
    arch = s.parse(text)
    net.eval()
    results = {name: (call(text), call(arch)) for name, call in entry_points(net, x).items()}
    torch.testing.assert_close(*results["forward"])
    by_string, by_arch = results["subnet"]
    assert by_string.arch == by_arch.arch == arch
    assert [(id(m), j) for m, j in results["batchnorms"][0]] == [(id(m), j) for m, j in results["batchnorms"][1]]
    assert results["calibrate_bn"] == (1, 1) and results["score_arch"][0] == results["score_arch"][1]


def test_subnet_runs_only_its_own_arch():
    s = get_space("tiny")
    net = SuperNet(s)
    arch = s.parse("6:3,5|3:9|6:5|3:3")
    sub = net.subnet(arch)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(sub(x, str(arch)), sub(x))
    with pytest.raises(ArchError, match="runs 6:3,5"):
        sub(x, "6:3|3:9|6:5|3:3")
    with pytest.raises(ArchError, match="runs 6:3,5"):
        calibrate_bn(sub, s.largest(), [x])


# -- stand-alone networks trained from scratch ---------------------------------------------

@pytest.mark.parametrize("name", ["tiny", "cifar"])
@pytest.mark.parametrize("layout", ["mixpath", "official"])
def test_standalone_network(name, layout):
    s = get_space(name)
    arch = s.sample(random.Random(4))
    torch.manual_seed(0)
    net = standalone(s, str(arch), layout=layout)
    assert isinstance(net, SubNet) and net.arch == arch and net.layout == layout
    assert sum(p.numel() for p in net.parameters()) == s.params(arch, layout)
    # the same modules as a subnet taken from a supernet: exports and checkpoints treat both alike
    shapes = lambda module: {k: v.shape for k, v in module.state_dict().items()}  # noqa: E731
    assert shapes(net) == shapes(SuperNet(s, layout=layout).subnet(arch))
    assert all(sbn.num_shadows == 1 for sbn in net.modules() if isinstance(sbn, ShadowBatchNorm2d))
    side = 16 if name == "tiny" else 32
    x = torch.randn(2, 3, side, side)
    net.train()
    net(x).logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert calibrate_bn(net, None, [x]) == 1
    net.eval()
    assert net(x).shape == (2, s.num_classes)
    assert net.batchnorms()[0][0] is net.stem[1]


def test_standalone_rejects_bad_input():
    s = get_space("tiny", max_paths=2)
    for arch, match in bad_archs(s):
        with pytest.raises(ArchError, match=match):
            standalone(s, arch)
    with pytest.raises(ValueError, match="unknown layout"):
        standalone(s, "6:3|6:3|6:3|6:3", layout="fused")


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
    unused_row = sbn.rows[0].running_mean.clone()  # layer 0 uses 2 paths: row 1
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
    assert torch.equal(sbn.rows[0].running_mean, unused_row)
    assert sbn.rows[1].num_batches_tracked == 2
    with pytest.raises(ValueError, match="no batches"):
        calibrate_bn(net, arch, [])


# -- scoring -----------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["mixpath", "official"])
def test_score_arch_leaves_the_supernet_untouched(layout):
    s = get_space("tiny")
    torch.manual_seed(0)
    net = SuperNet(s, layout=layout)
    fill_bn_randomly(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    train = [torch.randn(8, 3, 16, 16, generator=gen) for _ in range(2)]
    val = [(torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen))]
    arch = s.parse("6:3,5|3:9|6:5,7,9|3:3,5,7,9")
    net.train()
    acc = score_arch(net, arch, lambda: train, lambda: val)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the score is that of the recalibrated arch: the same as scoring a stand-alone copy
    assert score_arch(net.subnet(arch), None, lambda: train, lambda: val) == acc
