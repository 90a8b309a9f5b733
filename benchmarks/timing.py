"""Timers, the two roofline ceilings and memory measurement, for CPU and CUDA alike."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .cases import device_type


def synchronize(device) -> None:
    if device_type(device) == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float  # beside the median: the less noisy figure on a shared, loaded machine
    rounds: int
    first_s: float  # the first warm-up call: compilation, autotuning and JIT show here


def _timed_call(target: Callable, args: tuple, device) -> float:
    """Seconds `target(*args)` takes, all its device work included."""
    if device_type(device) == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        target(*args)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    target(*args)
    return time.perf_counter() - start


def measure(target: Callable, device, *, setup: Callable[[], tuple] | None = None, warmup: int = 1,
            min_rounds: int = 1, max_rounds: int = 20, budget_s: float = 2.0) -> Timing:
    """Median time of `target(*setup())` after `warmup` (at least one) untimed calls; setup is not timed.

    Timed rounds go on until min_rounds are done and their total passes
    `budget_s`, or max_rounds are done: a slow call is timed min_rounds
    times, a millisecond call max_rounds times.
    """
    def once() -> float:
        args = setup() if setup is not None else ()
        synchronize(device)  # the setup's own device work must not be timed
        return _timed_call(target, args, device)

    warm = [once() for _ in range(max(1, warmup))]
    samples: list[float] = []
    while len(samples) < max_rounds and (len(samples) < min_rounds or sum(samples) < budget_s):
        samples.append(once())
    return Timing(statistics.median(samples), min(samples), len(samples), warm[0])


# -- ceilings ----------------------------------------------------------------

# Tensors well past the last-level cache (480 MiB L3 on the development CPU, 50 MB L2 on an H100).
COPY_BYTES = {"cpu": 1 << 30, "cuda": 2 << 30}
GEMM_SIZE = {"cpu": 2048, "cuda": 8192}


def copy_bandwidth(device) -> float:
    """Bytes per second of `dst.copy_(src)` on a large tensor, counting bytes read and written (best round)."""
    nbytes = COPY_BYTES[device_type(device)]
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device, warmup=2, min_rounds=5, max_rounds=10, budget_s=1.0)
    return 2 * nbytes / t.min_s  # a ceiling is the most the device showed: the best round


def fma_rate(device) -> float:
    """Multiply-adds per second of a large float32 GEMM with TF32 off (best round).

    Why this ceiling is honest for a depthwise conv: with no reduction over
    channels it cannot use tensor cores (GPU) or AMX tiles (CPU); its
    multiply-adds run as float32 vector FMAs (bfloat16 inputs are widened to
    float32 to accumulate), and a large float32 GEMM is the workload that
    comes closest to those units' peak. A bfloat16 GEMM would run on the
    matrix units, a ceiling the op can never approach.
    """
    n = GEMM_SIZE[device_type(device)]
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        t = measure(lambda: torch.mm(a, b, out=out), device, warmup=2, min_rounds=5, max_rounds=10, budget_s=2.0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    return n ** 3 / t.min_s


# -- memory ------------------------------------------------------------------

def _storages(obj: Any) -> dict[int, int]:
    """data_ptr -> bytes of the storages of the tensors in obj (a tensor or nested tuples/lists)."""
    if isinstance(obj, torch.Tensor):
        s = obj.untyped_storage()
        return {s.data_ptr(): s.nbytes()}
    if isinstance(obj, (tuple, list)):
        found = {}
        for item in obj:
            found.update(_storages(item))
        return found
    return {}


def activation_bytes(fn: Callable[[], Any], inputs: Any) -> int:
    """Bytes `fn()` keeps alive for the backward pass, its outputs included, its inputs excluded.

    Counts the unique storages of every tensor autograd saves (hooked with
    saved_tensors_hooks) and of what fn returns, less the storages of
    `inputs` (tensors that existed before the call, whichever backend runs).
    The same measure on every device: on CPU PyTorch has no allocator
    statistics; on CUDA `cuda_peak_bytes` is reported beside it.
    """
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    kept = {**_storages(saved), **_storages(out)}
    for ptr in _storages(inputs):
        kept.pop(ptr, None)
    return sum(kept.values())


def cuda_peak_bytes(fn: Callable[[], Any], device) -> int:
    """Peak CUDA memory `fn()` allocates above what was allocated before it (max_memory_allocated)."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return peak
