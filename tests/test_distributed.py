"""torchrun on the CPU (gloo, 2 processes): the same weights as one process, exact resume, world-size refusal, a kill.

The one-process oracle takes the same global batches and architectures and
splits each batch into the ranks' halves, each with its own BatchNorm batch
statistics (as each rank computes them), averages the ranks' gradients of the
parameters any rank used, then steps. With 2 ranks every operation matches the
distributed run's up to the order of a commutative two-term sum and exact
halvings, so the weights agree bit for bit.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mixpath.checkpoint import CheckpointError, load_checkpoint
from mixpath.data import batches
from mixpath.distributed import Ranks
from mixpath.sampling import rank_share
from mixpath.training import ConfigError, TrainConfig, Run, resolve, train

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
WORLD = 2
SMALL = dict(max_paths=2, kernels=[3, 5], width_mult=0.5, batch_size=64, eval_archs=1, calib_batches=1)
SMALL_ARGS = ["--max-paths", "2", "--kernels", "3,5", "--width-mult", "0.5", "--batch-size", "64",
              "--eval-archs", "1", "--calib-batches", "1"]

pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside python")


def torchrun(*args: str, timeout: float = 240, wait: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [str(TORCHRUN), "--standalone", f"--nproc_per_node={WORLD}", str(ROOT / "train.py"), *args]
    if not wait:
        return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def oracle(config: TrainConfig, epochs: int, world: int = WORLD) -> dict:
    """The weights after `epochs` of one process that computes each of `world` ranks' shares separately."""
    plan = resolve(config)
    run = Run(plan)
    c, model = plan.config, run.model
    params = list(model.parameters())
    model.train()
    # The thread count the runs use (the dataset's default): another one sums in another order.
    threads = torch.get_num_threads()
    torch.set_num_threads(c.threads)
    try:
        _oracle_epochs(plan, run, params, epochs, world)
    finally:
        torch.set_num_threads(threads)
    return {name: p.detach() for name, p in model.named_parameters()}


def _oracle_epochs(plan, run, params, epochs: int, world: int) -> None:
    c, model = plan.config, run.model
    for epoch in range(epochs):
        for x, y in batches(plan.splits.train, c.batch_size * world, train=True, epoch=epoch,
                            seed=c.seed, device="cpu", augment=c.augment):
            group = run.sampling.group(run.sampler)
            per_rank = []
            for rank in range(world):
                half = slice(rank * c.batch_size, (rank + 1) * c.batch_size)
                share = rank_share(group, rank, world)
                model.zero_grad(set_to_none=True)
                for arch in share:
                    loss = F.cross_entropy(model(x[half], arch), y[half])
                    (loss / len(share) if len(share) > 1 else loss).backward()
                per_rank.append([p.grad for p in params])
            for p, grads in zip(params, zip(*per_rank)):
                used = [g for g in grads if g is not None]
                p.grad = None if not used else sum(used[1:], used[0]) / world
            torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
            run.optimizer.step()
        run.scheduler.step()


def assert_same_weights(checkpoint: dict, expected: dict, initial: dict) -> list[str]:
    """Bit-identical parameters; returns the names that no step used (still at their initial values)."""
    state = checkpoint["model"]
    for name, value in expected.items():
        assert torch.equal(state[name], value), (name, (state[name] - value).abs().max().item())
    unused = [name for name in expected if torch.equal(expected[name], initial[name])]
    # unused parameters got no gradient on any rank, so SGD left them alone: no momentum state either
    moved = set(checkpoint["optimizer"]["state"])
    names = list(expected)
    assert not {names[i] for i in moved} & set(unused)
    return unused


@pytest.fixture(scope="module")
def initial():
    return {k: v.clone() for k, v in Run(resolve(TrainConfig(**SMALL))).model.state_dict().items()}


