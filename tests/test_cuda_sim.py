"""The CUDA kernels (csrc/cuda/) on the CPU simulator (csrc/cuda_sim/), against a float64 recomputation.

No GPU needed: the real .cu sources are compiled as host C++, one fiber per
CUDA thread, in a random interleaving at every barrier and warp shuffle. Each
case runs under several interleavings, which must give the same bits; the
simulator itself fails a case on a missed cp.async wait, a barrier or shuffle
that not every thread reaches, a misaligned vector access or an over-budget
launch. The harness builds once into build/cuda_sim/ (g++; skipped without a
C++ compiler); the AddressSanitizer/UBSan build runs under `-m slow`.
"""
from __future__ import annotations

import importlib.util
import itertools
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cuda_sim_build", ROOT / "csrc" / "cuda_sim" / "build.py")
sim_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sim_build)

pytestmark = pytest.mark.skipif(sim_build.compiler() is None, reason="no C++ compiler (g++ or $CXX) to build the simulator")

SMS = 132  # an H100 / H200 launch plan
# The depthwise layers of the target networks (C, H = W), at N = 2.
TARGET_LAYERS = [(192, 32), (288, 16), (576, 8), (240, 28), (480, 14), (1152, 7)]
MODES_ACTS = list(itertools.product(("train", "eval"), ("relu6", "relu", "none")))


def _matrix():
    """Every layout x dtype x K x stride on small odd planes; mode and activation cycle through all six pairs."""
    cases = []
    for i, (layout, dtype, K, stride) in enumerate(itertools.product(
            ("nchw", "nhwc"), ("f32", "bf16", "f16"), (1, 3, 5, 7, 9), (1, 2))):
        mode, act = MODES_ACTS[i % len(MODES_ACTS)]
        C = 12 if i % 3 else 10  # C % 4 != 0: the channels_last scalar paths
        cases.append(f"2 {C} {9 + i % 5} {11 + i % 4} {K} {stride} {dtype} {layout} {mode} {act} 3 0 {SMS}")
    return cases


MATRIX = _matrix()
# Planes too large for shared memory: the tiled modes of both layouts.
TILED = [f"1 6 {h} {w} {K} {s} {dt} {layout} train relu6 2 0 {SMS}"
         for (h, w, K, s, dt, layout) in [(130, 121, 3, 1, "f32", "nchw"), (127, 133, 7, 2, "bf16", "nchw"),
                                         (72, 150, 5, 1, "f16", "nhwc"), (97, 99, 9, 2, "f32", "nhwc")]]
TARGETS = [f"2 {C} {H} {H} {K} {s} {dt} {layout} train relu6 2 0 {SMS}"
           for (C, H), (K, s, dt, layout) in zip(TARGET_LAYERS, [
               (9, 1, "bf16", "nchw"), (9, 2, "f32", "nhwc"), (3, 1, "f16", "nchw"),
               (9, 1, "bf16", "nhwc"), (5, 2, "f32", "nchw"), (9, 1, "bf16", "nhwc")])]
# Batch statistics and backward sums over large planes with a mean offset: on
# 132 SMs and on 1 (long per-thread sums).
STATS = [f"2 2 512 512 3 1 f32 nchw train none 2 3 {SMS}", "2 2 512 512 3 1 f32 nchw train none 1 3 1",
         "1 8 96 96 5 1 f32 nhwc train none 1 50 1"]

# More items than one wave of blocks (small devices keep them cheap): the launch sizing.
WAVES = ["24 100 10 10 7 2 bf16 nchw train relu6 1 0 6", "24 100 10 10 7 2 bf16 nhwc train relu6 1 0 6",
         "16 40 12 12 3 1 f32 nchw eval relu 1 0 8", "16 40 12 12 3 1 f32 nhwc train none 1 0 5"]

