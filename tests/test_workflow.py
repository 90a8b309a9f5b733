"""The NAS job end to end on digits and the tiny space: train, search, retrain, export, rank, one command each."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mixpath.cli import main
from mixpath.runs import TrainedRun, open_retrained, open_run
from mixpath.training import TrainConfig, train

SMALL = dict(max_paths=2, kernels=[3, 5], width_mult=0.5, batch_size=64, eval_archs=1, calib_batches=2)
RETRAIN = ["--epochs", "1", "--batch-size", "64"]


def quiet(_line):
    pass


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """One pass of the whole job; each step's folder, for the tests to read."""
    root = tmp_path_factory.mktemp("job")
    train(TrainConfig(epochs=1, out=str(root / "supernet"), **SMALL), log=quiet)
    steps = {
        "search": ["search", str(root / "supernet"), "--out", str(root / "search"), "--population", "4",
                   "--generations", "2", "--seed", "3"],
        "retrain": ["retrain", "--from-front", str(root / "search" / "front.json"), "--pick", "0", *RETRAIN,
                    "--out", str(root / "retrain")],
        "export": ["export", "--from", str(root / "retrain"), "--out", str(root / "model.pt2")],
    }
    status = {name: main(args) for name, args in steps.items()}
    evaluated = [json.loads(line) for line in (root / "search" / "evaluated.jsonl").read_text().splitlines()]
    truth = root / "truth.csv"  # three archs the search scored, with made-up stand-alone accuracies
    truth.write_text("arch,accuracy\n" + "".join(f'"{e["arch"]}",{0.5 + 0.1 * i}\n'
                                                 for i, e in enumerate(evaluated[:3])))
    status["rank"] = main(["rank", str(root / "supernet"), "--truth", str(truth), "--out", str(root / "rank"),
                           "--bootstrap", "200"])
    return root, status


def test_every_step_succeeds_and_writes_its_outputs(job):
    root, status = job
    assert status == {"search": 0, "retrain": 0, "export": 0, "rank": 0}
    for name in ("evaluated.jsonl", "front.json", "front.csv", "pareto.png", "search.json"):
        assert (root / "search" / name).stat().st_size > 0, name
    assert {"ranking.json", "ranking.png", "scores.csv"} <= {p.name for p in (root / "rank").iterdir()}
    assert (root / "model.pt2").is_file() and (root / "model.json").is_file()


def test_search_front_and_log(job):
    root, _ = job
    front = json.loads((root / "search" / "front.json").read_text())
    evaluated = [json.loads(line) for line in (root / "search" / "evaluated.jsonl").read_text().splitlines()]
    settings = json.loads((root / "search" / "search.json").read_text())
    assert isinstance(front, list) and front
    assert all(set(e) >= {"arch", "acc", "flops", "params", "latency"} and e["latency"] is None for e in front)
    assert settings["n_scored"] == len(evaluated) and settings["strategy"] == "nsga2"
    scored = {e["arch"]: e["acc"] for e in evaluated}
    assert all(scored[e["arch"]] == e["acc"] for e in front)
    # non-dominated: no scored arch has both higher accuracy and fewer FLOPs than a front member
    for f in front:
        assert not any(e["acc"] > f["acc"] and e["flops"] < f["flops"] for e in evaluated)


def test_retrain_summary_is_the_fronts_first_arch(job):
    root, _ = job
    first = json.loads((root / "search" / "front.json").read_text())[0]["arch"]
    summary = json.loads((root / "retrain" / "summary.json").read_text())
    assert summary["arch"] == first and summary["epochs"] == 1 and summary["seed"] == 2020
    assert {"val_acc", "test_acc", "flops", "params", "seconds"} <= set(summary)
    # the retrained network is the supernet's subnet shape: same space (width 0.5, kernels 3,5) via search.json
    net, _, space, config = open_retrained(root / "retrain")
    assert config["width_mult"] == 0.5 and space.kernel_sizes == (3, 5)
    assert sum(p.numel() for p in net.parameters()) == summary["params"]


