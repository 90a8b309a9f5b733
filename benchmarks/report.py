"""Measure every backend on every case and write the results: `python -m benchmarks.report`.

    python -m benchmarks.report [--device cpu|cuda] [--quick] [--compile first-shape|all|none] [--no-e2e]

Writes, for the device: benchmarks/results_<device>.csv (one row per case and
backend), benchmarks/e2e_<device>.csv, benchmarks/speedups_<device>.png, and
its own section of benchmarks/RESULTS.md (an older section for the same device
is replaced, other sections are kept). Prints the goals, met or missed by how
much. Exits 1 when a backend disagrees with the reference.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import platform
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import torch

from mixpath.ops import backend_status
from mixpath.ops.testing import compare_backend

from . import roofline
from .cases import PHASES, agreement_case, case_label, device_type, first_shape_only, op_cases
from .e2e import e2e_backends, e2e_configs, run_e2e
from .op_workload import COMPILE, LABELS, OpWorkload, compile_mode, skip_reason, timed_backends
from .timing import activation_bytes, copy_bandwidth, cuda_peak_bytes, fma_rate, measure

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
# per device type and scale: timer settings (warm-up calls, timed rounds, seconds of timed calls per phase);
# at least 3 rounds, so every figure is a median even for the slowest calls
TIMER = {"cpu": {"full": dict(warmup=1, min_rounds=3, max_rounds=10, budget_s=1.0),
                 "quick": dict(warmup=1, min_rounds=3, max_rounds=5, budget_s=0.3)},
         "cuda": {"full": dict(warmup=3, min_rounds=10, max_rounds=30, budget_s=0.3),
                  "quick": dict(warmup=2, min_rounds=5, max_rounds=10, budget_s=0.1)}}
FUSED = {"cpu": ("cpp",), "cuda": ("triton", "cuda")}
# speed goals per device type: (baseline, its forward+backward speed-up column, goal)
SPEED_GOALS = {"cpu": [("merged", "x_merged_fwdbwd", 3.0)],
               "cuda": [("reference", "x_ref_fwdbwd", 5.0), ("torch.compile(reference)", "x_compile_fwdbwd", 2.0)]}
MiB = 2 ** 20


# -- environment ---------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=HERE, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def environment(device) -> dict[str, str]:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "torch": torch.__version__, "triton": triton_version, "python": platform.python_version(),
           "CPU": f"{_cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
           "mixpath commit": _git_commit()}
    if device_type(device) == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["GPU"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs"
        env["CUDA"] = str(torch.version.cuda)
    else:
        env["load average at start (1 min)"] = f"{os.getloadavg()[0]:.2f}"
    return env


# -- op measurements -----------------------------------------------------------

def measure_op(backend: str, case, device, timer: dict) -> dict:
    """Agreement (small case), first-call time, phase medians and memory of one backend on one case."""
    problems = [] if backend in ("reference", COMPILE) else compare_backend(backend, agreement_case(case), device)
    work = OpWorkload(backend, case, device)
    row = {"backend": backend, "agrees": not problems, "problems": "; ".join(problems)}
    for phase in ("fwdbwd", "fwd", "bwd"):  # fwdbwd first: its first call compiles both directions
        target, setup = work.phase(phase)
        t = measure(target, device, setup=setup, **timer)
        row[f"{phase}_ms"], row[f"{phase}_min_ms"], row[f"rounds_{phase}"] = 1e3 * t.median_s, 1e3 * t.min_s, t.rounds
        row.setdefault("first_call_s", t.first_s)
    row["act_MiB"] = activation_bytes(work.forward, work.inputs()) / MiB
    row["peak_MiB"] = cuda_peak_bytes(work.forward_backward, device) / MiB if device_type(device) == "cuda" else ""
    return row


def case_columns(case, copy_bw: float, fma: float) -> dict:
    """The case's description and its roofline, for every backend's row."""
    nbytes, macs = roofline.ideal_bytes(case), roofline.multiply_adds(case)
    cols = {"case": str(case), "label": case_label(case), "N": case.N, "C": case.C, "H": case.H, "W": case.W,
            "kernels": "-".join(map(str, case.kernels)), "paths": len(case.kernels), "K": max(case.kernels),
            "stride": case.stride, "dtype": str(case.dtype).replace("torch.", ""),
            "copy_GBps": copy_bw / 1e9, "fma_GMACps": fma / 1e9}
    for phase in PHASES:
        cols[f"ideal_bytes_{phase}"], cols[f"macs_{phase}"] = nbytes[phase], macs[phase]
        cols[f"floor_{phase}_ms"] = 1e3 * roofline.floor_seconds(nbytes[phase], macs[phase], copy_bw, fma)
    cols["bound_fwdbwd"] = roofline.bound(nbytes["fwdbwd"], macs["fwdbwd"], copy_bw, fma)
    return cols


def add_ratios(rows: list[dict]) -> None:
    """Speed-ups over reference, merged and torch.compile, and percent of the floor, in place."""
    by_case = defaultdict(dict)
    for r in rows:
        by_case[r["case"]][r["backend"]] = r
    for r in rows:
        same = by_case[r["case"]]
        for base, key in (("reference", "ref"), ("merged", "merged"), (COMPILE, "compile")):
            for phase in PHASES:
                r[f"x_{key}_{phase}"] = same[base][f"{phase}_ms"] / r[f"{phase}_ms"] if base in same else ""
            # the same from each side's fastest round: what the two do without interference from other jobs
            r[f"x_{key}_fwdbwd_min"] = same[base]["fwdbwd_min_ms"] / r["fwdbwd_min_ms"] if base in same else ""
        for phase in PHASES:
            r[f"pct_floor_{phase}"] = 100 * r[f"floor_{phase}_ms"] / r[f"{phase}_ms"]


# -- goals -----------------------------------------------------------------------

def _geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _dt(dtype: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16"}.get(dtype, dtype)


def _fmt(value: float, unit: str) -> str:
    return {"x": f"{value:.2f}x", "%": f"{value:.0f}%"}.get(unit, f"{value:.3f}")


def _slice_line(name: str, rows: list[dict], value, goal: float, higher: bool, unit: str, from_min=None) -> str:
    """One goal line over a slice of cases: its geometric mean judged against the goal, the worst case shown.

    from_min: the same ratio from the fastest rounds, shown beside the judged (median) one.
    """
    values = [(value(r), r) for r in rows]
    mean = _geomean([v for v, _ in values])
    worst, at = (min if higher else max)(values, key=lambda vr: vr[0])
    met = mean >= goal if higher else mean <= goal
    verdict = "met" if met else f"missed by {_fmt(abs(goal - mean), unit)}"
    best = f"; from fastest rounds {_fmt(_geomean([from_min(r) for r in rows]), unit)}" if from_min else ""
    return (f"{name}: {_fmt(mean, unit)} (goal {'≥' if higher else '≤'} {_fmt(goal, unit)}): {verdict} "
            f"[geomean of {len(values)} case(s); worst {_fmt(worst, unit)} at {at['label']}{best}]")


def _unmeasured(name: str, backend: str, device) -> str:
    return f"{name}: not measured: {backend} is unavailable on {device} ({backend_status(device)[backend]})"


def goals(rows: list[dict], e2e_rows: list[dict], device) -> list[str]:
    """The issue's goals for this device, one line per goal and slice (dtype, m paths)."""
    dev = device_type(device)
    lines = []
    ref_act = {r["case"]: r["act_MiB"] for r in rows if r["backend"] == "reference"}
    for fused in FUSED[dev]:
        mine = [r for r in rows if r["backend"] == fused]
        if not mine:
            lines.append(_unmeasured(f"{fused} goals", fused, device))
            continue
        slices = defaultdict(list)
        for r in mine:
            slices[(r["dtype"], r["paths"])].append(r)
        for what, column, goal in SPEED_GOALS[dev]:
            for (dtype, m), group in sorted(slices.items()):
                group = [r for r in group if r[column] != ""]  # torch.compile runs on some cases only
                if group:
                    lines.append(_slice_line(f"{fused} vs {what} fwd+bwd {_dt(dtype)} m={m}", group,
                                             lambda r: r[column], goal, True, "x", lambda r: r[column + "_min"]))
        if dev == "cuda":
            for (dtype, m), group in sorted(slices.items()):
                if dtype == "bfloat16" and group[0]["K"] <= 5:
                    lines.append(_slice_line(f"{fused} fwd+bwd % of roofline floor bf16 K={group[0]['K']}", group,
                                             lambda r: r["pct_floor_fwdbwd"], 60.0, True, "%"))
        for dtype in sorted({r["dtype"] for r in mine}):
            lines.append(_slice_line(f"{fused} activation memory / reference's {_dt(dtype)}",
                                     [r for r in mine if r["dtype"] == dtype],
                                     lambda r: r["act_MiB"] / ref_act[r["case"]], 1 / 3, False, ""))
    if dev == "cuda":
        pair = {r["backend"]: r for r in e2e_rows if r["config"] == "cifar_b256_r32_bf16"}
        without, fused = e2e_backends(device)
        if without in pair and fused in pair:
            x = pair[fused]["steps_per_s"] / pair[without]["steps_per_s"]
            verdict = "met" if x >= 2 else f"missed by {2 - x:.2f}x"
            lines.append(f"e2e cifar supernet batch 256 bf16, {fused} vs {without}: {x:.2f}x train steps/s "
                         f"(goal ≥ 2x): {verdict}")
        else:
            lines.append("e2e cifar supernet batch 256 bf16: not measured in this run")
    return lines


