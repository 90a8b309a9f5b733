"""End to end: supernet training steps per second and memory, with and without the fused backend.

Both runs of a pair use the same seed: the same initial weights, the same
random batch and the same sequence of sampled architectures (one per step,
the release's sampler). A step is the release's: forward, cross-entropy,
backward, gradient clipping at norm 5, SGD (lr 0.025, momentum 0.9, weight
decay 3e-4). bfloat16 means the forward under autocast.
"""
from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mixpath import SuperNet, get_space
from mixpath.ops import default_backend

from .cases import device_type
from .timing import activation_bytes, synchronize

SEED = 2020


@dataclass(frozen=True)
class E2EConfig:
    space: str
    batch: int
    resolution: int
    dtype: torch.dtype
    warmup: int
    steps: int

    def __str__(self):
        dt = "bf16" if self.dtype == torch.bfloat16 else "fp32"
        return f"{self.space}_b{self.batch}_r{self.resolution}_{dt}"


def _grid(spaces, batches, dtypes, warmup, steps):
    return [E2EConfig(space, batch, res, dtype, warmup, steps)
            for space, res in spaces for batch in batches for dtype in dtypes]


FULL_SPACES = (("cifar", 32), ("imagenet", 224))
BOTH = (torch.float32, torch.bfloat16)


def e2e_configs(device, scale: str) -> list[E2EConfig]:
    """GPU: the full settings (batch 96 and 256, cifar at 32, imagenet at 224). CPU: reduced, see below."""
    if device_type(device) == "cuda":
        warmup, steps = (3, 10) if scale == "full" else (2, 5)
        return _grid(FULL_SPACES, (96, 256), BOTH, warmup, steps)
    # Two cores cannot run batch 96 of the supernets in reasonable time: a few steps
    # at a small batch; full: cifar at its 32x32 and imagenet at 64x64, else smaller.
    if scale == "full":
        return _grid((("cifar", 32), ("imagenet", 64)), (4,), BOTH, 1, 2)
    small = (("cifar", 16), ("imagenet", 32))
    return _grid(small, (2,), BOTH if scale == "quick" else (torch.float32,), 1, 1)


def e2e_backends(device) -> tuple[str, str]:
    """(without, with) the fused op: `reference` and `default_backend(device)` (what --fused picks)."""
    return "reference", default_backend(device)


class TrainLoop:
    """A supernet, its optimiser, one random batch and the architectures of `config`'s steps."""

    def __init__(self, config: E2EConfig, backend: str, device, seed: int = SEED):
        self.config, self.device = config, device
        torch.manual_seed(seed)
        space = get_space(config.space)
        self.net = SuperNet(space).to(device).set_backend(backend).train()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(config.batch, 3, config.resolution, config.resolution, generator=g).to(device)
        self.labels = torch.randint(0, space.num_classes, (config.batch,), generator=g).to(device)
        rng = random.Random(seed)
        self.archs = [space.sample(rng) for _ in range(config.warmup + config.steps)]
        self._next = 0

    def step(self) -> torch.Tensor:
        """One training step on the next architecture; returns the loss (detached)."""
        arch = self.archs[self._next % len(self.archs)]
        self._next += 1
        with torch.autocast(device_type(self.device), dtype=self.config.dtype,
                            enabled=self.config.dtype != torch.float32):
            loss = F.cross_entropy(self.net(self.images, arch), self.labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
        self.opt.step()
        return loss.detach()

    def synced_step(self) -> torch.Tensor:
        loss = self.step()
        synchronize(self.device)
        return loss

    def fixed_tensors(self) -> list[torch.Tensor]:
        return [*self.net.parameters(), self.images, self.labels]


@dataclass(frozen=True)
class E2EResult:
    config: E2EConfig
    backend: str
    steps_per_s: float
    activation_bytes: int  # max over the warm-up steps, parameters and batch excluded
    peak_bytes: int | None  # CUDA: max_memory_allocated over the timed steps; None on CPU


def run_e2e(config: E2EConfig, backend: str, device, seed: int = SEED) -> E2EResult:
    loop = TrainLoop(config, backend, device, seed)
    act = max(activation_bytes(loop.synced_step, loop.fixed_tensors()) for _ in range(config.warmup))
    cuda = device_type(device) == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(config.steps):
        start = time.perf_counter()
        loop.synced_step()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return E2EResult(config, backend, 1.0 / statistics.median(times), act, peak)
