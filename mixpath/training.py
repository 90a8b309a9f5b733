"""Supernet training and stand-alone retraining: the release's recipe, monitoring, checkpoints, final scores.

`train(config)` trains a supernet (one sampled architecture per step) and
scores subnets at the end; `retrain(config)` trains one architecture
(`config.arch`) from scratch, with nothing shared or sampled, and reports its
validation and test accuracy: the ground truth that ranking needs. Both run
the same loop, checkpoints, resume and progress machinery and return the
summary dict they write to summary.json. `TrainConfig` fields
left None are unset: a fresh run takes them from DEFAULTS and the dataset's
DATASET_DEFAULTS, a resumed run (`resume=PATH`) from the checkpoint's config.
Settings in IDENTITY_KEYS decide what the run computes; a resumed run refuses
to change them. The others (device, backend, AMP, threads, evaluation
settings) say how it runs and may change on resume. On the same device and
backend a resumed run is bit-identical to an uninterrupted one: batches come
from (seed, epoch) alone and the checkpoint holds every other random state;
another backend, device or AMP mode continues the same run with other rounding.

Every check that can fail (options, device, backend, data, architectures,
checkpoint, output folder) runs before anything is written.

Data: monitoring and BN recalibration use the train and validation splits
only; the test split is read by `retrain` alone, once, for its final test_acc.

Several processes (`torchrun`, see `mixpath.distributed`): each rank trains on
its own shard of every global batch (`batch_size` images of the world_size *
batch_size that one process would take from the same seeded order, so every
training image is seen once per epoch); the learning rate is the user's, never
scaled. Every rank draws the same architectures from the same seeded stream,
and gradients are averaged over ranks for exactly the parameters used.
BatchNorm computes its batch statistics per rank, on the rank's shard, as DDP
does (no SyncBN); running statistics are per rank, and rank 0's are the ones
saved and scored. Rank 0 alone writes checkpoints, metrics, logs and the
summary, and scores subnets. A checkpoint continues only under the world size
that wrote it: another one is another global batch, so another run.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import distributed
from .checkpoint import (CheckpointError, atomic_write, config_differences, json_ready, load_checkpoint,
                         save_checkpoint, write_json)
from .data import DataError, Splits, batches, describe, load_data, num_batches
from .evaluate import accuracy, score_arch
from .nn import LAYOUTS, SuperNet, standalone
from .ops import backend_status, default_backend
from .ops.registry import AUTO_ORDER
from .distributed import RankFailure, Ranks
from .outdir import OutputError, OutputFolder, new_run_dir
from .sampling import SAMPLINGS, make_sampler, rank_share
from .space import POCKET_SAMPLING, SPACES, Arch, ArchError, SearchSpace, get_space, load_space_file

__all__ = ["TrainConfig", "ConfigError", "TrainingError", "Terminated", "DEFAULTS", "DATASET_DEFAULTS",
           "IDENTITY_KEYS", "DATASETS", "train", "retrain", "resolve", "build_space", "load_splits",
           "split_batches", "Plan", "Run", "as_options", "run_epochs", "sigterm_as_interrupt"]

DATASETS = ("digits", "cluttered-digits", "cifar10", "folder")
AMP_MODES = ("none", "bf16", "fp16")
CHECKPOINT_NAME, METRICS_NAME, SUMMARY_NAME = "last.pt", "metrics.jsonl", "summary.json"
RUN_FILES = (CHECKPOINT_NAME, METRICS_NAME, SUMMARY_NAME)


class ConfigError(ValueError):
    """An option is out of range or inconsistent; the message names the option and the fix."""


class TrainingError(RuntimeError):
    """Training itself failed (e.g. the loss diverged); the last checkpoint is left as it was."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what job schedulers send) arrived: the job ends as after Ctrl-C."""


@dataclass
class TrainConfig:
    """Options of one training job; None means unset (see the module docstring)."""

    # data
    data: str | None = None
    data_dir: str | None = None
    val_size: int | None = None
    image_size: int | None = None
    augment: bool | None = None
    # search space and supernet
    space: str | None = None
    space_file: str | None = None  # a `mixpath shrink` space.json: only its pockets' architectures
    pocket_sampling: str | None = None  # with space_file: "arch" uniform over them, "pocket" a pocket first
    max_paths: int | None = None
    kernels: list[int] | None = None
    expansions: list[int] | None = None
    width_mult: float | None = None
    layout: str | None = None
    shadow_bn: bool | None = None
    # architectures per step: uniform (one, the release) or fair (groups, mixpath.sampling)
    sampling: str | None = None
    # stand-alone retraining: this architecture alone, from scratch (None: train the supernet)
    arch: str | None = None
    # optimisation (the release's recipe)
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    seed: int | None = None
    # how it runs
    device: str | None = None
    backend: str | None = None
    fused: bool | None = None
    amp: str | None = None
    channels_last: bool | None = None
    threads: int | None = None
    workers: int | None = None
    dist_timeout: float | None = None  # seconds a collective may wait under torchrun
    # final evaluation
    eval_archs: int | None = None
    eval_arch: list[str] | None = None
    calib_batches: int | None = None
    # the job
    out: str | None = None
    resume: str | None = None
    stop_after: int | None = None
    force: bool | None = None