# -- output ----------------------------------------------------------------------

def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)


def plot(path: Path, rows: list[dict], device) -> None:
    """Forward+backward speed-up over `reference` per case, one bar per backend, one panel per dtype."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = sorted({r["dtype"] for r in rows})
    backends = [b for b in dict.fromkeys(r["backend"] for r in rows) if b != "reference"]
    colors = dict(zip(backends, plt.get_cmap("tab10").colors))  # one colour per backend in every panel
    per_dtype = max(len({r["case"] for r in rows if r["dtype"] == d}) for d in dtypes)
    fig, axes = plt.subplots(len(dtypes), 1, figsize=(max(8.0, 2.0 + 0.2 * per_dtype * len(backends)), 4.5 * len(dtypes)),
                             squeeze=False)
    width = 0.8 / max(1, len(backends))
    for ax, dtype in zip(axes[:, 0], dtypes):
        mine = [r for r in rows if r["dtype"] == dtype]
        labels = list(dict.fromkeys(r["label"] for r in mine))
        for i, b in enumerate(backends):
            bars = [(labels.index(r["label"]) + (i - (len(backends) - 1) / 2) * width, r["x_ref_fwdbwd"])
                    for r in mine if r["backend"] == b]
            if bars:
                ax.bar(*zip(*bars), width, label=LABELS.get(b, b), color=colors[b])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("fwd+bwd speed-up over reference")
        ax.set_title(f"{device_type(device)} {_dt(dtype)}: speed-up of forward+backward over reference (higher is better)")
        ax.legend(fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(v, digits=2) -> str:
    return "" if v == "" else f"{v:.{digits}f}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in body]


def section(device, env: dict, args, copy_bw: float, fma: float, rows, e2e_rows, goal_lines, skipped: dict) -> str:
    dev = device_type(device)
    title = {"cpu": "CPU", "cuda": "GPU (CUDA)"}[dev]
    out = [f"## {title}", ""]
    out += [f"- {k}: {v}" for k, v in env.items()]
    scale = "quick" if args.quick else "full"
    out += [f"- command: `python -m benchmarks.report --device {dev}{' --quick' if args.quick else ''}"
            f"{'' if args.compile == 'first-shape' else ' --compile ' + args.compile}{' --no-e2e' if args.no_e2e else ''}`"
            f" (scale {scale})",
            f"- backends timed: {', '.join(LABELS.get(b, b) for b in dict.fromkeys(r['backend'] for r in rows))}"]
    out += [f"- not timed: {b}: {why}" for b, why in skipped.items()]
    out += ["", "### Ceilings, measured in this run",
            f"- copy bandwidth: {copy_bw / 1e9:.1f} GB/s (`dst.copy_(src)` of {2 ** 30 if dev == 'cpu' else 2 ** 31} "
            "bytes, float32, bytes read + written; past the last-level cache)",
            f"- FMA rate: {fma / 1e9:.1f} GMAC/s (float32 GEMM, TF32 off). A depthwise conv has no reduction over "
            "channels, so it cannot use tensor cores or AMX; its multiply-adds run as float32 vector FMAs "
            "(bfloat16 is widened to accumulate), and a large float32 GEMM is what comes closest to those units' "
            "peak: an upper bound the op could reach, never one it cannot.",
            "- floor = max(ideal bytes / copy bandwidth, multiply-adds / FMA rate); ideal bytes: forward x + y, "
            "backward x + dy + dx, plus the float32 merged weights; multiply-adds: K·K per output forward, 2·K·K "
            "backward, K the largest active kernel. % of floor = floor / measured time.",
            "", "### Goals", ""]
    out += [f"- {line}" for line in goal_lines]
    out += ["", "Judged on the geometric mean over the slice's shapes and strides of the median times; the worst "
            "case and the same ratio from each side's fastest round are shown. "
            + ("On CPU the only speed goal is cpp ≥ 3x over merged; the GPU goals need an H100 run." if dev == "cpu"
               else ""), ""]
    out += ["### Per case", "",
            "Times are medians (ms) of synchronised calls after warm-up; backward is timed alone after an untimed "
            "forward; ×ref, ×merged, ×compile: forward+backward speed-ups. act MiB: bytes kept alive for backward "
            "plus the output, the op's inputs excluded (unique storages seen by saved_tensors_hooks)"
            + ("; peak MiB: torch.cuda.max_memory_allocated over forward+backward above the inputs." if dev == "cuda"
               else "; PyTorch keeps no allocator statistics on CPU, so there is no peak column.")
            + " ok: agrees with the float64 reference on a small version of the case (testing.compare_backend;"
            " torch.compile is not checked).", ""]
    header = ["case", "floor ms (bound)", "backend", "fwd", "bwd", "fwd+bwd", "×ref", "×merged", "×compile",
              "% floor", "act MiB"] + (["peak MiB"] if dev == "cuda" else []) + ["ok"]
    body, last = [], None
    for r in rows:
        first, last = r["case"] != last, r["case"]
        cells = [r["label"] if first else "", f"{r['floor_fwdbwd_ms']:.3f} ({r['bound_fwdbwd']})" if first else "",
                 LABELS.get(r["backend"], r["backend"]), _f(r["fwd_ms"], 3), _f(r["bwd_ms"], 3), _f(r["fwdbwd_ms"], 3),
                 _f(r["x_ref_fwdbwd"]), _f(r["x_merged_fwdbwd"]), _f(r["x_compile_fwdbwd"]),
                 _f(r["pct_floor_fwdbwd"], 1), _f(r["act_MiB"], 2)]
        cells += [_f(r["peak_MiB"], 1)] if dev == "cuda" else []
        body.append(cells + ["yes" if r["agrees"] else "**NO**"])
    out += _table(header, body)
    out += ["", "### End to end: supernet training steps", ""]
    if not e2e_rows:
        out += ["Not run (--no-e2e).", ""]
    else:
        if dev == "cpu":
            out += ["**Reduced settings on CPU**: two cores cannot train the supernets at batch 96/256 in reasonable "
                    "time, so this is a few steps at a small batch, imagenet at a reduced resolution (columns). "
                    "The GPU section uses the full settings (batch 96 and 256, cifar 32x32, imagenet 224x224).", ""]
        out += ["Same seed, weights, batch and sampled architectures for both backends; steps/s from the median "
                "step. act MiB: bytes saved for backward in the warm-up step(s), parameters and batch excluded"
                + ("; peak MiB: torch.cuda.max_memory_allocated over the timed steps (parameters, gradients and "
                   "optimiser state included)." if dev == "cuda" else "."), ""]
        header = ["space", "batch", "resolution", "dtype", "backend", "steps (warm-up + timed)", "steps/s",
                  "×reference", "act MiB"] + (["peak MiB"] if dev == "cuda" else [])
        body = []
        for r in e2e_rows:
            cells = [r["space"], str(r["batch"]), str(r["resolution"]), r["dtype"], r["backend"],
                     f"{r['warmup']} + {r['steps']}", _f(r["steps_per_s"], 3), _f(r["x_reference"]), _f(r["act_MiB"], 1)]
            body.append(cells + ([_f(r["peak_MiB"], 1)] if dev == "cuda" else []))
        out += _table(header, body)
    out += ["", f"Files: results_{dev}.csv (every column, every phase), e2e_{dev}.csv, speedups_{dev}.png.", "",
            f"![fwd+bwd speed-ups over reference, {dev}](speedups_{dev}.png)", ""]
    return "\n".join(out)


def _markers(dev: str) -> tuple[str, str]:
    return f"<!-- section:{dev} begin -->", f"<!-- section:{dev} end -->"


RESULTS_HEADER = """# Benchmark results

