"""`mixpath retrain ARCH --out DIR`: train one architecture stand-alone from scratch (`mixpath.training.retrain`).

The ground truth of ranking: fresh release initialisation, no weight sharing, no
sampling, the same data, device, backend, AMP, checkpoint, resume and progress
machinery as `mixpath train`, and by default the same recipe as `train` for the
dataset. `--from RUN` takes the data and the search space (space, kernels,
expansions, width, layout, val split) from a supernet's run, so the retrained
network is exactly a subnet of that supernet; a --from-front FILE of
`mixpath search` implies its RUN.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..training import TrainConfig, retrain
from .common import Parser, UsageError, add_arch_source, add_subcommand, guarded, parser_options, read_arch
from .train import add_arguments

HELP = "train one architecture from scratch (ground truth for ranking)"
# What a supernet run fixes about the network and its data.
FROM_RUN_KEYS = ("data", "data_dir", "val_size", "image_size", "space", "space_file", "max_paths", "kernels",
                 "expansions", "width_mult", "layout")
SEARCH_SETTINGS = "search.json"

EPILOG = """\
outputs in --out DIR: last.pt, metrics.jsonl (per epoch: loss, train and validation
accuracy) and summary.json: arch, val_acc (the validation split: what `mixpath rank`
compares against), test_acc (the test split, read only here), flops, params,
epochs, seconds, seed. Retrain one arch with several --seed values into separate
folders; `mixpath rank --collect DIR...` averages them.
"""


def _fill(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_arch_source(p)
    p.add_argument("--from", dest="from_run", metavar="RUN", help="take data and space options from this "
                   "supernet run (a folder of `mixpath train` or its last.pt)")
    add_arguments(p)
    return p


PARSER_OPTIONS = parser_options(__doc__, EPILOG, keep_unset_out=True)


def add_parser(subparsers) -> None:
    add_subcommand(subparsers, "retrain", HELP, PARSER_OPTIONS, _fill, run)


def _run_of_front(front: str) -> str | None:
    settings = Path(front).parent / SEARCH_SETTINGS
    if settings.is_file():
        try:
            return json.loads(settings.read_text()).get("run")
        except ValueError:
            return None
    return None


def config_from_args(options: dict) -> TrainConfig:
    """The TrainConfig of a `mixpath retrain` command line (parsed with SUPPRESS: unset options absent)."""
    from ..checkpoint import load_checkpoint

    arch, front, pick = options.pop("arch", None), options.pop("from_front", None), options.pop("pick", None)
    from_run = options.pop("from_run", None)
    if "resume" in options:
        if arch is not None or front is not None:
            raise UsageError("--resume continues the architecture it was started with: drop ARCH / --from-front")
        return TrainConfig(**options)
    options["arch"] = read_arch(arch, front, pick)
    from_run = from_run or (_run_of_front(front) if front else None)
    if from_run is not None:
        saved = load_checkpoint(from_run)["config"]
        for key in FROM_RUN_KEYS:
            if key not in options and saved.get(key) is not None:
                options[key] = saved[key]
    return TrainConfig(**options)


def run(args: argparse.Namespace, prog: str) -> int:
    return guarded(prog, lambda: retrain(config_from_args(dict(vars(args)))))


def main(argv: list[str] | None = None, prog: str = "mixpath retrain") -> int:
    parser = _fill(Parser(prog=prog, **PARSER_OPTIONS))
    return run(parser.parse_args(argv), prog)