# The release's S1 recipe (MIXPATH.md) and the switches' defaults.
DEFAULTS = dict(data="digits", max_paths=4, kernels=[3, 5, 7, 9], expansions=[3, 6], width_mult=1.0,
                layout="mixpath", shadow_bn=True, sampling="uniform", pocket_sampling="arch", momentum=0.9,
                weight_decay=3e-4, grad_clip=5.0, seed=2020,
                fused=False, amp="none", channels_last=False, eval_archs=10, eval_arch=[], calib_batches=20,
                dist_timeout=distributed.DEFAULT_TIMEOUT)
# Identity settings added after checkpoints were written without them, with the value those runs used.
ADDED_IDENTITY = {"sampling": "uniform", "pocket_sampling": "arch"}

# digits is the quick demo: 1077 training images of 16 px, where the release's 200 epochs of batch 96 with
# crop/flip/Cutout would take an hour to learn what 12 plain epochs of batch 32 reach (>0.9 mean subnet
# accuracy) in about a minute. Flips and half-image Cutout also destroy digits at 16 px. Its layers are
# too small to split across cores, and idle OpenMP threads spin against other processes: one thread.
DATASET_DEFAULTS = {
    "digits": dict(space="tiny", epochs=12, batch_size=32, lr=0.05, augment=False, threads=1),
    # digits among fragments of other digits on a 32 px canvas (mixpath.data.clutter): kernel size and width
    # matter there. Its augmentation is a fresh clutter every epoch (no crop or flip): without it 3231 fixed
    # canvases are memorised and stand-alone accuracy varies more between seeds than between architectures.
    "cluttered-digits": dict(space="tiny", epochs=20, batch_size=64, lr=0.05, augment=True),
    "cifar10": dict(space="cifar", epochs=200, batch_size=96, lr=0.025, augment=True),
    "folder": dict(space="imagenet", epochs=200, batch_size=96, lr=0.025, augment=True),
}

# What the run computes: a checkpoint continues only under these same values.
IDENTITY_KEYS = ("data", "val_size", "image_size", "augment", "space", "space_file", "pocket_sampling", "max_paths",
                 "kernels", "expansions", "width_mult", "layout", "shadow_bn", "sampling", "arch", "epochs",
                 "batch_size", "lr", "momentum", "weight_decay", "grad_clip", "seed")
# Per invocation: never inherited from a checkpoint.
JOB_KEYS = ("out", "resume", "stop_after", "force")
# Where a resumed run continues with other rounding than an uninterrupted one would.
ROUNDING_KEYS = ("device", "backend", "fused", "amp", "threads", "channels_last")

FLAGS = {"shadow_bn": "--shadow-bn/--no-shadow-bn", "augment": "--augment/--no-augment",
         "channels_last": "--channels-last"}


def flag(key: str) -> str:
    return FLAGS.get(key, "--" + key.replace("_", "-"))


# ---------------------------------------------------------------- resolving and checking the config

@dataclass
class Plan:
    """Everything a run needs, checked, before anything is written."""

    config: TrainConfig
    device: torch.device
    backend: str
    backend_note: str
    splits: Splits
    space: SearchSpace
    eval_archs: list[Arch]  # the supernet's final scoring; empty when retraining
    monitor_arch: Arch  # scored every epoch (the retrained arch itself when retraining)
    out: Path | None  # None: a new runs/<timestamp> folder
    ranks: Ranks = field(default_factory=Ranks)
    checkpoint: dict | None = None
    notes: list[str] = field(default_factory=list)  # said in the log before training starts

    @property
    def retraining(self) -> bool:
        return self.config.arch is not None

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.ranks.world_size