Written by `python -m benchmarks.report [--device cpu|cuda] [--quick]` (benchmarks/report.py). Each device
has its own section; a new run replaces the section of its device and keeps the others.
"""


def update_results(text_for_device: str, dev: str, path: Path = RESULTS) -> None:
    begin, end = _markers(dev)
    block = f"{begin}\n{text_for_device.rstrip()}\n{end}"
    old = path.read_text() if path.exists() else RESULTS_HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


# -- main ------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer/smaller cases and shorter timing")
    parser.add_argument("--compile", choices=("first-shape", "all", "none"), default="first-shape",
                        help="cases that time torch.compile(reference) (default: the first layer shape's 12)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the supernet training steps")
    args = parser.parse_args(argv)
    device = torch.device(args.device if args.device == "cpu" else "cuda:0")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    dev, scale = device.type, "quick" if args.quick else "full"
    timer = TIMER[dev][scale]

    env = environment(device)
    print("\n".join(f"{k}: {v}" for k, v in env.items()), flush=True)
    copy_bw, fma = copy_bandwidth(device), fma_rate(device)
    print(f"copy bandwidth {copy_bw / 1e9:.1f} GB/s, FMA rate {fma / 1e9:.1f} GMAC/s", flush=True)

    backends = timed_backends(device)  # asked once: the whole run uses one set of backends
    skipped = {b: skip_reason(b, device) for b in backend_status(device) if b not in backends}
    cases = op_cases(device, scale)
    compiled = {"all": cases, "first-shape": first_shape_only(cases), "none": []}[args.compile]
    env["torch.compile"] = (f"mode {compile_mode(device)!r}, on {len(compiled)} of {len(cases)} cases"
                            + (" (the first layer shape: compiling every case takes too long)"
                               if args.compile == "first-shape" else ""))
    rows = []
    for i, case in enumerate(cases, 1):
        base = case_columns(case, copy_bw, fma)
        for backend in backends + ([COMPILE] if case in compiled else []):
            row = {"device": dev, **base, **measure_op(backend, case, device, timer)}
            rows.append(row)
            print(f"[{i}/{len(cases)}] {case_label(case)} {LABELS.get(backend, backend)}: fwd {row['fwd_ms']:.3f} "
                  f"bwd {row['bwd_ms']:.3f} fwd+bwd {row['fwdbwd_ms']:.3f} ms"
                  + ("" if row["agrees"] else f"  DISAGREES: {row['problems']}"), flush=True)
    add_ratios(rows)

    e2e_rows = []
    if not args.no_e2e:
        for config in e2e_configs(device, scale):
            pair = {b: run_e2e(config, b, device) for b in e2e_backends(device)}
            for b, res in pair.items():
                e2e_rows.append({"device": dev, "config": str(config), "space": config.space, "batch": config.batch,
                                 "resolution": config.resolution, "dtype": _dt(str(config.dtype).replace("torch.", "")),
                                 "warmup": config.warmup, "steps": config.steps, "backend": b,
                                 "steps_per_s": res.steps_per_s,
                                 "x_reference": res.steps_per_s / pair["reference"].steps_per_s,
                                 "act_MiB": res.activation_bytes / MiB,
                                 "peak_MiB": "" if res.peak_bytes is None else res.peak_bytes / MiB})
                print(f"e2e {config} {b}: {res.steps_per_s:.3f} steps/s", flush=True)

    if dev == "cpu":
        env["load average at end (1 min)"] = f"{os.getloadavg()[0]:.2f}"
        if max(float(env["load average at start (1 min)"]), os.getloadavg()[0]) > 0.5 * os.cpu_count():
            env["warning"] = ("other jobs shared the cores during this run: an OpenMP call that loses its core "
                              "can take many times longer, so single figures are noisy; results_cpu.csv has each "
                              "phase's minimum beside the median")
    goal_lines = goals(rows, e2e_rows, device)
    write_csv(HERE / f"results_{dev}.csv", rows)
    if e2e_rows:
        write_csv(HERE / f"e2e_{dev}.csv", e2e_rows)
    plot(HERE / f"speedups_{dev}.png", rows, device)
    update_results(section(device, env, args, copy_bw, fma, rows, e2e_rows, goal_lines, skipped), dev)
    print("\nGoals:\n" + "\n".join(goal_lines))
    print(f"\nwrote {RESULTS}, results_{dev}.csv, speedups_{dev}.png" + (f", e2e_{dev}.csv" if e2e_rows else ""))
    bad = sorted({r["backend"] for r in rows if not r["agrees"]})
    if bad:
        print(f"backends disagreeing with the reference: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