def test_two_ranks_match_one_process_and_resume_exactly(tmp_path, initial):
    out = tmp_path / "uniform"
    first = torchrun(*SMALL_ARGS, "--epochs", "2", "--stop-after", "1", "--out", str(out))
    assert "batch 64 per rank x 2 ranks = 128 global" in first.stdout
    assert "summary.json" not in os.listdir(out)
    torchrun("--resume", str(out / "last.pt"))
    ckpt = load_checkpoint(out)
    assert ckpt["epoch"] == 2 and ckpt["world_size"] == WORLD
    unused = assert_same_weights(ckpt, oracle(TrainConfig(epochs=2, **SMALL), epochs=2), initial)
    assert unused  # weights of choices that no step's architecture used
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["world_size"], r["global_batch"]) for r in rows] == [(WORLD, 128)] * 2
    assert all(r["images_per_second"] > 0 for r in rows)
    # Another world size is refused before anything is written.
    before = (out / "last.pt").read_bytes()
    with pytest.raises(CheckpointError, match="trained by 2 process.*this job has 1"):
        train(TrainConfig(resume=str(out)), log=lambda _: None)
    assert (out / "last.pt").read_bytes() == before


@pytest.mark.slow  # ~30 s on 2 cores; the uniform test above covers the same machinery in CI
def test_fair_groups_spread_over_ranks_match_one_process(tmp_path, initial):
    out = tmp_path / "fair"
    torchrun(*SMALL_ARGS, "--epochs", "1", "--sampling", "fair", "--out", str(out))
    ckpt = load_checkpoint(out)
    assert ckpt["config"]["sampling"] == "fair"
    unused = assert_same_weights(ckpt, oracle(TrainConfig(epochs=1, sampling="fair", **SMALL), epochs=1), initial)
    # fair groups train every (expansion, kernel) weight in every step
    assert not [name for name in unused if ".weight.k" in name]


def test_one_process_fair_accumulates_the_group_into_one_update(tmp_path, initial):
    config = dict(epochs=1, sampling="fair", **SMALL)
    train(TrainConfig(out=str(tmp_path / "fair1"), **config), log=lambda _: None)
    assert_same_weights(load_checkpoint(tmp_path / "fair1"), oracle(TrainConfig(**config), epochs=1, world=1),
                        initial)


def test_fair_sampling_is_for_supernets_only():
    with pytest.raises(ConfigError, match="--sampling fair chooses the supernet's architectures"):
        resolve(TrainConfig(arch="6:3|6:3|6:3|6:3", sampling="fair", **SMALL))


def _worker(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker `rank` (a child of the torchrun process `parent`)."""
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(child)
    return None


@pytest.mark.slow  # ~25 s on 2 cores
def test_a_killed_rank_ends_the_job_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "killed"
    job = torchrun(*SMALL_ARGS, "--batch-size", "8", "--epochs", "3", "--out", str(out), wait=False)
    try:
        deadline = time.monotonic() + 180
        while not (out / "last.pt").exists():
            assert job.poll() is None and time.monotonic() < deadline, "the job ended before its first epoch"
            time.sleep(0.05)
        os.kill(_worker(job.pid, 1), signal.SIGKILL)
        _, stderr = job.communicate(timeout=120)  # no hang: the job ends
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    # rank 0 says what happened (a failed collective, or torchrun's SIGTERM) and what can be resumed
    said = [line for line in stderr.splitlines() if "epoch 1/3 is saved in" in line]
    assert len(said) == 1 and ("rank 0 of 2" in said[0] or "terminated" in said[0]), stderr[-2000:]
    assert load_checkpoint(out)["epoch"] == 1
    assert "summary.json" not in os.listdir(out)


def test_ranks_from_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert Ranks.from_env() == Ranks(0, 1, 0, False)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ranks = Ranks.from_env()
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.launched, ranks.main) == (3, 4, 1, True, False)
    assert str(ranks) == "rank 3 of 4"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NCCL)")
def test_nccl_one_gpu_end_to_end(tmp_path):
    out = tmp_path / "nccl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=1", str(ROOT / "train.py"), *SMALL_ARGS,
                           "--epochs", "1", "--device", "cuda", "--sampling", "fair", "--out", str(out)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = load_checkpoint(out)
    assert ckpt["world_size"] == 1 and ckpt["device"] == "cuda:0"