def as_options(config: TrainConfig | Mapping | None) -> dict:
    """The options a config sets (None dropped); an unknown key is a ConfigError naming the known ones."""
    if config is None:
        return {}
    if isinstance(config, TrainConfig):
        config = asdict(config)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigError(f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return {k: v for k, v in config.items() if v is not None}


def _check_ranges(c: TrainConfig) -> None:
    def need(ok: bool, key: str, what: str):
        if not ok:
            raise ConfigError(f"{flag(key)} {getattr(c, key)!r} is out of range: {what}")

    for key, choices in (("data", DATASETS), ("space", tuple(SPACES)), ("layout", LAYOUTS), ("amp", AMP_MODES),
                         ("sampling", SAMPLINGS), ("pocket_sampling", POCKET_SAMPLING)):
        need(getattr(c, key) in choices, key, f"choose one of {', '.join(choices)}")
    need(c.epochs >= 1, "epochs", "train for at least 1 epoch")
    need(c.batch_size >= 1, "batch_size", "use a positive batch size")
    need(math.isfinite(c.lr) and c.lr > 0, "lr", "the learning rate must be a positive number (release: 0.025)")
    need(math.isfinite(c.momentum) and 0 <= c.momentum < 1, "momentum", "use 0 <= momentum < 1 (release: 0.9)")
    need(math.isfinite(c.weight_decay) and c.weight_decay >= 0, "weight_decay",
         "weight decay must be >= 0 (release: 3e-4)")
    need(math.isfinite(c.grad_clip) and c.grad_clip >= 0, "grad_clip", "use a norm > 0, or 0 to turn clipping off")
    need(c.seed >= 0, "seed", "seeds are non-negative integers")
    need(1 <= c.max_paths <= 4, "max_paths", "MixPath activates 1 to 4 paths per layer")
    need(len(c.kernels) > 0 and len(set(c.kernels)) == len(c.kernels)
         and all(k % 2 == 1 and 1 <= k <= 9 for k in c.kernels), "kernels",
         "give distinct odd kernel sizes between 1 and 9, e.g. 3,5,7,9")
    need(c.max_paths <= len(c.kernels), "max_paths", f"at most the number of kernel sizes ({len(c.kernels)})")
    need(len(c.expansions) > 0 and len(set(c.expansions)) == len(c.expansions)
         and all(t >= 1 for t in c.expansions), "expansions", "give distinct positive expansion rates, e.g. 3,6")
    need(math.isfinite(c.width_mult) and 0 < c.width_mult <= 8, "width_mult", "use a multiplier in (0, 8]")
    need(c.image_size is None or c.image_size >= 4, "image_size", "use at least 4 pixels")
    need(c.eval_archs >= 0, "eval_archs", "evaluate 0 or more sampled subnets")
    need(c.calib_batches >= 1, "calib_batches", "BN recalibration needs at least 1 batch")
    need(c.val_size is None or c.val_size >= 1, "val_size", "hold out at least 1 validation image")
    need(c.stop_after is None or c.stop_after >= 1, "stop_after", "stop after at least 1 epoch")
    need(c.threads is None or c.threads >= 1, "threads", "use at least 1 thread")
    need(c.workers is None or c.workers >= 0, "workers", "use 0 or more data loader workers")
    need(math.isfinite(c.dist_timeout) and c.dist_timeout > 0, "dist_timeout",
         "give the seconds a collective may wait, e.g. 1800")
    if c.arch is not None and c.sampling != "uniform":
        raise ConfigError(f"--sampling {c.sampling} chooses the supernet's architectures; a retraining trains "
                          "one: drop --sampling")
    if c.arch is None and c.eval_archs + len(c.eval_arch) == 0:
        raise ConfigError("nothing to evaluate at the end: pass --eval-archs N >= 1 or --eval-arch STR")
    if c.fused and c.backend is not None:
        raise ConfigError(f"--fused and --backend {c.backend} both choose the backend: pass one of them")


def check_device(name: str, ranks: Ranks | None = None) -> torch.device:
    """`name` as a torch.device that exists here (under torchrun: this rank's GPU); ConfigError otherwise."""
    ranks = ranks or Ranks()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {name!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA GPU is visible to torch on this machine; use --device cpu")
        if ranks.launched:
            if device.index is not None:
                raise ConfigError(f"--device {name}: under torchrun each rank uses cuda:LOCAL_RANK; pass --device "
                                  "cuda (choose the GPUs with CUDA_VISIBLE_DEVICES)")
            device = torch.device("cuda", ranks.local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              "numbered from 0" + (", fewer than torchrun's processes here: lower --nproc_per_node"
                                                   if ranks.launched else ""))
    elif ranks.launched and device.type != "cpu":
        raise ConfigError(f"--device {name}: torchrun jobs run on cuda (NCCL) or cpu (gloo)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"--device {name}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ConfigError(f"--device {name}: training runs on cpu, cuda or mps")
    return device


def choose_backend(c: TrainConfig, device: torch.device) -> tuple[str, str]:
    """(backend name, a note for the log)."""
    status = backend_status(device)
    if c.fused:
        name = default_backend(device)
        order = AUTO_ORDER.get(device.type, ())
        skipped = [f"{n}: {status[n]}" for n in order[:order.index(name)]] if name in order else []
        note = f"--fused picked {name}, the fastest available on {device}"
        if skipped:
            note += " (skipped " + "; ".join(skipped) + ")"
        return name, note
    name = c.backend or "merged"
    if name not in status:
        raise ConfigError(f"--backend {name!r} is unknown: choose one of {', '.join(status)} "
                          "(or --fused for the fastest available)")
    if status[name] != "available":
        raise ConfigError(f"--backend {name} cannot run on {device}: {status[name]}")
    return name, f"backend {name}" + ("" if c.backend else " (the default; --fused picks a compiled one)")


def _check_out(c: TrainConfig, checkpoint: dict | None) -> Path | None:
    if c.out is None:
        return Path(checkpoint["path"]).parent if checkpoint else None
    out = Path(c.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder: choose another --out")
    own = checkpoint is not None and out.resolve() == Path(checkpoint["path"]).parent.resolve()
    if not own and not c.force and out.is_dir():
        held = [name for name in RUN_FILES if (out / name).exists()]
        if held:
            hint = f"continue it with --resume {out / CHECKPOINT_NAME}" if CHECKPOINT_NAME in held else \
                "pass --force to replace it"
            raise ConfigError(f"--out {out} already holds a run ({', '.join(held)}); {hint}, "
                              "or choose another --out")
    return out


def build_space(c: TrainConfig, splits: Splits) -> SearchSpace:
    """The search space `c` names, sized for the data, restricted to a shrunk space's pockets with
    `space_file`; ConfigError if it cannot be built (SpaceFileError, an ArchError, for a bad space file)."""
    try:
        space = get_space(c.space, max_paths=c.max_paths, kernel_sizes=tuple(c.kernels),
                          expansions=tuple(c.expansions), width_mult=c.width_mult,
                          num_classes=splits.num_classes, input_size=splits.image_size)
    except ValueError as e:
        raise ConfigError(f"cannot build the {c.space} space: {e}") from None
    if c.space_file is not None:
        space = load_space_file(c.space_file, space, sampling=c.pocket_sampling)
    return space


def load_splits(c: TrainConfig) -> Splits:
    """The train/val/test splits `c` names (the same images every time for the same options)."""
    return load_data(c.data, c.data_dir, image_size=c.image_size, val_size=c.val_size, workers=c.workers)


def split_batches(splits: Splits, *, batch_size: int, calib_batches: int, seed: int, device,
                  channels_last: bool = False, workers: int | None = None):
    """(calibration, validation): factories of fresh batch iterables for `score_arch`.

    Calibration: the first `calib_batches` un-augmented training batches of a
    fixed shuffle (their statistics should match what validation feeds the BNs).
    Validation: the whole validation split. Neither ever reads the test split.
    """
    common = dict(epoch=0, seed=seed, device=device, channels_last=channels_last, workers=workers)

    def calibration():
        return itertools.islice(batches(splits.train, batch_size, train=True, augment=False, **common),
                                calib_batches)

    def validation():
        return batches(splits.val, max(batch_size, 256), train=False, **common)

    return calibration, validation


def resolve(config: TrainConfig | Mapping | None = None) -> Plan:
    """Fill in the unset options and check everything; nothing is written. Raises ConfigError and friends."""
    given = as_options(config)
    ranks = Ranks.from_env()
    checkpoint = load_checkpoint(given["resume"]) if "resume" in given else None
    base = {k: v for k, v in checkpoint["config"].items() if k not in JOB_KEYS} if checkpoint else {}
    # --backend and --fused are one choice: naming either replaces the other's inherited value
    if "backend" in given:
        base.pop("fused", None)
    if given.get("fused"):
        base.pop("backend", None)
    options = {**base, **given}
    data = options.get("data", DEFAULTS["data"])
    if data not in DATASET_DEFAULTS:
        raise ConfigError(f"--data {data!r} is unknown: choose one of {', '.join(DATASETS)}")
    known = {f.name for f in fields(TrainConfig)}
    merged = {**DEFAULTS, **DATASET_DEFAULTS[data], **{k: v for k, v in options.items() if k in known}}
    merged.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
    c = TrainConfig(**merged)
    c.kernels, c.expansions, c.eval_arch = list(c.kernels), list(c.expansions), list(c.eval_arch)
    # Before loading data: a run resumed with another --data should hear that, not a data error.
    if checkpoint is not None:
        current = json_ready(asdict(c))
        diffs = config_differences({**ADDED_IDENTITY, **checkpoint["config"]}, current, IDENTITY_KEYS)
        if diffs:
            listed = "; ".join(f"{flag(k)} {old!r} there, {new!r} now" for k, old, new in diffs)
            raise CheckpointError(f"checkpoint {checkpoint['path']} was trained with other settings ({listed}): "
                                  "drop those options to continue it, or start a fresh run in another --out")
        if checkpoint["epoch"] > c.epochs:
            raise CheckpointError(f"checkpoint {checkpoint['path']} is at epoch {checkpoint['epoch']}, past "
                                  f"its {c.epochs} epochs: it is damaged")
        saved_world = checkpoint.get("world_size", 1)
        if saved_world != ranks.world_size:
            raise CheckpointError(
                f"checkpoint {checkpoint['path']} was trained by {saved_world} process(es), this job has "
                f"{ranks.world_size}: another world size is another global batch (--batch-size is per rank), so "
                f"resume with {saved_world} in all (torchrun --nnodes x --nproc_per_node), or start a fresh run")
    _check_ranges(c)
    device = check_device(c.device, ranks)
    backend, note = choose_backend(c, device)
    if c.amp != "none" and not torch.amp.is_autocast_available(device.type):
        raise ConfigError(f"--amp {c.amp}: torch has no autocast for {device.type}; drop --amp")
    notes = []
    if checkpoint is not None:
        saved = checkpoint["config"]
        changed = [k for k in ROUNDING_KEYS if k in given and saved.get(k) != given[k]]
        if changed:
            notes.append("resuming with " + ", ".join(f"{flag(k)} {given[k]!r} (was {saved.get(k)!r})"
                                                      for k in changed)
                         + ": the run continues with other rounding (summation order), so it will not be "
                         "bit-identical to an uninterrupted one")

    splits = load_splits(c)
    c.image_size = splits.image_size
    if num_batches(splits.train, c.batch_size * ranks.world_size, train=True) == 0:
        per_rank = f" per rank, times {ranks.world_size} ranks," if ranks.world_size > 1 else ""
        raise ConfigError(f"--batch-size {c.batch_size}{per_rank} exceeds the {len(splits.train)} training "
                          "images: lower it")
    space = build_space(c, splits)
    archs = []
    for text in c.eval_arch:
        try:
            archs.append(space.parse(text))
        except ArchError as e:
            raise ArchError(f"--eval-arch {text!r} does not fit the {c.space} space: {e}") from None
    if c.arch is not None:
        try:
            monitor = space.parse(c.arch)
        except ArchError as e:
            raise ArchError(f"architecture {c.arch!r} does not fit the {c.space} space: {e}") from None
        c.arch, archs = str(monitor), []
    else:
        # The monitored arch is the first draw of the evaluation stream, so also the first sampled eval arch.
        eval_rng = random.Random(f"mixpath-eval-{c.seed}")
        sampled = [space.sample(eval_rng) for _ in range(max(1, c.eval_archs))]
        archs += sampled[:c.eval_archs]
        monitor = sampled[0]

    out = _check_out(c, checkpoint)
    return Plan(c, device, backend, note, splits, space, archs, monitor, out, ranks, checkpoint, notes)


# ---------------------------------------------------------------- the run

def _write_metrics(path: Path, history: list[dict]) -> None:
    # Rewritten whole from the history each epoch: after a crash or a resume it matches the checkpoint.
    atomic_write(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in history), binary=False)


class Run:
    """One training in progress: model, optimiser, schedule, sampler and history, and their checkpoint.
    Other trainers (mixpath.differentiable) extend it."""

    def __init__(self, plan: Plan):
        self.plan, self.c = plan, plan.config
        c, device = self.c, plan.device
        torch.manual_seed(c.seed)
        if plan.retraining:
            self.model = standalone(plan.space, plan.monitor_arch, layout=c.layout).to(device)
        else:
            self.model = SuperNet(plan.space, layout=c.layout, shadow_bn=c.shadow_bn).to(device)
        if c.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.set_backend(plan.backend)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=c.lr, momentum=c.momentum,
                                         weight_decay=c.weight_decay)
        # The release steps its cosine schedule once per epoch, reaching ~0 at the end.
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=c.epochs)
        self.scaler = torch.amp.GradScaler(device.type, enabled=c.amp == "fp16")
        # One stream of architectures, seeded alike on every rank: all ranks draw the same groups.
        self.sampler = random.Random(c.seed)
        self.sampling = None if plan.retraining else make_sampler(c.sampling, plan.space)
        self.epoch, self.history = 0, []
        if plan.checkpoint is not None:
            self._restore(plan.checkpoint)
        distributed.broadcast_state(self.model)

    def autocast(self):
        if self.c.amp == "none":
            return nullcontext()
        return torch.autocast(self.plan.device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[self.c.amp])

    # -- checkpoints
    def _state(self) -> dict:
        state = dict(epoch=self.epoch, config=json_ready(asdict(self.c)), space=self.plan.space.to_dict(),
                     model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                     scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                     sampler=self.sampler.getstate(), torch_rng=torch.get_rng_state(), history=self.history,
                     backend=self.plan.backend, device=str(self.plan.device),
                     world_size=self.plan.ranks.world_size)
        if self.plan.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.plan.device)
        return state

    def _restore(self, ckpt: dict) -> None:
        if ckpt["version"] < 2:
            raise CheckpointError(f"checkpoint {ckpt['path']} was written by an older mixpath (Shadow BN rows in "
                                  "one parameter); its optimizer state cannot continue here: search, rank or "
                                  "export it, or start a fresh run")
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            # An fp16 scaler's state is kept only when both runs use one (AMP may change on resume).
            if ckpt["scaler"] and self.scaler.is_enabled():
                self.scaler.load_state_dict(ckpt["scaler"])
            version, internal, gauss = ckpt["sampler"]
            self.sampler.setstate((version, tuple(internal), gauss))
            torch.set_rng_state(ckpt["torch_rng"])
            if self.plan.device.type == "cuda" and "cuda_rng" in ckpt:
                torch.cuda.set_rng_state(ckpt["cuda_rng"], self.plan.device)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"checkpoint {ckpt['path']} does not fit this supernet ({detail[:160]}); "
                                  "it is damaged: resume from an intact copy or start a fresh run") from None
        self.epoch, self.history = ckpt["epoch"], list(ckpt["history"])

    # -- evaluation
    def _batches(self, split) -> Callable:
        c = self.c
        return lambda: batches(split, max(c.batch_size, 256), train=False, epoch=0, seed=c.seed,
                               device=self.plan.device, channels_last=c.channels_last, workers=c.workers)

    def score(self, arch: Arch) -> float:
        """Validation accuracy of `arch` after BN recalibration on training batches; the supernet is untouched.

        When retraining, the network's own accuracy on the validation split (its BNs are its own).
        """
        c = self.c
        with self.autocast():
            if self.plan.retraining:
                return accuracy(self.model, None, self._batches(self.plan.splits.val)())
            calibration, validation = split_batches(self.plan.splits, batch_size=c.batch_size,
                                                    calib_batches=c.calib_batches, seed=c.seed,
                                                    device=self.plan.device, channels_last=c.channels_last,
                                                    workers=c.workers)
            return score_arch(self.model, arch, calibration, validation)

    def test_accuracy(self) -> float:
        """Accuracy on the test split: read once, at the end of a retraining, for reporting only."""
        with self.autocast():
            return accuracy(self.model, None, self._batches(self.plan.splits.test)())

    # -- training
    def _step_archs(self) -> tuple[str, list]:
        """(the step's whole group as text, this rank's share of it); ("", [None]) when retraining."""
        if self.plan.retraining:
            return "", [None]
        ranks = self.plan.ranks
        group = self.sampling.group(self.sampler)
        return "/".join(map(str, group)), rank_share(group, ranks.rank, ranks.world_size)

    def train_epoch(self) -> dict:
        c, plan, model, ranks = self.c, self.plan, self.model, self.plan.ranks
        start = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        params = list(model.parameters())
        model.train()
        # This rank's shard of each global batch: the same images, in the same order, as one process would take.
        data = batches(plan.splits.train, plan.global_batch, train=True, epoch=self.epoch, seed=c.seed,
                       device=plan.device, augment=c.augment, channels_last=c.channels_last, workers=c.workers,
                       shard=(ranks.rank, ranks.world_size))
        # Sums stay on the device; reading them only every few steps keeps GPUs from syncing each step.
        # Non-finite losses (fp16 overflow, which GradScaler skips) are counted apart from the mean.
        loss_sum = torch.zeros((), device=plan.device)
        finite_seen = torch.zeros((), device=plan.device)
        nonfinite = torch.zeros((), device=plan.device, dtype=torch.long)
        correct = torch.zeros((), device=plan.device, dtype=torch.long)
        seen = 0
        bar = tqdm(data, total=len(data), desc=f"epoch {self.epoch + 1}/{c.epochs}", leave=False,
                   disable=None if ranks.main else True, dynamic_ncols=True, file=sys.stderr)
        for step, (x, y) in enumerate(bar):
            group, archs = self._step_archs()
            self.optimizer.zero_grad(set_to_none=True)
            step_finite = torch.ones((), device=plan.device, dtype=torch.bool)
            for arch in archs:  # a group's passes accumulate into one update: the mean of their losses
                with self.autocast():
                    logits = model(x, arch)
                    loss = F.cross_entropy(logits, y)
                self.scaler.scale(loss / len(archs) if len(archs) > 1 else loss).backward()
                finite = torch.isfinite(loss.detach())
                step_finite &= finite
                loss_sum += torch.where(finite, loss.detach().float() * y.numel(), 0.0)
                finite_seen += finite * y.numel()
                correct += (logits.argmax(1) == y).sum()
                seen += y.numel()
            nonfinite += ~step_finite
            distributed.average_gradients(params, group)
            if c.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if step % 10 == 0 or step == len(data) - 1:
                bar.set_postfix(loss=f"{loss_sum.item() / max(finite_seen.item(), 1):.3f}",
                                acc=f"{correct.item() / seen:.3f}", lr=f"{lr:.4g}")
        bar.close()
        train_seconds = time.perf_counter() - start
        # Epoch statistics over all ranks; a non-finite step counts once per rank that saw it.
        loss_total, finite_total, nonfinite_total, correct_total, seen_total = distributed.all_sum(
            [loss_sum.item(), finite_seen.item(), nonfinite.item(), correct.item(), seen], plan.device)
        weights_ok = math.isfinite(sum(p.detach().float().sum() for p in params).item())
        if not weights_ok or finite_total == 0:
            raise TrainingError(f"training diverged in epoch {self.epoch + 1} (non-finite "
                                f"{'weights' if not weights_ok else 'loss'}): lower --lr (now {c.lr}) or "
                                f"--grad-clip; the last checkpoint is unchanged")
        self.scheduler.step()
        self.epoch += 1
        # Rank 0 alone scores; the others wait for it at their next collective.
        val_acc = self.score(plan.monitor_arch) if ranks.main else None
        record = dict(epoch=self.epoch, train_loss=loss_total / finite_total, train_acc=correct_total / seen_total,
                      lr=lr, val_acc=val_acc, val_arch=str(plan.monitor_arch), nonfinite_steps=int(nonfinite_total),
                      world_size=ranks.world_size, global_batch=plan.global_batch,
                      images_per_second=round(len(data) * plan.global_batch / train_seconds, 1),
                      seconds=round(time.perf_counter() - start, 3))
        self.history.append(record)
        return record


