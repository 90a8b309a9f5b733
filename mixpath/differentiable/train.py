"""`train_differentiable(config)`: bi-level differentiable search over a MixPath space (BNAS-v2's fixes).

The weights (a `SuperNet` with one BN row, see layers.py) and the architecture
logits train in alternation, as in DARTS' first-order form: each step, one
batch of the training split's architecture half moves the logits (Adam with the
confident learning rate, schedule.py), then one batch of its weights half moves
the weights (the project's SGD recipe: lr, momentum, weight decay, cosine,
clipping). The halves are a seeded stratified split of the training split; the
validation split is never trained on: it scores the derived architecture
(`val_acc`, BN recalibrated as for any subnet) and the mixed network
(`mixed_val_acc`) each epoch. The test split is never read.

Everything else is `mixpath.training`'s: options, defaults, checks, data,
output folders, checkpoints and resume. A resumed run is bit-identical to an
uninterrupted one on the same device and backend: the checkpoint adds the
logits and their optimizer to what a one-shot run keeps.

Edge normalisation (BNAS-v2's third fix) weighs the edges INTO a node of a
cell by a second softmax. MixPath's spaces are chains: every layer has exactly
one input, so there is nothing to normalise and this module leaves it out.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..checkpoint import CheckpointError, config_differences
from ..data import ImageSet, batches, describe, num_batches
from ..data.split import stratified_split
from ..evaluate import accuracy
from ..checkpoint import json_ready, write_json
from ..outdir import OutputFolder, new_run_dir
from ..training import (CHECKPOINT_NAME, METRICS_NAME, RUN_FILES, SUMMARY_NAME, ConfigError, Plan, Run, TrainConfig,
                        TrainingError, as_options, flag, resolve, run_epochs, sigterm_as_interrupt)
from .derive import collapse_stats, derive_arch, layer_weights, plot_weights
from .layers import ArchitectureLogits, DifferentiableNet, indivisible_widths
from .schedule import arch_lr, confidence

__all__ = ["DifferentiableConfig", "DIFFERENTIABLE_DEFAULTS", "DIFFERENTIABLE_KEYS", "MODES", "PLOT_NAME",
           "split_halves", "train_differentiable"]

MODES = ("one-shot", "differentiable")
PLOT_NAME = "weights.png"


@dataclass
class DifferentiableConfig(TrainConfig):
    """TrainConfig's options plus the differentiable search's; None means unset, as there."""

    arch_lr: float | None = None
    confident_lr: bool | None = None
    clr_power: float | None = None
    arch_betas: list[float] | None = None
    arch_weight_decay: float | None = None
    partial_channels: int | None = None
    keep_threshold: float | None = None


# BNAS-v2's constants; partial channels off (BNAS-v2 uses 4); keep_threshold None: 1 / the number of kernels,
# i.e. keep the kernels weighted above a uniform softmax.
DIFFERENTIABLE_DEFAULTS = dict(arch_lr=3e-4, confident_lr=True, clr_power=2.0, arch_betas=[0.5, 0.999],
                               arch_weight_decay=1e-3, partial_channels=1, keep_threshold=None)
DIFFERENTIABLE_KEYS = tuple(DIFFERENTIABLE_DEFAULTS)
# keep_threshold only reads the logits: a resumed run may derive with another.
IDENTITY_KEYS = tuple(k for k in DIFFERENTIABLE_KEYS if k != "keep_threshold")
# One-shot options with no meaning here: what to use instead.
NOT_HERE = {"arch": "retrain an architecture with `mixpath retrain`",
            "shadow_bn": "a differentiable layer uses one BN row (see mixpath/differentiable/layers.py)",
            "sampling": "the logits choose the architecture: nothing is sampled",
            "eval_archs": "the run scores its derived architecture", "eval_arch": "the run scores its derived "
            "architecture; score others with `mixpath search` on the run"}


def split_halves(train: ImageSet, seed: int) -> tuple[ImageSet, ImageSet]:
    """(weights half, architecture half) of the training split: stratified, the same for the same seed."""
    rest, half = stratified_split(train.labels.numpy(), [len(train) // 2], seed, "training")

    def subset(idx) -> ImageSet:
        if hasattr(train, "images"):
            picked = torch.from_numpy(idx)
            return dataclasses.replace(train, images=train.images[picked], labels=train.labels[picked],
                                       indices=None if train.indices is None else train.indices[picked])
        return dataclasses.replace(train, samples=[train.samples[i] for i in idx])

    return subset(rest), subset(half)


def _options(config) -> dict:
    """The set options of `config` (None dropped); ConfigError for unknown ones, as `mixpath.training` does."""
    config = dict(asdict(config) if dataclasses.is_dataclass(config) else config or {})
    search = {k: config.pop(k) for k in (*DIFFERENTIABLE_KEYS, "mode") if config.get(k) is not None}
    rest = {k: v for k, v in config.items() if k not in (*DIFFERENTIABLE_KEYS, "mode")}
    return {**as_options(rest), **search}


def _check_search(o: dict, plan: Plan) -> None:
    def need(ok: bool, key: str, what: str):
        if not ok:
            raise ConfigError(f"{flag(key)} {o[key]!r} is out of range: {what}")

    need(math.isfinite(o["arch_lr"]) and o["arch_lr"] > 0, "arch_lr", "a positive learning rate (BNAS-v2: 3e-4)")
    need(math.isfinite(o["clr_power"]) and o["clr_power"] >= 0, "clr_power", "a power >= 0 (BNAS-v2: 2)")
    need(len(o["arch_betas"]) == 2 and all(0 <= b < 1 for b in o["arch_betas"]), "arch_betas",
         "two Adam betas in [0, 1), e.g. 0.5,0.999")
    need(math.isfinite(o["arch_weight_decay"]) and o["arch_weight_decay"] >= 0, "arch_weight_decay",
         "weight decay must be >= 0 (BNAS-v2: 1e-3)")
    need(o["partial_channels"] >= 1, "partial_channels", "1 (off) or more, e.g. 4 as in BNAS-v2")
    bad = indivisible_widths(plan.space, o["partial_channels"])
    need(not bad, "partial_channels", f"it must divide every hidden width of the space; {', '.join(map(str, bad))} "
         "are not multiples: choose a divisor (e.g. 2) or another --width-mult")
    need(0 <= o["keep_threshold"] < 1, "keep_threshold", "a softmax weight in [0, 1)")


def _resolve(config) -> tuple[Plan, dict]:
    """(the one-shot plan, the search options), all checked; nothing is written."""
    given = _options(config)
    given.pop("mode", None)
    search = {k: given.pop(k) for k in DIFFERENTIABLE_KEYS if k in given}
    for key, instead in NOT_HERE.items():
        if key in given:
            raise ConfigError(f"{flag(key)} does not apply to --mode differentiable: {instead}")
    if given.get("layout", "mixpath") != "mixpath":
        raise ConfigError("--layout official does not apply to --mode differentiable: it merges the kernels in "
                          "the fused op, which needs the mixpath layout")
    if given.get("amp", "none") != "none":
        raise ConfigError(f"--amp {given['amp']} is not supported by --mode differentiable yet: drop --amp")
    # a resumed run takes shadow_bn (False) from its checkpoint, so a one-shot one meets the mode check below
    plan = resolve(given if "resume" in given else {**given, "shadow_bn": False})
    if plan.ranks.world_size > 1:
        raise ConfigError("--mode differentiable runs in one process: start it without torchrun")
    saved = {}
    if plan.checkpoint is not None:
        saved = plan.checkpoint["config"]
        if saved.get("mode") != "differentiable":
            raise CheckpointError(f"checkpoint {plan.checkpoint['path']} is a one-shot supernet run: continue it "
                                  "with --mode one-shot")
    options = {**DIFFERENTIABLE_DEFAULTS, **{k: saved[k] for k in DIFFERENTIABLE_KEYS if k in saved}, **search}
    options["arch_betas"] = [float(b) for b in options["arch_betas"]]
    if options["keep_threshold"] is None:
        options["keep_threshold"] = 1 / len(plan.space.kernel_sizes)
    if saved:
        diffs = config_differences(saved, options, IDENTITY_KEYS)
        if diffs:
            listed = "; ".join(f"{flag(k)} {old!r} there, {new!r} now" for k, old, new in diffs)
            raise CheckpointError(f"checkpoint {plan.checkpoint['path']} was searched with other settings "
                                  f"({listed}): drop those options to continue it, or start a fresh run")
    _check_search(options, plan)
    half = len(plan.splits.train) // 2
    if num_batches(plan.splits.train, plan.config.batch_size * 2, train=True) == 0:
        raise ConfigError(f"--batch-size {plan.config.batch_size} exceeds the {half} images of each half of the "
                          "training split (weights and architecture train on separate halves): lower it")
    return plan, options


class _DifferentiableRun(Run):
    """`Run`'s supernet, SGD, cosine schedule and checkpoint state, plus the logits, their Adam and the halves."""

    def __init__(self, plan: Plan, options: dict):
        self.options = options
        self.halves = split_halves(plan.splits.train, plan.config.seed)
        self.logits = ArchitectureLogits(plan.space).to(plan.device)
        self.arch_optimizer = torch.optim.Adam(self.logits.parameters(), lr=options["arch_lr"],
                                               betas=tuple(options["arch_betas"]),
                                               weight_decay=options["arch_weight_decay"])
        super().__init__(plan)  # restores a checkpoint through self._restore, so the logits exist first
        self.network = DifferentiableNet(self.model, self.logits, options["partial_channels"])

    def _state(self) -> dict:
        state = super()._state()
        state["config"] = {**state["config"], **json_ready(self.options), "mode": "differentiable"}
        state.update(arch_logits=self.logits.state_dict(), arch_optimizer=self.arch_optimizer.state_dict())
        return state

    def _restore(self, ckpt: dict) -> None:
        super()._restore(ckpt)
        try:
            self.logits.load_state_dict(ckpt["arch_logits"])
            self.arch_optimizer.load_state_dict(ckpt["arch_optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {ckpt['path']} lacks intact architecture logits ({type(e).__name__}"
                                  f"); it is damaged: resume from an intact copy or start a fresh run") from None

    def derived(self):
        weights = layer_weights(self.logits)
        arch = derive_arch(self.plan.space, weights["kernel_weights"], weights["expansion_weights"],
                           self.options["keep_threshold"])
        return arch, weights

    def train_epoch(self) -> dict:
        c, plan, o = self.c, self.plan, self.options
        start = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        a_lr = arch_lr(o["arch_lr"], self.epoch, c.epochs, o["clr_power"], o["confident_lr"])
        for group in self.arch_optimizer.param_groups:
            group["lr"] = a_lr
        self.network.train()
        common = dict(train=True, epoch=self.epoch, seed=c.seed, device=plan.device, augment=c.augment,
                      channels_last=c.channels_last, workers=c.workers)
        weight_data, arch_data = (batches(half, c.batch_size, **common) for half in self.halves)
        steps = min(len(weight_data), len(arch_data))
        weights, logits = list(self.model.parameters()), list(self.logits.parameters())
        sums = torch.zeros(3, device=plan.device)  # weight loss * n, arch loss * n, correct
        seen = 0
        bar = tqdm(zip(weight_data, arch_data), total=steps, desc=f"epoch {self.epoch + 1}/{c.epochs}",
                   leave=False, disable=None, dynamic_ncols=True, file=sys.stderr)
        for step, ((xw, yw), (xa, ya)) in enumerate(bar):
            # first-order DARTS: the logits step on the architecture half with the weights held ...
            self.arch_optimizer.zero_grad(set_to_none=True)
            arch_loss = F.cross_entropy(self.network(xa), ya)
            arch_loss.backward(inputs=logits)
            self.arch_optimizer.step()
            # ... then the weights step on the weights half with the logits held
            self.optimizer.zero_grad(set_to_none=True)
            out = self.network(xw)
            loss = F.cross_entropy(out, yw)
            loss.backward(inputs=weights)
            if c.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(weights, c.grad_clip)
            self.optimizer.step()
            sums += torch.stack([loss.detach() * yw.numel(), arch_loss.detach() * ya.numel(),
                                 (out.argmax(1) == yw).sum()])
            seen += yw.numel()
            if step % 10 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{sums[0].item() / seen:.3f}", arch_loss=f"{sums[1].item() / seen:.3f}")
        bar.close()
        train_loss, arch_loss, correct = (sums / seen).tolist()
        finite = all(math.isfinite(v) for v in (train_loss, arch_loss)) and math.isfinite(
            sum(p.detach().float().sum() for p in weights + logits).item())
        if not finite:
            raise TrainingError(f"training diverged in epoch {self.epoch + 1}: lower --lr (now {c.lr}) or "
                                f"--arch-lr (now {o['arch_lr']}); the last checkpoint is unchanged")
        self.scheduler.step()
        self.epoch += 1
        arch, weights_now = self.derived()
        record = dict(epoch=self.epoch, train_loss=train_loss, train_acc=correct, arch_loss=arch_loss, lr=lr,
                      arch_lr=a_lr, confidence=confidence(self.epoch - 1, c.epochs, o["clr_power"]),
                      val_acc=self.score(arch), mixed_val_acc=accuracy(self.network, None,
                                                                       self._batches(plan.splits.val)()),
                      derived_arch=str(arch), **weights_now, **collapse_stats(**weights_now),
                      seconds=round(time.perf_counter() - start, 3))
        self.history.append(record)
        return record


def _describe(c: TrainConfig, o: dict) -> str:
    schedule = (f"confident lr {o['arch_lr']} * ((epoch + 1) / {c.epochs}) ** {o['clr_power']}"
                if o["confident_lr"] else f"constant lr {o['arch_lr']}")
    return (f"differentiable search: weights SGD lr {c.lr} momentum {c.momentum} wd {c.weight_decay} cosine over "
            f"{c.epochs} epochs, clip {c.grad_clip or 'off'}; logits Adam {schedule}, betas "
            f"{tuple(o['arch_betas'])}, wd {o['arch_weight_decay']}; partial channels "
            f"{'off' if o['partial_channels'] == 1 else '1/' + str(o['partial_channels'])}; batch {c.batch_size}, "
            f"seed {c.seed}; derive with keep threshold {o['keep_threshold']:.3g}")


def train_differentiable(config: DifferentiableConfig | Mapping | None = None, *,
                         log: Callable[[str], None] = print) -> dict:
    """Search `config`'s space differentiably; returns the summary (also written to summary.json).

    The summary's `derived_arch` is a compact architecture string for `mixpath retrain` / `export`;
    metrics.jsonl holds, per epoch, the softmax weights, the derived arch, the collapse statistics and the
    scores; weights.png plots the weights. Errors and `stop_after` as `mixpath.training.train`.
    """
    wall = time.perf_counter()
    plan, options = _resolve(config)
    c = plan.config
    threads = torch.get_num_threads()
    if c.threads is not None:
        torch.set_num_threads(c.threads)
    try:
        with OutputFolder(plan.out or new_run_dir()) as folder, sigterm_as_interrupt():
            return _search(plan, options, folder, wall, log)
    finally:
        torch.set_num_threads(threads)


def _epoch_line(r: dict) -> str:
    return (f"epoch {r['epoch']}/{r['epochs']}  loss {r['train_loss']:.4f}  arch loss {r['arch_loss']:.4f}  "
            f"derived {r['derived_arch']}  val {r['val_acc']:.4f} (mixed {r['mixed_val_acc']:.4f})  "
            f"arch lr {r['arch_lr']:.3g}  {r['seconds']:.1f}s")


def _search(plan: Plan, options: dict, folder: OutputFolder, wall: float, log) -> dict:
    c, out = plan.config, folder.path
    c.out = str(out)
    ckpt_path, metrics_path = out / CHECKPOINT_NAME, out / METRICS_NAME
    run = _DifferentiableRun(plan, options)
    if c.force and plan.checkpoint is None:
        for name in RUN_FILES + (PLOT_NAME,):
            (out / name).unlink(missing_ok=True)
    log(describe(plan.splits) + f"; weights and logits train on halves of {len(run.halves[0])} and "
        f"{len(run.halves[1])} training images")
    log(plan.space.describe())
    log(_describe(c, options))
    log(f"device {plan.device}, {plan.backend_note}; writing {out}")
    for note in plan.notes:
        log(f"note: {note}")
    stopped = run_epochs(run, ckpt_path, metrics_path, log, _epoch_line)
    if stopped is not None:
        return stopped

    arch, weights = run.derived()
    plot = plot_weights(run.history, plan.space, out / PLOT_NAME)
    last = run.history[-1]
    summary = {"mode": "differentiable", "derived_arch": str(arch), "val_acc": run.score(arch),
               "mixed_val_acc": last["mixed_val_acc"], "flops": plan.space.flops(arch),
               "params": plan.space.params(arch, c.layout), **weights, **collapse_stats(**weights),
               "keep_threshold": options["keep_threshold"], "epochs": run.epoch,
               "seconds": round(time.perf_counter() - wall, 3),
               "train_seconds": round(sum(r["seconds"] for r in run.history), 3), "train_loss": last["train_loss"],
               "backend": plan.backend, "device": str(plan.device), "layout": c.layout,
               "space": plan.space.to_dict(), "data": c.data, "checkpoint": str(ckpt_path), "plot": str(plot),
               "config": {**json_ready(asdict(c)), **json_ready(options), "mode": "differentiable"}}
    name = folder.free_name(SUMMARY_NAME)
    write_json(out / name, summary)
    log(f"derived {arch}: val_acc {summary['val_acc']:.4f} (supernet, BN recalibrated), "
        f"{summary['flops'] / 1e6:.2f} MFLOPs; retrain it with `mixpath retrain {out / name}`")
    log(f"done after {run.epoch} epochs, {summary['seconds']:.1f}s: {out / name}, {plot.name}")
    return summary
