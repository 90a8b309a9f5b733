"""The training stack: exact resume, summary contents, and the CLI's one-line errors that write nothing."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from mixpath.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mixpath.cli.train import main
from mixpath.training import ConfigError, TrainConfig, train
from tiny_runs import SMALL, SMALL_ARGS, quiet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two epochs straight (a), and one epoch, stop, resume (b)."""
    root = tmp_path_factory.mktemp("runs")
    straight = train(TrainConfig(epochs=2, out=str(root / "a"), **SMALL), log=quiet)
    stopped = train(TrainConfig(epochs=2, out=str(root / "b"), stop_after=1, **SMALL), log=quiet)
    stopped_files = sorted(p.name for p in (root / "b").iterdir())
    resumed = train(TrainConfig(resume=str(root / "b" / "last.pt")), log=quiet)
    return dict(root=root, straight=straight, stopped=stopped, stopped_files=stopped_files, resumed=resumed)


def _metrics(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in rows]


def test_resume_is_bit_identical(runs):
    root = runs["root"]
    assert runs["stopped"]["stopped"] and runs["stopped"]["epoch"] == 1
    assert "summary.json" not in runs["stopped_files"] and "last.pt" in runs["stopped_files"]
    a, b = load_checkpoint(root / "a" / "last.pt"), load_checkpoint(root / "b")
    assert a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["sampler"] == b["sampler"]
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    assert _metrics(root / "a" / "metrics.jsonl") == _metrics(root / "b" / "metrics.jsonl")
    assert len(_metrics(root / "a" / "metrics.jsonl")) == 2
    assert runs["straight"]["val_acc_per_arch"] == runs["resumed"]["val_acc_per_arch"]


def test_fresh_clutter_is_the_recipe_and_resumes_bit_identically(tmp_path):
    # cluttered-digits' augmentation draws new canvases from (seed, epoch) alone: a resumed run sees the same.
    opts = dict(SMALL, data="cluttered-digits", image_size=16, eval_archs=1)
    train(TrainConfig(epochs=2, out=str(tmp_path / "a"), **opts), log=quiet)
    train(TrainConfig(epochs=2, out=str(tmp_path / "b"), stop_after=1, **opts), log=quiet)
    train(TrainConfig(resume=str(tmp_path / "b" / "last.pt")), log=quiet)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["config"]["augment"] is True and a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert _metrics(tmp_path / "a" / "metrics.jsonl") == _metrics(tmp_path / "b" / "metrics.jsonl")


def test_summary_fields(runs):
    path = runs["root"] / "a" / "summary.json"
    s = json.loads(path.read_text())
    assert s == json.loads(json.dumps(runs["straight"]))
    assert len(s["val_acc_per_arch"]) == 2 and all(0 <= v <= 1 for v in s["val_acc_per_arch"].values())
    assert s["val_acc"] == pytest.approx(sum(s["val_acc_per_arch"].values()) / 2)
    assert s["val_acc"] > 0.15  # two epochs of a tiny supernet already beat chance (0.1)
    assert s["epochs"] == 2 and s["seconds"] > 0
    assert (s["backend"], s["device"], s["layout"], s["shadow_bn"]) == ("merged", "cpu", "mixpath", True)
    assert s["space"]["name"] == "tiny" and s["space"]["max_paths"] == 2
    assert s["config"]["lr"] == 0.05 and s["config"]["seed"] == 2020 and s["config"]["epochs"] == 2
    assert all(r["flops"] > 0 and r["params"] > 0 for r in s["archs"])
    epochs = [json.loads(line) for line in (runs["root"] / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert {"train_loss", "train_acc", "lr", "seconds", "val_acc", "val_arch"} <= set(epochs[0])
    assert epochs[1]["lr"] < epochs[0]["lr"]  # the cosine schedule


def test_checkpoint_load_refuses_bad_files(tmp_path, runs):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    truncated = tmp_path / "truncated.pt"
    good = (runs["root"] / "a" / "last.pt").read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    for path, words in ((garbage, "corrupt"), (truncated, "corrupt"), (other, "not a mixpath training checkpoint"),
                        (tmp_path / "missing.pt", "does not exist")):
        with pytest.raises(CheckpointError, match=words):
            load_checkpoint(path)
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint(tmp_path / "x.pt", {"epoch": 1})
    assert not (tmp_path / "x.pt").exists() and not list(tmp_path.glob(".x.pt*"))


def test_resume_refuses_other_config(runs):
    ckpt = runs["root"] / "a" / "last.pt"
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match=r"--lr 0\.05 there, 0\.1 now.*--seed 2020 there, 1 now"):
        train(TrainConfig(resume=str(ckpt), lr=0.1, seed=1), log=quiet)
    with pytest.raises(ConfigError, match="--epochs"):
        train(TrainConfig(epochs=0), log=quiet)
    assert ckpt.read_bytes() == before


# ---------------------------------------------------------------- the CLI's error paths

def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.fixture
def bad_inputs(tmp_path, runs):
    """Every bad-input case: name -> (arguments, words the one error line must contain)."""
    held = tmp_path / "held"  # a finished run, to refuse as a fresh --out and to resume with other settings
    shutil.copytree(runs["root"] / "a", held)
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint\xff" * 100)
    data = (held / "last.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 3])
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cifar / name).write_bytes(b"this is not a pickle")
    fresh = str(tmp_path / "fresh")  # no failing run may create it
    cases = {
        "missing data dir": (["--data", "cifar10", "--data-dir", str(tmp_path / "nope")], "does not exist"),
        "malformed cifar": (["--data", "cifar10", "--data-dir", str(cifar)], "cannot be unpickled"),
        "bad arch": (["--eval-arch", "6:3|6:11|3:3|3:3", *SMALL_ARGS], "--eval-arch"),
        "short arch": (["--eval-arch", "6:3", *SMALL_ARGS], "layers"),
        "garbage checkpoint": (["--resume", str(tmp_path / "garbage.pt")], "corrupt"),
        "truncated checkpoint": (["--resume", str(tmp_path / "truncated.pt")], "corrupt"),
        "missing checkpoint": (["--resume", str(tmp_path / "none.pt")], "does not exist"),
        "other config": (["--resume", str(held / "last.pt"), "--lr", "0.3", "--max-paths", "1"],
                         "--lr 0.05 there, 0.3 now"),
        "unknown backend": (["--backend", "warp"], "unknown"),
        "unavailable backend": (["--backend", "cuda"], "cannot run on cpu"),
        "max paths": (["--max-paths", "9"], "--max-paths"),
        "zero epochs": (["--epochs", "0"], "--epochs"),
        "negative lr": (["--lr", "-0.1"], "--lr"),
        "huge batch": (["--batch-size", "100000"], "--batch-size"),
        "held out dir": (["--out", str(held)], "already holds a run"),
        "bad kernels": (["--kernels", "3,x"], "--kernels"),
        "fused and backend": (["--fused", "--backend", "merged"], "not allowed with"),
        "bad device": (["--device", "gpu0"], "not a device"),
    }
    if not torch.cuda.is_available():
        cases["no cuda"] = (["--device", "cuda"], "no CUDA GPU")
    cases = {name: (args if "--out" in args or "--resume" in args else [*args, "--out", fresh], words)
             for name, (args, words) in cases.items()}
    before = _snapshot(held)
    yield cases
    assert not Path(fresh).exists() and not (tmp_path / "runs").exists()
    assert _snapshot(held) == before


def _check(name: str, status: int, stderr: str, words: str) -> None:
    lines = stderr.strip().splitlines()
    assert status == 2, (name, status, stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, (name, stderr)
    assert lines[0].startswith("train.py: error: ") and words in lines[0], (name, lines[0])


def test_cli_errors_in_process(bad_inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, (args, words) in bad_inputs.items():
        try:
            status = main(args, prog="train.py")
        except SystemExit as e:  # argparse's own errors
            status = e.code
        _check(name, status, capsys.readouterr().err, words)


# A few cases as real processes too: the exit status and stderr a user sees, no traceback anywhere
# (a few only: each process spends seconds importing torch).
AS_PROCESS = ("truncated checkpoint", "other config", "bad kernels", "no cuda")


def test_cli_errors_as_processes(bad_inputs, tmp_path):
    names = [n for n in AS_PROCESS if n in bad_inputs]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda n: _cli(bad_inputs[n][0], tmp_path), names))
    for name, r in zip(names, results):
        _check(name, r.returncode, r.stderr, bad_inputs[name][1])
