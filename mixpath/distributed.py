"""Training on several processes started by `torchrun`: the process group, rank helpers, gradient averaging.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in each process; `Ranks.from_env`
reads them (one process without them). `process_group` joins torch.distributed
(NCCL on CUDA, gloo on the CPU) with a timeout on every collective, so a rank
that hangs or vanishes ends the others with an error instead of a wait
forever; torchrun itself ends the remaining workers when one exits.

Gradients: a supernet step trains one architecture (or a group, see
`mixpath.sampling`), so most supernet parameters have no gradient. DDP's
reducer would all-reduce zeros for them, and SGD's momentum and weight decay
would then move weights that the step never used. `average_gradients` instead
agrees, in one small collective, on the union over ranks of the parameters
that received a gradient (and checks that every rank trained the same
architectures), then all-reduces exactly those gradients in buckets; the
others stay None on every rank. No parameter a rank used is left out of the
average, and every rank issues the same collectives, so none can hang.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["Ranks", "RankFailure", "process_group", "average_gradients", "broadcast_state", "all_sum",
           "fingerprint", "DEFAULT_TIMEOUT"]

# Seconds a collective may wait: longer than rank 0's per-epoch evaluation and checkpoint, which the others
# wait for at their next step.
DEFAULT_TIMEOUT = 1800
BUCKET_BYTES = 25 * 2**20  # as DDP's default bucket


class RankFailure(RuntimeError):
    """A collective failed: another rank crashed, was killed, or stopped answering."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank of world_size, and local_rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (even with one process)

    @classmethod
    def from_env(cls) -> "Ranks":
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)),
                   True)

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes checkpoints, logs and the summary."""
        return self.rank == 0

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


@contextmanager
def process_group(ranks: Ranks, device: torch.device, timeout: float = DEFAULT_TIMEOUT):
    """Join the job's process group for the block (nothing for a process torchrun did not start).

    A group the caller set up already is used as it is and left open.
    """
    if not ranks.launched or dist.is_initialized():
        yield
        return
    kwargs = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    _collective("joining the process group", lambda: dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout), **kwargs))
    try:
        yield
    finally:
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def fingerprint(text: str) -> int:
    """A stable 56-bit hash of `text` (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=7).digest(), "little")


def _collective(what: str, fn):
    try:
        return fn()
    except RuntimeError as e:  # DistError, DistBackendError and gloo's errors are RuntimeErrors
        detail = " ".join(str(e).split())[:200] or type(e).__name__
        raise RankFailure(f"{what} failed, so another rank crashed, was killed or stopped answering "
                          f"({detail})") from None


def average_gradients(params: list[torch.nn.Parameter], step_key: str) -> None:
    """Average over ranks the gradients of every parameter that has one on any rank; the rest stay None.

    `step_key` names what the job trains this step (the whole group of
    architectures); all ranks must pass the same, or RankFailure says they diverged.
    """
    if not active():
        return
    device = params[0].device
    # One collective: MAX of the used mask is the union; MAX of (h, -h) is (max h, -min h), equal iff all agree.
    key = fingerprint(step_key)
    flags = torch.tensor([p.grad is not None for p in params] + [key, -key], dtype=torch.int64, device=device)
    _collective("agreeing on this step's parameters", lambda: dist.all_reduce(flags, op=dist.ReduceOp.MAX))
    if flags[-2].item() != -flags[-1].item():
        raise RankFailure(f"the ranks drew different architectures this step (this one: {step_key[:120]}); "
                          "every rank must run the same mixpath version and options")
    used = [p for p, u in zip(params, flags[:-2].tolist()) if u]
    for p in used:
        if p.grad is None:  # used on another rank only
            p.grad = torch.zeros_like(p)
    for bucket in _buckets([p.grad for p in used]):
        flat = torch._utils._flatten_dense_tensors(bucket)
        _collective("averaging gradients", lambda: dist.all_reduce(flat))
        flat.div_(dist.get_world_size())
        for g, avg in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
            g.copy_(avg)


def _buckets(tensors: list[torch.Tensor]):
    """Consecutive runs of tensors of one dtype, each at most BUCKET_BYTES (or one tensor)."""
    bucket, size = [], 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and (size + nbytes > BUCKET_BYTES or t.dtype != bucket[0].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += nbytes
    if bucket:
        yield bucket


def broadcast_state(module: torch.nn.Module) -> None:
    """Every rank takes rank 0's parameters and buffers (as DDP does when it wraps a module)."""
    if not active():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        _collective("copying rank 0's weights", lambda: dist.broadcast(t.data, src=0))


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """The sums over ranks of a few numbers (float64)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    _collective("summing epoch statistics", lambda: dist.all_reduce(t))
    return t.tolist()
