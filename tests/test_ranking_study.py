"""benchmarks.ranking_study: the stratified sample, and the whole pipeline at a tiny budget (CI smoke run).

The smoke run checks that every step runs and every output is written and consistent, not the numbers.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from benchmarks.ranking_study import SUPERNETS, main, stratified_archs
from benchmarks.study_report import spread_ratio_ci
from mixpath.space import get_space


def test_stratified_archs_balance_path_counts():
    space = get_space("tiny", max_paths=3, kernel_sizes=(3, 5, 7), num_classes=10, input_size=16)
    archs = stratified_archs(space, 40, seed=1)
    assert len(set(archs)) == 40 and archs == stratified_archs(space, 40, seed=1)
    assert archs != stratified_archs(space, 40, seed=2)
    for layer in range(len(space.layers)):
        counts = Counter(len(a.layers[layer].kernels) for a in archs)
        assert sorted(counts) == [1, 2, 3] and max(counts.values()) - min(counts.values()) <= 1
    assert all(space.check(a) == a for a in archs)


def test_stratified_archs_refuses_a_too_small_space():
    space = get_space("tiny", max_paths=1, kernel_sizes=(3,), expansions=(3,), num_classes=10, input_size=16)
    with pytest.raises(ValueError, match="too few architectures"):
        stratified_archs(space, 2, seed=0)


def test_spread_ratio_interval_covers_the_truth_and_is_undefined_without_data():
    # 40 architectures of std 0.03 and 10 with 3 seeds of std 0.01: the true ratio is 3.
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(20):
        first = rng.normal(0.8, 0.03, 40)
        multi = [rng.normal(mean, 0.01, 3) for mean in rng.normal(0.8, 0.03, 10)]
        low, high = spread_ratio_ci(first, multi, n_resamples=400, seed=1)
        point = first.std(ddof=1) / np.sqrt(np.mean([v.var(ddof=1) for v in multi]))
        assert low < point < high
        hits += low <= 3 <= high
    assert hits >= 15  # a 95% interval: missing the truth 6 times in 20 would be very unlikely
    assert spread_ratio_ci(first, multi[:2], n_resamples=100) == [None, None]  # too few multi-seed archs
    assert spread_ratio_ci(first, [np.full(3, 0.8)] * 5, n_resamples=100) == [None, None]  # no seed spread


ORPHAN_CHECK = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from benchmarks.ranking_study import _start_worker

def pid_then_sleep():
    return os.getpid()

if __name__ == "__main__":
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_start_worker,
                             initargs=(sys.argv[1], os.getpid())) as pool:
        print(pool.submit(pid_then_sleep).result(), flush=True)
        pool.submit(time.sleep, 600).result()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to see the worker end")
def test_workers_end_when_the_study_is_killed(tmp_path):
    script = tmp_path / "study.py"
    script.write_text(ORPHAN_CHECK)
    root = Path(__file__).resolve().parents[1]
    study = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    worker = int(study.stdout.readline())
    assert _alive(worker)
    study.send_signal(signal.SIGKILL)  # no clean-up at all in the study's process
    study.wait()
    deadline = time.monotonic() + 20
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(worker), "the worker trains on as an orphan"


@pytest.mark.parametrize("args, words", [(["--val-size", "5000"], "val_size=5000 must hold out"),
                                         (["--archs", "500"], "too few architectures")])
def test_bad_options_end_in_one_line_and_write_nothing(tmp_path, args, words):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["--smoke", *args, "--out", str(out), "--results", str(tmp_path / "r"), "--doc", str(tmp_path / "S.md")])
    message = str(e.value.code)
    assert message.startswith("python -m benchmarks.ranking_study: error: ") and words in message
    assert "\n" not in message and not out.exists() and not (tmp_path / "r").exists()


def test_smoke_study_writes_everything_and_resumes(tmp_path):
    args = ["--smoke", "--out", str(tmp_path / "out"), "--results", str(tmp_path / "results"),
            "--doc", str(tmp_path / "STUDY.md")]
    assert main(args) == 0
    results = tmp_path / "results"
    with (results / "truth.csv").open(newline="") as f:
        truth = list(csv.DictReader(f))
    assert len(truth) == 4 and sorted(int(r["n"]) for r in truth) == [1, 1, 1, 2]
    with (results / "scores.csv").open(newline="") as f:
        scores = list(csv.DictReader(f))
    assert len(scores) == 4 * len(SUPERNETS)
    assert Counter(r["supernet"] for r in scores) == {name: 4 for name in SUPERNETS}
    assert {r["arch"] for r in scores} == {r["arch"] for r in truth}
    for name in ("curves.png", "ranking.png", "spread.png", "stats.png"):
        assert (results / name).read_bytes()[:4] == b"\x89PNG"
    study = json.loads((results / "study.json").read_text())
    assert set(study["ranking"]) == set(SUPERNETS) and set(study["shadow_minus_single"]) == {"mixpath", "official"}
    doc = (tmp_path / "STUDY.md").read_text()
    assert "## Verdicts at this scale" in doc and doc.count("- Claim 1, ") == len(SUPERNETS)
    # a second run finds every training and every rank/stats output finished and trains nothing again
    checkpoints = sorted((tmp_path / "out").rglob("last.pt"))
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    assert len(checkpoints) == len(SUPERNETS) + 5
    assert main(args) == 0
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps
