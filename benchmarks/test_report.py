"""The report's bookkeeping on made-up timings: ratios, goals, the RESULTS.md section, CSV and plot.

Made-up rows let the GPU report's code run here, where no GPU is.
"""
import argparse
import csv

import pytest

from . import report
from .cases import op_cases
from .e2e import e2e_backends
from .op_workload import COMPILE

# fwd+bwd milliseconds per backend: fused 6x over reference, 2.5x over torch.compile
TIMES = {"reference": 6.0, "merged": 3.0, "triton": 1.0, COMPILE: 2.5}


def fake_rows(device):
    rows = []
    for case in op_cases(device, "quick")[:6]:
        base = report.case_columns(case, copy_bw=3e12, fma=25e12)
        for backend, ms in TIMES.items():
            act = 3.0 if backend in ("reference", COMPILE) else 0.9
            rows.append({"device": device, **base, "backend": backend, "agrees": True, "problems": "",
                         "first_call_s": 0.1, "fwd_ms": ms / 3, "bwd_ms": 2 * ms / 3, "fwdbwd_ms": ms,
                         "fwdbwd_min_ms": 0.8 * ms,
                         "act_MiB": act, "peak_MiB": 2 * act if device == "cuda" else ""})
    report.add_ratios(rows)
    return rows


def test_ratios():
    rows = fake_rows("cuda")
    triton = next(r for r in rows if r["backend"] == "triton")
    assert triton["x_ref_fwdbwd"] == pytest.approx(6.0)
    assert triton["x_merged_fwdbwd"] == pytest.approx(3.0)
    assert triton["x_compile_fwdbwd"] == pytest.approx(2.5)
    assert triton["x_ref_fwdbwd_min"] == pytest.approx(6.0)
    assert triton["pct_floor_fwdbwd"] == pytest.approx(100 * triton["floor_fwdbwd_ms"] / 1.0)


def test_gpu_goals_and_section(tmp_path):
    rows = fake_rows("cuda")
    without, fused = e2e_backends("cuda")
    e2e_rows = [{"config": "cifar_b256_r32_bf16", "backend": b, "steps_per_s": s, "space": "cifar", "batch": 256,
                 "resolution": 32, "dtype": "bf16", "warmup": 3, "steps": 10, "x_reference": s, "act_MiB": 1.0,
                 "peak_MiB": 2.0} for b, s in ((without, 1.0), (fused, 1.5))]
    lines = report.goals(rows, e2e_rows, "cuda")
    text = "\n".join(lines)
    assert "triton vs reference fwd+bwd fp32 m=1: 6.00x (goal ≥ 5.00x): met" in text
    assert "triton vs torch.compile(reference) fwd+bwd fp32 m=1: 2.50x (goal ≥ 2.00x): met" in text
    assert "triton activation memory / reference's fp32: 0.300 (goal ≤ 0.333): met" in text
    assert "1.50x train steps/s (goal ≥ 2x): missed by 0.50x" in text
    assert "cuda goals: not measured" in text  # the cuda backend has no rows here
    args = argparse.Namespace(quick=True, compile="first-shape", no_e2e=False)
    body = report.section("cuda", {"GPU": "made up"}, args, 3e12, 25e12, rows, e2e_rows, lines, {})
    assert "## GPU (CUDA)" in body and "peak MiB" in body
    report.plot(tmp_path / "speedups.png", rows, "cuda")
    assert (tmp_path / "speedups.png").stat().st_size > 0


def test_missed_goal_says_by_how_much():
    rows = fake_rows("cpu")
    for r in rows:
        if r["backend"] == "merged":
            r["fwdbwd_ms"] = 2.0
    report.add_ratios(rows)
    # no cpp rows: the CPU goal reports the backend as unmeasured, with the reason
    assert any(line.startswith("cpp goals: not measured") for line in report.goals(rows, [], "cpu"))
    for r in rows:
        if r["backend"] == "triton":
            r["backend"] = "cpp"
    line = next(x for x in report.goals(rows, [], "cpu") if x.startswith("cpp vs merged fwd+bwd fp32 m=1"))
    assert line.startswith("cpp vs merged fwd+bwd fp32 m=1: 2.00x (goal ≥ 3.00x): missed by 1.00x")
    assert "from fastest rounds 3.00x" in line


def test_results_sections_replace_their_own_device(tmp_path):
    path = tmp_path / "RESULTS.md"
    report.update_results("## CPU\nfirst", "cpu", path)
    report.update_results("## GPU (CUDA)\nplaceholder", "cuda", path)
    report.update_results("## CPU\nsecond", "cpu", path)
    text = path.read_text()
    assert "second" in text and "first" not in text and "placeholder" in text
    assert text.startswith("# Benchmark results")
    assert text.count("section:cpu begin") == 1


def test_csv_round_trip(tmp_path):
    rows = fake_rows("cpu")
    report.write_csv(tmp_path / "r.csv", rows)
    read = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(read) == len(rows) and float(read[0]["fwdbwd_ms"]) == rows[0]["fwdbwd_ms"]
