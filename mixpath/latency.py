"""Measured inference latency of architectures, and a per-architecture cache of it for the searches."""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .checkpoint import atomic_write
from .space import Arch

LATENCY_FORMAT = "mixpath-latency"


def _device(device) -> torch.device:
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"latency is measured on 'cpu' or 'cuda'; got {device}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"cannot measure latency on {device}: torch sees no CUDA device; use --device cpu")
    return device


def measure_latency(model: nn.Module, input_shape: Sequence[int], device, *, warmup: int = 10,
                    repeats: int = 30) -> float:
    """Median seconds of one forward pass of `model` on a random float32 input of `input_shape`.

    The model is moved to `device` (in place, as `nn.Module.to` does) and run
    in eval mode under `torch.inference_mode`; its training flag is restored.
    `warmup` passes first (allocator, cuDNN autotuning, lazy initialisation),
    then `repeats` timed ones, each bracketed by `torch.cuda.synchronize` on
    CUDA so the time is the kernels', not the launch's. The median resists the
    odd slow pass from a busy machine.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1; got {warmup}, {repeats}")
    device = _device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    model = model.to(device)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            x = torch.randn(tuple(input_shape), device=device)
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                model(x)
                sync()
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return statistics.median(times)


class LatencyCache:
    """`latency(arch)` for the searches: `measure_latency(build(arch), ...)` once per (arch, device, input shape).

    `build(arch)` makes the model to time (e.g. `supernet.subnet`); the input
    shape holds the batch. A CUDA device is keyed with its name, so a cache
    carried to another GPU model measures again. With `path`, measurements are
    kept in that JSON file (rewritten atomically after each one) and reused by
    later caches on the same file; `n_measured` counts this cache's measurements.
    """

    def __init__(self, build: Callable[[Arch], nn.Module], input_shape: Sequence[int], device, *,
                 path: str | os.PathLike | None = None, warmup: int = 10, repeats: int = 30):
        self.build, self.input_shape = build, tuple(int(s) for s in input_shape)
        self.device = _device(device)
        self.device_label = str(self.device) + (f" ({torch.cuda.get_device_name(self.device)})"
                                                if self.device.type == "cuda" else "")
        self.path = None if path is None else Path(path)
        self.warmup, self.repeats = warmup, repeats
        self.n_measured = 0
        self._entries: dict[tuple, float] = {}
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            if data.get("format") != LATENCY_FORMAT:
                raise ValueError
            for e in data["entries"]:
                seconds = float(e["seconds"])
                if not (math.isfinite(seconds) and seconds > 0):
                    raise ValueError
                self._entries[(e["arch"], e["device"], tuple(e["input_shape"]))] = seconds
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{self.path}: not a mixpath latency cache (or damaged); delete it to measure again"
                             ) from None

    def _key(self, arch: Arch) -> tuple:
        return str(arch), self.device_label, self.input_shape

    def __contains__(self, arch: Arch) -> bool:
        return self._key(arch) in self._entries

    def __call__(self, arch: Arch) -> float:
        key = self._key(arch)
        if key not in self._entries:
            self._entries[key] = measure_latency(self.build(arch), self.input_shape, self.device,
                                                 warmup=self.warmup, repeats=self.repeats)
            self.n_measured += 1
            if self.path is not None:
                self._save()
        return self._entries[key]

    def _save(self) -> None:
        entries = [{"arch": a, "device": d, "input_shape": list(s), "seconds": t}
                   for (a, d, s), t in self._entries.items()]
        text = json.dumps({"format": LATENCY_FORMAT, "entries": entries}, indent=0) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, lambda f: f.write(text), binary=False)


__all__ = ["LATENCY_FORMAT", "LatencyCache", "measure_latency"]