def test_exported_model_runs_without_mixpath(job):
    root, _ = job
    net, splits, _, _ = open_retrained(root / "retrain")
    x = torch.randn(5, 3, splits.image_size, splits.image_size)
    torch.save(x, root / "x.pt")
    code = ("import sys, torch\n"
            f"m = torch.export.load({str(root / 'model.pt2')!r}).module()\n"
            f"y = m(torch.load({str(root / 'x.pt')!r}))\n"
            "assert 'mixpath' not in sys.modules\n"
            f"torch.save(y, {str(root / 'y.pt')!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, cwd=root)
    with torch.no_grad():
        expected = net.eval()(x)
    torch.testing.assert_close(torch.load(root / "y.pt"), expected, rtol=1e-4, atol=1e-5)
    meta = json.loads((root / "model.json").read_text())
    assert meta["input_size"] == splits.image_size and meta["num_classes"] == 10 and len(meta["mean"]) == 3


def test_rank_report(job):
    root, _ = job
    report = json.loads((root / "rank" / "ranking.json").read_text())
    assert report["n"] == 3
    for key in ("kendall_tau", "tau_ci95", "spearman", "top_k_overlap", "before_recalibration"):
        assert key in report, key
    rows = (root / "rank" / "scores.csv").read_text().splitlines()
    assert rows[0] == "arch,standalone,acc_before,acc_after" and len(rows) == 4


def test_scoring_never_changes_the_supernet(job):
    root, _ = job
    run = open_run(root / "supernet")
    before = {k: v.clone() for k, v in run.supernet.state_dict().items()}
    score = run.scorer()
    first = json.loads((root / "search" / "front.json").read_text())[0]["arch"]
    assert score(first) == score(first)
    assert all(torch.equal(before[k], v) for k, v in run.supernet.state_dict().items())


def test_a_killed_search_resumes_without_rescoring(job, tmp_path, monkeypatch):
    root, _ = job
    args = ["search", str(root / "supernet"), "--population", "4", "--generations", "2", "--seed", "3"]
    calls = []
    original = TrainedRun.scorer

    def counting(self, **kw):
        score = original(self, **kw)

        def wrapped(arch):
            if kill_after is not None and len(calls) == kill_after:
                raise KeyboardInterrupt
            calls.append(str(arch))
            return score(arch)
        return wrapped

    monkeypatch.setattr(TrainedRun, "scorer", counting)
    kill_after = 3
    assert main([*args, "--out", str(tmp_path / "s")]) == 130
    assert len((tmp_path / "s" / "evaluated.jsonl").read_text().splitlines()) == 3
    assert main([*args, "--out", str(tmp_path / "s")]) == 2  # an existing search needs --resume
    kill_after = None
    assert main([*args, "--out", str(tmp_path / "s"), "--resume"]) == 0
    assert len(calls) == len(set(calls))  # nothing scored twice
    fresh = json.loads((root / "search" / "front.json").read_text())
    assert json.loads((tmp_path / "s" / "front.json").read_text()) == fresh


def _one_line_error(capsys, status, words, prog):
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, (status, err)
    assert err[0].startswith(f"{prog}: error: ") and words in err[0], err[0]


@pytest.mark.parametrize("args, words", [
    (["search", "{tmp}/nope", "--out", "{tmp}/s"], "does not exist"),
    (["search", "{sup}", "--out", "{tmp}/s", "--objectives", "acc,speed"], "speed"),
    (["search", "{sup}", "--out", "{tmp}/s", "--max-flops", "10"], "flops"),
    (["search", "{sup}", "--out", "{tmp}/s", "--population", "1"], "--population"),
    (["search", "{sup}", "--out", "{search}"], "--resume"),
    (["retrain", "6:3|3:3", *RETRAIN, "--out", "{tmp}/r"], "layers"),
    (["retrain", "6:3|3:3|6:3|6:4", *RETRAIN, "--out", "{tmp}/r"], "kernel 4"),
    (["retrain", "--from-front", "{search}/front.json", "--out", "{tmp}/r"], "--pick"),
    (["retrain", "--from-front", "{search}/front.json", "--pick", "99", "--out", "{tmp}/r"], "out of range"),
    (["retrain", *RETRAIN, "--out", "{tmp}/r"], "no architecture"),
    (["rank", "{sup}", "--truth", "{tmp}/none.csv", "--out", "{tmp}/k"], "none.csv"),
    (["rank", "--out", "{tmp}/k"], "--truth"),
    (["rank", "{sup}", "--collect", "{retrain}", "--out", "{tmp}/t.csv"], "drop RUN"),
    (["export", "--from", "{sup}", "--out", "{tmp}/m.pt2"], "give the ARCH"),
    (["export", "6:3|3:3|6:3|6:3", "--from", "{sup}", "--out", "{tmp}/m.onnx"], ".pt2"),
    (["export", "--from", "{retrain}", "--out", "{root}/model.pt2"], "overwrite"),
])
def test_each_subcommand_refuses_bad_input_in_one_line(job, tmp_path, capsys, args, words):
    root, _ = job
    places = dict(tmp=tmp_path, root=root, sup=root / "supernet", search=root / "search", retrain=root / "retrain")
    status = main([a.format(**places) for a in args])
    _one_line_error(capsys, status, words, f"mixpath {args[0]}")
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists() and not (tmp_path / "k").exists()


def test_every_subcommand_has_help():
    for name in ("train", "search", "retrain", "rank", "export"):
        r = subprocess.run([sys.executable, "-m", "mixpath", name, "--help"], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and "usage: mixpath " + name in r.stdout, r.stderr