def _describe_config(plan: Plan) -> str:
    c, world = plan.config, plan.ranks.world_size
    what = (f"stand-alone {c.arch} ({c.layout} layout), from scratch" if c.arch is not None else
            f"supernet: {c.layout} layout, shadow BN {'on' if c.shadow_bn else 'off'}, {c.sampling} sampling")
    batch = f"batch {c.batch_size}" if world == 1 else \
        f"batch {c.batch_size} per rank x {world} ranks = {plan.global_batch} global (BN statistics per rank)"
    return (f"{what}; SGD lr {c.lr} momentum {c.momentum} wd {c.weight_decay}, cosine over {c.epochs} epochs, "
            f"{batch}, clip {c.grad_clip or 'off'}, seed {c.seed}, augment "
            f"{'on' if c.augment else 'off'}" + (f", amp {c.amp}" if c.amp != "none" else ""))


@contextmanager
def _errors_named_by_rank(ranks: Ranks):
    """Under torchrun each rank reports its own one-line error, starting with 'rank R of W'."""
    try:
        yield
    except (RankFailure, ConfigError, DataError, ArchError, CheckpointError, OutputError, TrainingError) as e:
        kind = TrainingError if isinstance(e, RankFailure) else type(e)
        if ranks.world_size == 1 and kind is type(e):
            raise
        raise kind(f"{ranks}: {e}") from None


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises `Terminated` in the main thread, so a scheduler's kill ends the job as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _supernet_summary(plan: Plan, run: Run, log) -> dict:
    c = plan.config
    results = []
    for arch in tqdm(plan.eval_archs, desc="evaluating subnets", leave=False, disable=None, file=sys.stderr):
        results.append({"arch": str(arch), "val_acc": run.score(arch), "flops": plan.space.flops(arch),
                        "params": plan.space.params(arch, c.layout)})
    accs = [r["val_acc"] for r in results]
    summary = {"val_acc": sum(accs) / len(accs), "val_acc_per_arch": {r["arch"]: r["val_acc"] for r in results},
               "val_acc_min": min(accs), "val_acc_max": max(accs), "archs": results, "shadow_bn": c.shadow_bn,
               "calib_batches": c.calib_batches}
    log(f"val_acc {summary['val_acc']:.4f} (mean of {len(accs)} subnets, BN recalibrated; "
        f"min {summary['val_acc_min']:.4f}, max {summary['val_acc_max']:.4f})")
    return summary


