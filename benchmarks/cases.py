"""Which op cases are measured, per device type and scale (e2e.py has the supernet settings).

Scales: `full` (the report's default), `quick` (`report --quick`), `smoke` (the
default `pytest benchmarks/` on CPU, sized so the run takes a few minutes on two
cores). Set MIXPATH_BENCH_SCALE to run pytest at another scale.
"""
from __future__ import annotations

import os
from dataclasses import replace

import torch

from mixpath.ops.testing import OpCase

SCALES = ("smoke", "quick", "full")
# forward, backward alone (after an untimed forward), forward + backward
PHASES = ("fwd", "bwd", "fwdbwd")
# m = 1, 2, 4 active paths; the merged kernel K is their largest k
KERNEL_SETS = ((3,), (3, 5), (3, 5, 7, 9))
STRIDES = (1, 2)
DTYPES = (torch.float32, torch.bfloat16)

# The depthwise layers of the cifar (32..8) and imagenet (28..7) supernets at batch 256.
GPU_SHAPES = ((256, 192, 32), (256, 288, 16), (256, 576, 8), (256, 240, 28), (256, 480, 14), (256, 1152, 7))
# The same kind of layers at batches two cores get through: at batch 32/64/96 PyTorch's
# own CPU depthwise backward takes up to 30 s a call with K = 9 (float32).
CPU_SHAPES = ((8, 192, 32), (16, 288, 16), (24, 576, 8))


def _smaller_batch(shapes, divisor):
    return tuple((max(1, n // divisor), c, h) for n, c, h in shapes)


SHAPES = {
    "cuda": {"full": GPU_SHAPES, "quick": GPU_SHAPES[::2], "smoke": GPU_SHAPES[::2]},
    "cpu": {"full": CPU_SHAPES, "quick": _smaller_batch(CPU_SHAPES, 4), "smoke": _smaller_batch(CPU_SHAPES, 8)},
}
PYTEST_SCALE = {"cpu": "smoke", "cuda": "full"}
# pytest-benchmark's pedantic() rounds: on two CPU cores three and no warm-up (the median of
# three shrugs off a slow first call) keep the default run short; more on a GPU.
PYTEST_ROUNDS = {"cpu": dict(rounds=3, warmup_rounds=0), "cuda": dict(rounds=20, warmup_rounds=5)}
PYTEST_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def device_type(device) -> str:
    return torch.device(device).type


def pytest_scale(device) -> str:
    scale = os.environ.get("MIXPATH_BENCH_SCALE", PYTEST_SCALE[device_type(device)])
    if scale not in SCALES:
        raise ValueError(f"MIXPATH_BENCH_SCALE={scale!r}; choose one of {', '.join(SCALES)}")
    return scale


def op_cases(device, scale: str) -> list[OpCase]:
    """Every shape x path set x stride x dtype of `scale` on `device`, in training mode (NCHW, ReLU6)."""
    return [OpCase(N, C, H, H, kernels=kernels, stride=stride, dtype=dtype)
            for N, C, H in SHAPES[device_type(device)][scale]
            for dtype in DTYPES for kernels in KERNEL_SETS for stride in STRIDES]


def agreement_case(case: OpCase) -> OpCase:
    """A small version of `case` (same paths, stride, dtype, layout) for the float64 agreement check.

    32 channels and 16x16 keep it quick while still spanning a vector width of
    channels and more rows than the largest kernel.
    """
    return replace(case, N=2, C=min(case.C, 32), H=min(case.H, 16), W=min(case.W, 16))


def first_shape_only(cases: list[OpCase]) -> list[OpCase]:
    """The cases of the first layer shape: where torch.compile is measured unless asked for everywhere.

    Each case costs a compilation (seconds on CPU, autotuning on GPU), so the
    baseline is bounded to one shape's 12 cases (every path set, stride, dtype).
    """
    first = (cases[0].N, cases[0].C, cases[0].H)
    return [c for c in cases if (c.N, c.C, c.H) == first]


def case_label(case: OpCase) -> str:
    """Short name for tables and plots: C x H, batch, paths, stride, dtype."""
    dt = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[case.dtype]
    return f"{case.C}x{case.H} N{case.N} k{','.join(map(str, case.kernels))} s{case.stride} {dt}"
