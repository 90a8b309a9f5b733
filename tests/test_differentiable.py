"""Differentiable search: the merged softmax kernel against separate convs on every backend, the confident
learning rate, partial channels, derivation, exact resume, and the errors for options of the other mode."""
from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F

from mixpath.checkpoint import CheckpointError, load_checkpoint
from mixpath.cli.common import read_arch
from mixpath.differentiable import (ArchitectureLogits, DifferentiableNet, arch_lr, channel_shuffle,
                                    collapse_stats, confidence, derive_arch, split_halves, train_differentiable)
from mixpath.differentiable.cli import add_differentiable_arguments, dispatch
from mixpath.nn import SuperNet
from mixpath.ops import available_backends, mixed_depthwise_bn
from mixpath.runs import open_run
from mixpath.space import get_space
from mixpath.training import ConfigError, TrainConfig, load_splits, train

# 8 px digits and a half-width supernet: an epoch takes about a second.
SMALL = dict(max_paths=2, kernels=[3, 5], width_mult=0.5, image_size=8, batch_size=64, calib_batches=2)


def quiet(_line):
    pass


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_softmax_merged_kernel_equals_weighted_separate_convs(backend, stride):
    """y, dx, every dW_k, d(logits), dgamma, dbeta and the running statistics, against float64 separate convs."""
    g = torch.Generator().manual_seed(0)
    C, kernels = 8, (3, 5, 7)
    x = torch.randn(4, C, 9, 9, generator=g)
    ws = [torch.randn(C, 1, k, k, generator=g) / k for k in kernels]
    alpha = torch.randn(len(kernels), generator=g)
    gamma, beta = 1 + 0.3 * torch.randn(C, generator=g), 0.2 * torch.randn(C, generator=g)
    dy = torch.randn(4, C, (9 - 1) // stride + 1, (9 - 1) // stride + 1, generator=g)

    def run(dtype, fused: bool):
        leaves = [t.clone().to(dtype).requires_grad_() for t in (x, *ws, alpha, gamma, beta)]
        xx, *ww, a, ga, be = leaves
        mean, var = torch.zeros(C, dtype=dtype), torch.ones(C, dtype=dtype)
        p = F.softmax(a, 0)
        if fused:
            y = mixed_depthwise_bn(xx, [w * pk for w, pk in zip(ww, p)], ga, be, mean, var, stride=stride,
                                   training=True, backend=backend)
        else:  # the DARTS way: one conv per kernel, weighted, summed; then BN and ReLU6
            z = sum(pk * F.conv2d(xx, w, stride=stride, padding=w.shape[-1] // 2, groups=C) for w, pk in zip(ww, p))
            y = F.relu6(F.batch_norm(z, mean, var, ga, be, True, 0.1, 1e-5))
        (y * dy.to(dtype)).sum().backward()
        return [y, mean, var] + [t.grad for t in leaves]

    got, truth = run(torch.float32, True), run(torch.float64, False)
    names = ["y", "running_mean", "running_var", "dx", "dW3", "dW5", "dW7", "dalpha", "dgamma", "dbeta"]
    for name, a, b in zip(names, got, truth):
        assert _relative(a, b) < 2e-5, (backend, name, _relative(a, b))
    assert got[names.index("dalpha")].abs().sum() > 0


@pytest.mark.parametrize("partial", [1, 2])
def test_network_fused_equals_literal_sum_with_logit_gradients(partial):
    """The whole differentiable network: one merged conv per layer vs separate convs, outputs and gradients."""
    space = get_space("tiny", max_paths=2, kernel_sizes=(3, 5, 7), expansions=(3, 6), width_mult=0.5,
                      num_classes=10, input_size=8)
    torch.manual_seed(0)
    outputs = []
    for literal in (False, True):
        torch.manual_seed(0)
        supernet = SuperNet(space, shadow_bn=False).double().set_backend("merged")  # float64: a PyTorch backend
        logits = ArchitectureLogits(space).double()
        with torch.no_grad():
            logits.kernels.normal_(generator=torch.Generator().manual_seed(1))
            logits.expansion.normal_(generator=torch.Generator().manual_seed(2))
        net = DifferentiableNet(supernet, logits, partial, literal=literal).train()
        x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        out = net(x)
        F.cross_entropy(out, torch.arange(6) % 10).backward()
        grads = {n: p.grad.clone() for n, p in list(supernet.named_parameters()) + list(logits.named_parameters())
                 if p.grad is not None}
        outputs.append((out.detach(), grads))
    (a, ga), (b, gb) = outputs
    assert torch.allclose(a, b, atol=1e-10)
    assert ga.keys() == gb.keys() and {"kernels", "expansion"} <= ga.keys()
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-9), name
    assert ga["kernels"].abs().min() > 0 and ga["expansion"].abs().min() > 0


def test_confident_learning_rate_schedule():
    assert confidence(0, 10, 2) == pytest.approx(0.01)
    assert confidence(4, 10, 2) == pytest.approx(0.25)
    assert confidence(9, 10, 2) == 1.0
    assert confidence(3, 10, 0) == 1.0
    assert arch_lr(3e-4, 1, 4, 2) == pytest.approx(3e-4 * 0.25)
    assert arch_lr(3e-4, 1, 4, 2, confident=False) == 3e-4
    with pytest.raises(ValueError):
        confidence(10, 10, 2)


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(8.0).reshape(1, 8, 1, 1).expand(2, 8, 3, 3)
    assert channel_shuffle(x, 4)[0, :, 0, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert channel_shuffle(x, 1).equal(x)


def test_partial_channels_shapes_and_gradients():
    """Only the first 1/K of the hidden channels pass the mixed conv: their kernels and BN row learn, the rest not."""
    space = get_space("tiny", max_paths=2, kernel_sizes=(3, 5), expansions=(3,), width_mult=0.5, num_classes=10,
                      input_size=8)
    torch.manual_seed(0)
    supernet = SuperNet(space, shadow_bn=False)
    net = DifferentiableNet(supernet, ArchitectureLogits(space), partial_channels=4).train()
    block = supernet.layers[0]["3"]  # stride 2: the bypass is pooled to the conv's output size
    assert block.stride == 2
    before = block.mixed.bn.rows[0].running_mean.clone()
    out = net(torch.randn(5, 3, 8, 8))
    assert out.shape == (5, 10)
    out.sum().backward()
    c = block.mixed.channels // 4
    for k in (3, 5):
        grad = block.mixed.weight[f"k{k}"].grad
        assert grad[:c].abs().sum() > 0 and grad[c:].abs().sum() == 0
    after = block.mixed.bn.rows[0].running_mean
    assert not torch.equal(after[:c], before[:c]) and torch.equal(after[c:], before[c:])
    assert net.logits.kernels.grad.abs().min() > 0
    with pytest.raises(ValueError, match="divide every hidden width"):
        DifferentiableNet(supernet, ArchitectureLogits(space), partial_channels=5)


def test_derivation_rules():
    space = get_space("tiny", max_paths=2, kernel_sizes=(3, 5, 7), expansions=(3, 6), num_classes=10, input_size=16)
    kernel_weights = [[0.5, 0.3, 0.2],  # two pass 0.25: both, largest first
                      [0.4, 0.35, 0.25],  # three would pass 0.2 below, at most m = 2 kept: the two largest
                      [0.2, 0.2, 0.6],  # one passes
                      [1 / 3, 1 / 3, 1 / 3]]  # none passes 0.34: the first of the tie alone
    expansion_weights = [[0.6, 0.4], [0.4, 0.6], [0.5, 0.5], [0.1, 0.9]]
    assert str(derive_arch(space, kernel_weights, expansion_weights, 0.25)) == "3:3,5|6:3,5|3:7|6:3,5"
    assert str(derive_arch(space, kernel_weights, expansion_weights, 0.34)) == "3:3|6:3,5|3:7|6:3"
    assert str(derive_arch(space, kernel_weights, expansion_weights, 0.2)) == "3:3,5|6:3,5|3:7|6:3,5"
    stats = collapse_stats([[1 / 3] * 3, [1.0, 0.0, 0.0]], [[0.5, 0.5], [0.0, 1.0]])
    assert stats["kernel_entropy"] == pytest.approx([math.log(3), 0.0])
    assert stats["expansion_entropy"] == pytest.approx([math.log(2), 0.0])
    assert stats["smallest_kernel_share"] == pytest.approx([1 / 3, 1.0])


def test_halves_split_the_training_split():
    splits = load_splits(TrainConfig(data="digits"))
    weights_half, arch_half = split_halves(splits.train, 2020)
    a, b = set(weights_half.indices.tolist()), set(arch_half.indices.tolist())
    assert not a & b and a | b == set(splits.train.indices.tolist())
    assert abs(len(a) - len(b)) <= 1
    assert torch.equal(split_halves(splits.train, 2020)[1].images, arch_half.images)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two epochs straight (a); one epoch, stop, resume (b). A large arch lr so that the logits really move."""
    root = tmp_path_factory.mktemp("diff")
    common = dict(epochs=2, arch_lr=0.05, partial_channels=2, **SMALL)
    straight = train_differentiable(dict(out=str(root / "a"), **common), log=quiet)
    stopped = train_differentiable(dict(out=str(root / "b"), stop_after=1, **common), log=quiet)
    resumed = train_differentiable(dict(resume=str(root / "b" / "last.pt")), log=quiet)
    return dict(root=root, straight=straight, stopped=stopped, resumed=resumed)


def _metrics(path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in path.read_text().splitlines()]


def test_resume_is_exact(runs):
    root = runs["root"]
    assert runs["stopped"]["stopped"]
    a, b = load_checkpoint(root / "a"), load_checkpoint(root / "b")
    for part in ("model", "arch_logits"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert a["arch_optimizer"]["state"][0]["exp_avg"].equal(b["arch_optimizer"]["state"][0]["exp_avg"])
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    history = _metrics(root / "a" / "metrics.jsonl")
    assert history == _metrics(root / "b" / "metrics.jsonl") and len(history) == 2
    assert runs["straight"]["derived_arch"] == runs["resumed"]["derived_arch"]
    assert runs["straight"]["val_acc"] == runs["resumed"]["val_acc"]
    # the logits moved away from uniform, and the confident rate grew as ((epoch + 1) / 2) ** 2
    assert a["arch_logits"]["kernels"].abs().max() > 1e-3
    assert [r["arch_lr"] for r in history] == pytest.approx([0.05 * 0.25, 0.05])


def test_summary_and_metrics_feed_retrain_export_and_search(runs):
    root, summary = runs["root"], runs["straight"]
    last = json.loads((root / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["derived_arch"] == last["derived_arch"]
    assert summary["kernel_weights"] == last["kernel_weights"]
    assert all(abs(sum(w) - 1) < 1e-6 for w in last["kernel_weights"] + last["expansion_weights"])
    for key in ("kernel_entropy", "expansion_entropy", "smallest_kernel_share"):
        assert len(last[key]) == 4
    assert (root / "a" / "weights.png").stat().st_size > 0
    assert read_arch(str(root / "a" / "summary.json"), None, None) == summary["derived_arch"]
    run = open_run(root / "a")  # the weights are an ordinary (single-BN-row) supernet
    assert run.scorer()(summary["derived_arch"]) == summary["val_acc"]


def test_resume_refuses_other_search_settings(runs):
    with pytest.raises(CheckpointError, match="partial-channels"):
        train_differentiable(dict(resume=str(runs["root"] / "b"), partial_channels=1), log=quiet)


def _parse(argv):
    p = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    p.add_argument("--resume")
    add_differentiable_arguments(p)
    return vars(p.parse_args(argv))


def test_cli_arguments():
    assert _parse(["--mode", "differentiable", "--arch-betas", "0.5,0.9", "--no-confident-lr",
                   "--partial-channels", "4"]) == dict(mode="differentiable", arch_betas=[0.5, 0.9],
                                                        confident_lr=False, partial_channels=4)
    assert _parse([]) == {}
    with pytest.raises(SystemExit):
        _parse(["--arch-betas", "0.5"])


@pytest.mark.parametrize("options, error, match", [
    (dict(partial_channels=2), ConfigError, "apply to --mode differentiable only"),
    (dict(mode="differentiable", eval_archs=3), ConfigError, "--eval-archs does not apply"),
    (dict(mode="differentiable", shadow_bn=True), ConfigError, "--shadow-bn/--no-shadow-bn does not apply"),
    (dict(mode="differentiable", arch="3:3|3:3|3:3|3:3"), ConfigError, "--arch does not apply"),
    (dict(mode="differentiable", layout="official"), ConfigError, "--layout official"),
    (dict(mode="differentiable", partial_channels=5), ConfigError, "--partial-channels 5 is out of range"),
    (dict(mode="differentiable", arch_betas=[0.5, 1.0]), ConfigError, "--arch-betas"),
    (dict(mode="differentiable", keep_threshold=1.0), ConfigError, "--keep-threshold"),
])
def test_errors_for_options_of_the_other_mode(options, error, match, tmp_path):
    with pytest.raises(error, match=match):
        dispatch({**SMALL, "epochs": 1, "out": str(tmp_path / "x"), **options})
    assert not (tmp_path / "x").exists()


def test_resume_keeps_the_runs_mode(runs, tmp_path):
    with pytest.raises(ConfigError, match="is a differentiable run"):
        dispatch(dict(resume=str(runs["root"] / "b"), mode="one-shot"))
    one_shot = tmp_path / "one"
    train(dict(epochs=1, out=str(one_shot), stop_after=1, eval_archs=1, **SMALL), log=quiet)
    with pytest.raises(CheckpointError, match="one-shot supernet run"):
        train_differentiable(dict(resume=str(one_shot)), log=quiet)