# Normalised max errors (see harness.cpp): outputs within rounding to the dtype,
# float32 sums within a small multiple of float32's epsilon.
OUTPUT_TOL = {"f32": 2e-6, "f16": 6e-4, "bf16": 4.2e-3}
SUM_TOL = 2e-5


def _run(binary: Path, cases: list[str], timeout: float) -> dict[str, dict[str, str]]:
    proc = subprocess.run([str(binary)], input="\n".join(cases) + "\n", capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"simulator exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    lines = proc.stdout.splitlines()
    assert len(lines) == len(cases), proc.stdout[-3000:]
    results = {}
    for case, line in zip(cases, lines):  # one result line per case, in order; it echoes the case
        status, rest = line.split(" ", 1)
        assert rest.startswith(case + " "), line
        fields = rest[len(case):].split()
        results[case] = {"status": status, **dict(f.split("=", 1) for f in fields if "=" in f), "raw": line}
    return results


@pytest.fixture(scope="session")
def harness():
    try:
        return sim_build.build()
    except sim_build.BuildError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def results(harness):
    return _run(harness, MATRIX + TILED + TARGETS + STATS + WAVES, timeout=900)


def _check(r: dict[str, str], case: str):
    assert r["status"] == "ok", r["raw"]
    dtype = case.split()[6]
    assert r["identical"] == "1", f"interleavings gave different bits: {case}"
    for key in ("y", "dx"):
        assert float(r[key]) <= OUTPUT_TOL[dtype], f"{key}: {r['raw']}"
    for key in ("mean", "var", "dw", "dgamma", "dbeta"):
        assert float(r[key]) <= SUM_TOL, f"{key}: {r['raw']}"


@pytest.mark.parametrize("case", MATRIX + TILED + TARGETS + STATS + WAVES)
def test_kernels_match_float64(results, case):
    _check(results[case], case)


def _launches(r):
    """(name, blocks, threads, shared bytes, resident blocks per SM, streaming stores) per launch."""
    out = []
    for item in r["launches"].split(";"):
        name, *numbers = item.rsplit("/", 5)
        out.append((name, *map(int, numbers)))
    return out


@pytest.mark.parametrize("case", WAVES + TARGETS)
def test_launches_fill_their_last_wave(results, case):
    """With equal work per block a nearly empty last wave nearly doubles a kernel's time: none has one."""
    sms = int(case.split()[12])
    for name, blocks, threads, smem, resident, _ in _launches(results[case]):
        if any(small in name for small in ("finish", "pad", "stored_z_stats")):  # a warp per channel: microseconds
            continue
        assert resident >= 1, f"{name}: no block of {threads} threads and {smem} bytes fits a multiprocessor"
        wave = resident * sms
        tail = blocks - (-(-blocks // wave) - 1) * wave
        assert blocks <= wave or 2 * tail >= wave, f"{name}: {blocks} blocks in waves of {wave}"


# y and dx get streaming stores only when larger than L2 (l2=0: always); the
# stored-z forward (store_z=1) against the recomputing one. Both layouts, the
# vector and scalar channels_last paths, whole planes and tiles.
VARIANT_BASES = ["2 12 9 11 7 2 f32 nchw train relu6 1 0 132", "2 12 10 9 9 1 bf16 nhwc train none 1 0 132",
                 "2 10 9 9 7 1 f16 nhwc train relu 1 0 132", "1 6 130 121 3 1 f32 nchw train relu6 1 0 132",
                 "1 6 97 99 9 2 bf16 nhwc train none 1 0 132", "2 12 9 11 3 1 bf16 nchw eval relu6 1 0 132"]
VARIANTS = [f"{base} l2={l2} store_z={z}" for base in VARIANT_BASES for l2, z in
            [(-1, 0), (0, 0), (-1, 1), (0, 1), (-1, "auto")]]
# The channels_last backward at the target layers, K >= 5, one SM: then every
# channel block is one launch block (one partial slot), so C / blocks is the
# channels per block.
NHWC_BACKWARD = [f"1 {C} {H} {H} {K} 1 {dt} nhwc train {act} 1 0 1"
                 for K in (5, 7, 9) for (C, H), (dt, act) in zip(TARGET_LAYERS, itertools.cycle([("f32", "relu6"),
                                                                                              ("bf16", "none")]))]


# The forward keeps z (float32) for the backward, whose B1 and B3 then read it
# instead of recomputing the convolution: training bases of both layouts,
# whole planes and tiles (the tiled B3 reads z on its halo), against
# recomputing.
KEEP_Z_BASES = [b for b in VARIANT_BASES if b.split()[8] == "train"] + [TILED[1], "2 10 9 11 5 2 f16 nchw train relu 1 0 132"]
KEEP_Z = [f"{base}{z}" for base in KEEP_Z_BASES for z in ("", " keep_z=f32")]


@pytest.fixture(scope="session")
def variant_results(harness):
    return _run(harness, VARIANTS + NHWC_BACKWARD + KEEP_Z, timeout=900)


@pytest.mark.parametrize("base", KEEP_Z_BASES)
def test_kept_z_changes_no_bit(variant_results, base):
    """Reading the forward's float32 z gives the bits of recomputing it (each output sums the taps in one order)."""
    recomputed, kept = variant_results[base], variant_results[base + " keep_z=f32"]
    _check(kept, base)
    assert kept["digest"] == recomputed["digest"], (recomputed["raw"], kept["raw"])
    assert any("apply_stored_z" in name for name, *_ in _launches(kept)), kept["raw"]


@pytest.mark.parametrize("base", VARIANT_BASES)
def test_streaming_stores_and_stored_z_change_no_bit(variant_results, base):
    runs = {case.split(" l2=")[1]: variant_results[case] for case in VARIANTS if case.startswith(base + " ")}
    for case, r in runs.items():
        _check(r, f"{base} {case}")
    assert len({r["digest"] for r in runs.values()}) == 1, {k: r["digest"] for k, r in runs.items()}
    training, K = base.split()[8] == "train", int(base.split()[4])
    for key, r in runs.items():
        launches = _launches(r)
        streaming = {name: n for name, *_, n in launches}
        writers = [name for name in streaming if "backward_kernel" in name or "apply" in name]
        if key.startswith("-1 "):  # the default 50 MB L2 holds these outputs
            assert not any(streaming.values()), r["launches"]
        else:
            assert writers and all(streaming[name] > 0 for name in writers), r["launches"]
        stored = any("apply_stored_z" in name for name, *_ in launches)
        assert stored == (training and (key.endswith("store_z=1") or (key.endswith("auto") and K >= 7))), key


@pytest.mark.parametrize("case", NHWC_BACKWARD)
def test_nhwc_backward_blocks(variant_results, case):
    """B3 blocks of at least 4 warps and 16 channels (32-thread blocks of 8 channels before), and still exact."""
    r = variant_results[case]
    _check(r, case)
    C = int(case.split()[1])
    (name, blocks, threads, smem, resident, _), = [x for x in _launches(r) if "nhwc_backward_kernel" in x[0]]
    assert threads >= 128 and C / blocks >= 16, r["launches"]
    assert smem <= 72 * 1024 and resident >= 1


@pytest.mark.slow
def test_sanitizer_build():
    """AddressSanitizer + UBSan over a sample of every kind of case (shared memory is sized exactly as launched)."""
    try:
        binary = sim_build.build(sanitize=True)
    except sim_build.BuildError as e:
        pytest.fail(str(e))
    cases = MATRIX[::3] + TILED[:1] + ["2 30 9 9 9 2 bf16 nhwc train relu6 2 0 132"]
    results = _run(binary, cases, timeout=1800)
    for case in cases:
        _check(results[case], case)


# One NaN or infinity in x: y, the statistics and every gradient are NaN or
# infinite exactly where PyTorch's are (harness.cpp: the float64 recomputation
# propagates them as PyTorch does, relu's gradient at NaN is dy and relu6's 0),
# and close elsewhere. Every layout x mode x activation x value x position;
# K, stride and dtype cycle; then tiled planes and the stored-z paths.
NONFINITE_VALUES = ("nan", "inf", "-inf")
NONFINITE_POSITIONS = ("middle", "-1,-1,-1,-1", "-1,-1,0,0")  # corners of the last channel


def _nonfinite_case(base: str, position: str, value: str) -> str:
    N, C, H, W = map(int, base.split()[:4])
    at = f"0,{C // 2},{H // 2},{W // 2}" if position == "middle" else position
    return f"{base} x@{at}={value}"


def _nonfinite_matrix():
    cases = []
    for i, (layout, mode, act, value, position) in enumerate(itertools.product(
            ("nchw", "nhwc"), ("train", "eval"), ("relu6", "relu", "none"), NONFINITE_VALUES, NONFINITE_POSITIONS)):
        K, stride = [(3, 1), (5, 2), (5, 1), (3, 2)][i % 4]
        dtype, C = [("f32", 12), ("bf16", 10), ("f16", 12)][i % 3]
        cases.append(_nonfinite_case(f"2 {C} 9 11 {K} {stride} {dtype} {layout} {mode} {act} 2 0 {SMS}", position, value))
    return cases


NONFINITE = _nonfinite_matrix() + [
    _nonfinite_case(base, position, value) for base, value in [
        (f"1 6 130 121 3 1 f32 nchw eval relu 2 0 {SMS}", "nan"), (f"1 6 127 133 7 2 bf16 nchw train relu6 2 0 {SMS}", "inf"),
        (f"1 6 72 150 5 1 f32 nhwc eval relu6 2 0 {SMS}", "inf"), (f"1 6 97 99 9 2 f32 nhwc eval none 2 0 {SMS}", "nan"),
        (f"2 12 9 11 7 2 f32 nchw train relu6 2 0 {SMS} store_z=1", "nan"),
        (f"2 12 10 9 9 1 bf16 nhwc train relu 2 0 {SMS} store_z=1", "-inf"),
        (f"2 12 9 11 7 2 f32 nchw train none 2 0 {SMS} keep_z=f32", "inf"),
        (f"2 10 9 11 5 1 f32 nhwc train relu6 2 0 {SMS} keep_z=f32", "nan")]
    for position in NONFINITE_POSITIONS[:2]]


@pytest.fixture(scope="session")
def nonfinite_results(harness):
    return _run(harness, NONFINITE, timeout=300)


@pytest.mark.parametrize("case", NONFINITE)
def test_nonfinite_x_matches_pytorch(nonfinite_results, case):
    r = nonfinite_results[case]
    _check(r, case)  # a NaN or infinity where the recomputation has none, or the reverse, is an error of inf
    fields = case.split()
    N, C, H, W, K, S = map(int, fields[:6])
    Ho, Wo = (H - 1) // S + 1, (W - 1) // S + 1
    y, mean, var, dx, dw, dgamma, dbeta = map(int, r["nonfinite"].split("/"))
    # dbeta sums du, finite at any u (relu6 gives 0 at NaN and inf, relu and none dy)
    if fields[8] == "train":  # the batch statistics of x's channel, and with them all of that channel, are NaN
        assert (y, mean, var, dx, dw, dgamma, dbeta) == (N * Ho * Wo, 1, 1, N * H * W, K * K, 1, 0), r["raw"]
    else:  # the running statistics normalise: y over the windows on x's element, dW's taps on it, dgamma
        assert (mean, var, dx, dgamma, dbeta) == (0, 0, 0, 1, 0) and 0 < dw <= K * K and y <= K * K, r["raw"]
        assert y > 0 or "nan" not in case, r["raw"]  # NaN passes every activation; an infinity may become 0 or 6