def _retrain_summary(plan: Plan, run: Run, log) -> dict:
    arch, c = plan.monitor_arch, plan.config
    summary = {"arch": str(arch), "val_acc": run.score(arch), "test_acc": run.test_accuracy(),
               "flops": plan.space.flops(arch), "params": plan.space.params(arch, c.layout), "seed": c.seed}
    log(f"{arch}: val_acc {summary['val_acc']:.4f}, test_acc {summary['test_acc']:.4f} (stand-alone, "
        f"{summary['flops'] / 1e6:.2f} MFLOPs, {summary['params'] / 1e6:.3f} M params)")
    return summary


def train(config: TrainConfig | Mapping | None = None, *, log: Callable[[str], None] = print) -> dict:
    """Train (or continue) a supernet and score subnets; returns the summary (also written to summary.json).

    With `config.arch` set, retrains that architecture alone instead (see `retrain`).
    With `stop_after`, returns {"stopped": True, ...} after that many epochs, leaving last.pt to resume from.
    Raises ConfigError, DataError, ArchError, CheckpointError or OutputError (before writing anything),
    TrainingError, or `Terminated` / KeyboardInterrupt (after saying what is left to resume).
    Under torchrun every rank calls it; rank 0 logs, writes and returns the summary, the others return
    {"rank": R, "world_size": W, "epoch": N} once training ends.
    """
    wall = time.perf_counter()
    ranks = Ranks.from_env()
    with _errors_named_by_rank(ranks):
        plan = resolve(config)
        c = plan.config
        threads = torch.get_num_threads()
        if c.threads is not None:
            torch.set_num_threads(c.threads)
        # Rank 0 alone holds the folder; it locks it before the group forms, and no rank trains (so rank 0
        # writes nothing) until every rank has passed its checks and joined.
        folder = OutputFolder(plan.out or new_run_dir()) if ranks.main else nullcontext()
        try:
            with folder as folder, sigterm_as_interrupt(), \
                    distributed.process_group(ranks, plan.device, c.dist_timeout):
                return _train(plan, folder, wall, log if ranks.main else _quiet)
        finally:
            torch.set_num_threads(threads)


def _quiet(_line: str) -> None:
    pass


def _resume_hint(run: Run, ckpt_path: Path | None) -> str:
    c = run.c
    if ckpt_path is None:
        return "rank 0 keeps the last finished epoch in its --out: continue with --resume there"
    if ckpt_path.exists():
        return f"epoch {run.epoch}/{c.epochs} is saved in {ckpt_path}: continue with --resume {ckpt_path}"
    return "no epoch had finished, so there is nothing to resume: start the run again"


def _epoch_line(r: dict) -> str:
    return (f"epoch {r['epoch']}/{r['epochs']}  loss {r['train_loss']:.4f}  acc {r['train_acc']:.4f}  "
            f"val {r['val_acc']:.4f}  lr {r['lr']:.4g}  {r['images_per_second']:.0f} img/s  {r['seconds']:.1f}s")


def run_epochs(run: Run, ckpt_path: Path | None, metrics_path: Path | None, log,
               epoch_line: Callable[[dict], str]) -> dict | None:
    """Train `run` to its last epoch, saving the checkpoint and metrics after each (where this rank writes).

    Returns the summary of a run stopped by --stop-after, else None. Ctrl-C, SIGTERM and a failed rank end
    it with a line saying what can be resumed. `run` is a `Run` (or a subclass: the differentiable search).
    """
    plan, c = run.plan, run.c
    if plan.checkpoint is not None:
        log(f"resuming {plan.checkpoint['path']} after epoch {run.epoch}/{c.epochs}")
        if metrics_path is not None:
            _write_metrics(metrics_path, run.history)
    ran = 0
    while run.epoch < c.epochs:
        if c.stop_after is not None and ran == c.stop_after:
            log(f"stopped after {ran} epoch(s) at epoch {run.epoch}/{c.epochs} (--stop-after); continue with: "
                f"--resume {ckpt_path}")
            return {"stopped": True, "epoch": run.epoch, "epochs": c.epochs,
                    "checkpoint": None if ckpt_path is None else str(ckpt_path), "history": run.history}
        try:
            r = run.train_epoch()
        except KeyboardInterrupt as e:
            if plan.ranks.main:  # torchrun signals every rank: one of them says it
                what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
                print(f"{what} in epoch {run.epoch + 1}; {_resume_hint(run, ckpt_path)}", file=sys.stderr)
            raise
        except RankFailure as e:
            raise TrainingError(f"{e}; {_resume_hint(run, ckpt_path)}") from None
        ran += 1
        if ckpt_path is None:
            continue
        save_checkpoint(ckpt_path, run._state())
        _write_metrics(metrics_path, run.history)
        log(epoch_line({**r, "epochs": c.epochs}))
    return None


