"""benchmarks.ranking_study: the stratified sample, and the whole pipeline at a tiny budget (CI smoke run).

The smoke run checks that every step runs and every output is written and consistent, not the numbers.
"""
from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from benchmarks.ranking_study import SUPERNETS, main, stratified_archs
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
