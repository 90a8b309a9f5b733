"""No result is ever lost: finished runs, concurrent jobs, killed writes, full disks, interrupts, umask."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mixpath.checkpoint as checkpoint_module
from mixpath.checkpoint import atomic_write, load_checkpoint
from mixpath.cli.train import main
from mixpath.outdir import OutputError, OutputFolder
from mixpath.training import TrainConfig, TrainingError, Run, train
from tiny_runs import SMALL, SMALL_ARGS, quiet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch run: copy it before changing it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    summary = train(TrainConfig(epochs=1, out=str(out), **SMALL), log=quiet)
    return out, summary


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run of two epochs stopped after the first: copy it before changing it."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    train(TrainConfig(epochs=2, stop_after=1, out=str(out), **SMALL), log=quiet)
    return out, None


def _copy(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    return out


def test_resume_of_a_finished_run_keeps_its_summary(finished, tmp_path):
    out = _copy(finished, tmp_path)
    before = (out / "summary.json").read_bytes()
    again = train(TrainConfig(resume=str(out), eval_archs=1), log=quiet)
    assert (out / "summary.json").read_bytes() == before
    second = json.loads((out / "summary.2.json").read_text())
    assert second == json.loads(json.dumps(again)) and len(second["archs"]) == 1
    train(TrainConfig(resume=str(out), eval_archs=1), log=quiet)
    assert (out / "summary.3.json").exists() and (out / "summary.json").read_bytes() == before


def test_a_second_job_on_the_same_folder_is_refused(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    with OutputFolder(out):
        status = main(["--resume", str(out), "--eval-archs", "1"], prog="train.py")
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "in use by another job" in err[0], err
    assert not (out / "summary.2.json").exists()


def test_a_dead_job_leaves_no_stuck_lock(tmp_path):
    out = tmp_path / "held"
    code = ("import sys, time; from mixpath.outdir import OutputFolder\n"
            f"f = OutputFolder({str(out)!r}).__enter__(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"pid {holder.pid}"):
            OutputFolder(out).__enter__()
    finally:
        holder.kill()
        holder.wait()
    with OutputFolder(out):  # the kernel dropped the dead process's lock
        pass


def test_orphaned_temporary_files_are_removed_at_the_next_start(finished, tmp_path):
    out = _copy(finished, tmp_path)
    orphan = out / ".last.pt.abc123.tmp"
    orphan.write_bytes(b"half a checkpoint")
    train(TrainConfig(resume=str(out), eval_archs=1), log=quiet)
    assert not orphan.exists() and not list(out.glob(".*.tmp"))


def test_a_full_disk_says_so_in_one_line_and_keeps_the_last_checkpoint(stopped, tmp_path, monkeypatch, capsys):
    out = _copy(stopped, tmp_path)
    before = (out / "last.pt").read_bytes()

    def full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "last.pt"))

    monkeypatch.setattr(checkpoint_module.torch, "save", full)
    status = main(["--resume", str(out)], prog="train.py")
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and err[0].startswith("train.py: error: no space left on the device")
    assert (out / "last.pt").read_bytes() == before and not list(out.glob(".*.tmp"))


def test_interrupt_before_the_first_checkpoint_leaves_nothing(tmp_path, monkeypatch, capsys):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Run, "train_epoch", interrupted)
    out = tmp_path / "new"
    assert main(["--out", str(out), *SMALL_ARGS], prog="train.py") == 130
    assert "nothing to resume" in capsys.readouterr().err
    assert not out.exists()


def test_a_run_that_fails_in_its_first_epoch_leaves_no_folder(tmp_path, monkeypatch):
    def diverged(self):
        raise TrainingError("training diverged in epoch 1")

    monkeypatch.setattr(Run, "train_epoch", diverged)
    with pytest.raises(TrainingError):
        train(TrainConfig(out=str(tmp_path / "new"), **SMALL), log=quiet)
    assert not (tmp_path / "new").exists()


def test_sigterm_ends_like_ctrl_c_with_a_message(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--out", str(out), "--epochs", "50",
                            *SMALL_ARGS], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() and time.time() < deadline and job.poll() is None:
            time.sleep(0.2)
        assert (out / "metrics.jsonl").exists(), "the first epoch did not finish in time"
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode == 143, err
    assert "terminated (SIGTERM)" in err and f"--resume {out / 'last.pt'}" in err and "Traceback" not in err
    assert load_checkpoint(out)["epoch"] >= 1


def test_files_follow_the_umask(tmp_path, monkeypatch, finished):
    monkeypatch.setattr(checkpoint_module, "_UMASK", 0o027)
    atomic_write(tmp_path / "x.json", lambda f: f.write("{}"), binary=False)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o640
    mask = os.umask(0)
    os.umask(mask)
    for name in ("last.pt", "summary.json", "metrics.jsonl"):
        assert stat.S_IMODE((finished[0] / name).stat().st_mode) == 0o666 & ~mask, name


def test_a_resume_with_another_thread_count_says_it_changes_rounding(finished, tmp_path):
    out = _copy(finished, tmp_path)
    lines = []
    train(TrainConfig(resume=str(out), threads=2, eval_archs=1), log=lines.append)
    assert any("--threads 2 (was 1)" in line and "not be bit-identical" in line for line in lines), lines


def test_force_replaces_a_run_and_the_refusal_says_how(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    assert main(["--out", str(out), *SMALL_ARGS], prog="train.py") == 2
    assert "--resume" in capsys.readouterr().err
    (out / "last.pt").unlink()
    assert main(["--out", str(out), *SMALL_ARGS], prog="train.py") == 2
    assert "--force" in capsys.readouterr().err
    train(TrainConfig(out=str(out), force=True, epochs=1, seed=7, **SMALL), log=quiet)
    assert json.loads((out / "summary.json").read_text())["config"]["seed"] == 7
    assert torch.load(out / "last.pt", weights_only=True)["config"]["seed"] == 7