def _train(plan: Plan, folder: OutputFolder | None, wall: float, log) -> dict:
    """The run; `folder` is None on ranks other than 0, which write nothing."""
    c, ranks = plan.config, plan.ranks
    out = folder.path if folder is not None else None
    ckpt_path = metrics_path = None
    if out is not None:
        c.out = str(out)
        ckpt_path, metrics_path = out / CHECKPOINT_NAME, out / METRICS_NAME
    run = Run(plan)
    if out is not None and c.force and plan.checkpoint is None:
        for name in RUN_FILES:  # --force: the old run's files go before the new run writes its own
            (out / name).unlink(missing_ok=True)
    log(describe(plan.splits))
    log(plan.space.describe())
    log(_describe_config(plan))
    log(f"device {plan.device}, {plan.backend_note}"
        + ("; the official layout has no fused op, so the backend is unused" if c.layout == "official" else "")
        + (f"; {ranks.world_size} processes (torchrun), rank 0 writes" if ranks.launched else "")
        + f"; writing {out}")
    for note in plan.notes:
        log(f"note: {note}")
    stopped = run_epochs(run, ckpt_path, metrics_path, log, _epoch_line)
    if stopped is not None:
        return stopped

    if out is None:  # the final evaluation runs once, on rank 0
        return {"rank": ranks.rank, "world_size": ranks.world_size, "epoch": run.epoch}
    start = time.perf_counter()
    scores = (_retrain_summary if plan.retraining else _supernet_summary)(plan, run, log)
    last = run.history[-1] if run.history else {}
    summary = {
        **scores,
        "epochs": run.epoch,
        "seconds": round(time.perf_counter() - wall, 3),
        "train_seconds": round(sum(r["seconds"] for r in run.history), 3),
        "eval_seconds": round(time.perf_counter() - start, 3),
        "train_loss": last.get("train_loss"),
        "train_acc": last.get("train_acc"),
        "backend": plan.backend,
        "device": str(plan.device),
        "world_size": ranks.world_size,
        "global_batch": plan.global_batch,
        "layout": c.layout,
        "space": plan.space.to_dict(),
        "data": c.data,
        "checkpoint": str(ckpt_path),
        "config": json_ready(asdict(c)),
    }
    # A finished run's result is never replaced: evaluating it again writes summary.2.json, ...
    name = folder.free_name(SUMMARY_NAME)
    write_json(out / name, summary)
    log(f"done after {run.epoch} epochs, {summary['seconds']:.1f}s, {plan.backend} on {plan.device}: {out / name}"
        + (f" ({SUMMARY_NAME} holds the earlier evaluation)" if name != SUMMARY_NAME else ""))
    return summary


def retrain(config: TrainConfig | Mapping | None = None, *, log: Callable[[str], None] = print) -> dict:
    """Train `config.arch` stand-alone from scratch (fresh release initialisation, no weight sharing or sampling).

    Same data, device, backend, AMP, checkpoints, resume and progress as `train`; the summary holds `arch`,
    `val_acc` (the validation split, what ranking compares against), `test_acc` (the test split, read only
    here, for reporting), `flops`, `params`, `epochs`, `seconds` and `seed`.
    """
    options = as_options(config)
    if "arch" not in options and "resume" not in options:
        raise ConfigError("retrain needs the architecture to train: pass arch='t:k,k|...' (or resume=RUN)")
    return train(options, log=log)
