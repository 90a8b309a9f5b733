"""mixpath.stats and `mixpath stats`: j-path sums against single paths, with known answers."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mixpath.cli import main
from mixpath.nn import SuperNet
from mixpath.runs import open_run
from mixpath.space import get_space
from mixpath.stats import _compare, feature_stats, initial_supernet, path_features
from mixpath.training import TrainConfig, train

SPACE = dict(max_paths=2, kernel_sizes=(3, 5), width_mult=0.25, num_classes=10, input_size=16)


def test_compare_known_answers():
    f = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    cos, ratio = _compare([f, f])  # identical paths: the sum is 2f
    assert cos == pytest.approx(1.0) and ratio == pytest.approx(2.0)
    cos, ratio = _compare([f, 3 * f])  # aligned, unequal norms: |4f| / mean(|f|, |3f|) = 2
    assert cos == pytest.approx(1.0) and ratio == pytest.approx(2.0)
    a = torch.zeros(1, 1, 1, 2, dtype=torch.float64)
    b = a.clone()
    a[..., 0], b[..., 1] = 1.0, 1.0  # orthogonal, equal norms: the independent-paths case
    cos, ratio = _compare([a, b])
    assert cos == pytest.approx(1 / math.sqrt(2)) and ratio == pytest.approx(math.sqrt(2))
    cos, ratio = _compare([f, -f])  # cancelling paths
    assert ratio == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("layout", ["mixpath", "official"])
def test_path_features_are_the_shadow_bn_input(layout):
    torch.manual_seed(0)
    space = get_space("tiny", **SPACE)
    block = SuperNet(space, layout=layout).layers[1]["6"].train()
    x = torch.randn(8, space.layers[1].in_channels, 8, 8)
    total = sum(path_features(block, x, (3, 5)))
    with torch.no_grad():
        hidden = block.expand(x)
        if layout == "mixpath":  # the fused layer is Shadow BN row 2 of the summed paths, then ReLU6
            gamma, beta, _, _ = block.mixed.bn.row(2)
            expected_out = block.mixed(hidden, (3, 5))
            got_out = F.relu6(F.batch_norm(total, None, None, gamma, beta, True, 0.0, block.mixed.bn.eps))
            torch.testing.assert_close(got_out, expected_out, rtol=1e-4, atol=1e-5)
        else:  # the projection of the summed per-path outputs
            torch.testing.assert_close(total, block.project(block.mixed(hidden, (3, 5))), rtol=1e-4, atol=1e-5)


def test_feature_stats_rows_and_no_side_effects():
    torch.manual_seed(0)
    space = get_space("tiny", **SPACE)
    net = SuperNet(space).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rows = feature_stats(net, torch.randn(16, 3, 16, 16), "3:3|6:3,5|3:5|6:3")
    assert [(r["layer"], r["j"]) for r in rows] == [(i, j) for i in range(4) for j in (1, 2)]
    for r in rows:
        if r["j"] == 1:  # a single path against itself
            assert r["cosine"] == pytest.approx(1.0) and r["norm_ratio"] == pytest.approx(1.0)
            assert r["subsets"] == 4  # 2 kernels x 2 expansions
        else:
            assert 0 < r["cosine"] < 1 and 0 < r["norm_ratio"] < 2 and r["subsets"] == 2
    assert not net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("stats") / "supernet"
    train(TrainConfig(epochs=1, max_paths=2, kernels=[3, 5], width_mult=0.25, batch_size=64, eval_archs=1,
                      calib_batches=2, out=str(out)), log=lambda _: None)
    return out


def test_initial_supernet_is_the_run_start(trained):
    run = open_run(trained)
    state = torch.get_rng_state()
    net = initial_supernet(run)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    torch.manual_seed(run.config["seed"])
    fresh = SuperNet(run.space, layout=run.config["layout"], shadow_bn=run.config["shadow_bn"])
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), fresh.state_dict().values()))
    trained_weights = run.supernet.state_dict()
    assert any(not torch.equal(v, trained_weights[k]) for k, v in net.state_dict().items())


def test_stats_command_writes_and_refuses_overwrite(trained, tmp_path, capsys):
    out = tmp_path / "stats"
    assert main(["stats", str(trained), "--out", str(out), "--images", "32"]) == 0
    report = json.loads((out / "stats.json").read_text())
    assert report["images"] == 32 and report["layout"] == "mixpath" and report["epoch"] == 1
    assert len(report["initial"]) == len(report["trained"]) == 4 * 2
    assert report["initial"] != report["trained"]
    assert (out / "stats.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["stats", str(trained), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["stats", str(trained), "--out", str(out), "--images", "1"]) == 2
