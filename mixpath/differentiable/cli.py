"""The differentiable mode's command-line options and the dispatch between `mixpath train`'s two modes.

cli/train.py calls `add_differentiable_arguments(parser)` when it builds its
parser and `dispatch(options)` (the parsed options, unset ones absent) to run.
"""
from __future__ import annotations

import argparse

from ..checkpoint import load_checkpoint
from ..training import ConfigError, TrainConfig, flag, train
from .train import DIFFERENTIABLE_DEFAULTS, DIFFERENTIABLE_KEYS, MODES, train_differentiable

__all__ = ["add_differentiable_arguments", "dispatch"]


def _float_pair(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers like 0.5,0.999, got {text!r}")
    return values


def add_differentiable_arguments(p: argparse.ArgumentParser) -> None:
    """--mode and the options of --mode differentiable (BNAS-v2's defaults)."""
    d = DIFFERENTIABLE_DEFAULTS
    p.add_argument("--mode", choices=MODES, help="one-shot: sample one multi-path architecture per step (default); "
                   "differentiable: train softmax weights over kernels and expansions with the weights "
                   "(each layer one merged conv), then derive an architecture")
    g = p.add_argument_group("--mode differentiable (BNAS-v2's confident learning rate and partial channels)")
    g.add_argument("--arch-lr", type=float, metavar="LR", help=f"Adam learning rate of the architecture logits "
                   f"(default {d['arch_lr']})")
    g.add_argument("--confident-lr", action=argparse.BooleanOptionalAction, help="scale --arch-lr by "
                   "((epoch + 1) / epochs) ** --clr-power (default on; --no-confident-lr: constant)")
    g.add_argument("--clr-power", type=float, metavar="P", help=f"the confident rate's power (default "
                   f"{d['clr_power']:g})")
    g.add_argument("--arch-betas", type=_float_pair, metavar="B1,B2", help="Adam betas of the logits (default "
                   + ",".join(map(str, d["arch_betas"])) + ")")
    g.add_argument("--arch-weight-decay", type=float, metavar="WD", help=f"(default {d['arch_weight_decay']})")
    g.add_argument("--partial-channels", type=int, metavar="K", help="1/K of each layer's hidden channels go "
                   "through the mixed conv, the rest bypass it, then a channel shuffle (default 1 = off; "
                   "BNAS-v2: 4)")
    g.add_argument("--keep-threshold", type=float, metavar="W", help="derive: keep each layer's kernels whose "
                   "weight exceeds W, at most --max-paths, at least one (default 1 / the number of kernels)")


def dispatch(options: dict) -> dict:
    """Run `mixpath train`'s mode: --mode, else a resumed run's own, else one-shot; the summary."""
    options = dict(options)
    mode = options.pop("mode", None)
    if "resume" in options:
        saved = load_checkpoint(options["resume"])["config"].get("mode", "one-shot")
        if mode is not None and mode != saved:
            raise ConfigError(f"--resume {options['resume']} is a {saved} run: drop --mode {mode} or pass "
                              f"--mode {saved}")
        mode = saved
    if mode == "differentiable":
        return train_differentiable(options)
    given = [flag(k) for k in DIFFERENTIABLE_KEYS if k in options]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to --mode differentiable only: add --mode differentiable "
                          "or drop them")
    return train(TrainConfig(**options))
