"""`mixpath train` / `python train.py`: the command line over `mixpath.training.train`.

Errors end the program with one line (see `common.guarded`).
"""
from __future__ import annotations

import argparse
import sys

from ..sampling import SAMPLINGS
from ..differentiable.cli import add_differentiable_arguments, dispatch
from ..training import AMP_MODES, DATASET_DEFAULTS, DATASETS, DEFAULTS
from .common import Parser, add_subcommand, guarded, int_list

HELP = "train a MixPath supernet (one sampled multi-path architecture per step)"


def _dataset_line(name: str) -> str:
    d = DATASET_DEFAULTS[name]
    return (f"  {name:8} --space {d['space']} --epochs {d['epochs']} --batch-size {d['batch_size']} --lr {d['lr']} "
            f"--{'' if d['augment'] else 'no-'}augment" + (f" --threads {d['threads']}" if "threads" in d else ""))


EPILOG = """\
defaults that depend on --data (every one can be overridden; cifar10 follows the release,
digits is a quick demo that reaches > 0.9 mean subnet accuracy in under a minute on a CPU):
""" + "\n".join(_dataset_line(name) for name in DATASETS) + """

resuming: --resume DIR/last.pt continues a run with the settings it was started
with; options that change what it computes (data, space, optimiser, epochs,
seed) are refused if they differ, options about how it runs (--device,
--backend/--fused, --amp, --threads, --workers, evaluation) may change. The same
device, backend and --threads give bit-identical results to an uninterrupted
run; another backend, device, --amp or thread count continues with other
rounding (summation order), and the log says so. Resuming a finished run
evaluates it again into summary.2.json (summary.json is never replaced).

outputs in --out DIR: last.pt (checkpoint, rewritten atomically each epoch),
metrics.jsonl (one line per epoch: loss, accuracy, world size, images per
second), summary.json (final subnet scores). One job at a time per folder; a
folder that holds a run is refused unless --resume (continue) or --force
(replace). Ctrl-C or SIGTERM stop after saying what can be resumed.

several GPUs or machines (the same command line under torchrun):
  torchrun --standalone --nproc_per_node=N train.py ...
  torchrun --nnodes=M --nproc_per_node=N --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT train.py ...
--batch-size is per rank (global batch = ranks x batch size, shown in the log),
--lr is used as given. Every rank trains the same architectures; BN batch
statistics are per rank. Rank 0 writes --out; --resume needs the same number
of processes, and the checkpoint readable at the same path on every machine.
"""


def add_data_and_space(p: argparse.ArgumentParser) -> None:
    """The options that say what is trained on what: shared by `train` and `retrain`."""
    d = DEFAULTS
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=DATASETS, help=f"dataset (default {d['data']}: bundled, no download)")
    g.add_argument("--data-dir", metavar="D", help="cifar10: the cifar-10-batches-py folder; folder: a folder with "
                   "train/<class>/*.jpg and optionally val/<class>/* (used as the test split)")
    g.add_argument("--val-size", type=int, metavar="N", help="validation images held out of the training split "
                   "(cifar10 default 5000; see the README's data section)")
    g.add_argument("--image-size", type=int, metavar="N", help="image side (digits 16, folder 224; cifar10 is 32)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="training augmentation (default: off for digits, on otherwise)")
    g.add_argument("--workers", type=int, metavar="N", help="image decoding workers for --data folder")

    g = p.add_argument_group("search space and supernet")
    g.add_argument("--space", choices=("tiny", "cifar", "imagenet"),
                   help="default by --data: digits tiny, cifar10 cifar, folder imagenet")
    g.add_argument("--space-file", metavar="FILE", help="only the pockets of this shrunk space (the space.json "
                   "of `mixpath shrink`)")
    g.add_argument("--pocket-sampling", choices=("arch", "pocket"), help="with --space-file: uniform over the "
                   "pockets' architectures (arch, default) or a uniform pocket first (pocket)")
    g.add_argument("--max-paths", type=int, metavar="M",
                   help=f"paths active per layer, 1..4 (default {d['max_paths']})")
    g.add_argument("--kernels", type=int_list, metavar="K,K", help="depthwise kernel sizes (default 3,5,7,9)")
    g.add_argument("--expansions", type=int_list, metavar="T,T", help="expansion rates (default 3,6)")
    g.add_argument("--width-mult", type=float, metavar="W", help=f"channel multiplier (default {d['width_mult']})")
    g.add_argument("--layout", choices=("mixpath", "official"),
                   help="mixpath (fusable, default) or official (the release's block)")


def add_recipe_and_job(p: argparse.ArgumentParser) -> None:
    """Optimisation, device and job options: shared by `train` and `retrain`."""
    d = DEFAULTS

    g = p.add_argument_group("optimisation (the release's recipe unless noted)")
    g.add_argument("--epochs", type=int, metavar="N", help="cosine schedule length (default by --data)")
    g.add_argument("--batch-size", type=int, metavar="N", help="(default by --data)")
    g.add_argument("--lr", type=float, metavar="LR", help="SGD learning rate (default by --data)")
    g.add_argument("--momentum", type=float, metavar="M", help=f"(default {d['momentum']})")
    g.add_argument("--weight-decay", type=float, metavar="WD", help=f"(default {d['weight_decay']})")
    g.add_argument("--grad-clip", type=float, metavar="NORM", help=f"gradient norm clip, 0 = off "
                   f"(default {d['grad_clip']})")
    g.add_argument("--seed", type=int, metavar="S", help=f"seeds init, architecture sampling and batches "
                   f"(default {d['seed']})")

    g = p.add_argument_group("device and speed")
    g.add_argument("--device", metavar="DEV", help="cpu, cuda or cuda:N (default cuda if available, else cpu)")
    one = g.add_mutually_exclusive_group()
    one.add_argument("--fused", action="store_true",
                     help="use the fastest fused backend on the device (falls back to merged when none is built)")
    one.add_argument("--backend", metavar="NAME", help="a backend by name: reference, merged (default), cpp, "
                     "cuda, triton")
    g.add_argument("--amp", choices=AMP_MODES, help="mixed precision: bf16, or fp16 with loss scaling "
                   "(default none)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="NHWC tensors")
    g.add_argument("--threads", type=int, metavar="N", help="CPU threads (default by --data; else torch's "
                   "default); saved in the checkpoint: another count on --resume changes the rounding")

    g = p.add_argument_group("the job")
    g.add_argument("--out", metavar="DIR", help="output folder (default: a new runs/<timestamp>)")
    g.add_argument("--resume", metavar="PATH", help="continue from a checkpoint (DIR/last.pt, or DIR)")
    g.add_argument("--force", action="store_true", help="replace the run already in --out")
    g.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs of this invocation "
                   "(for job time limits) and --resume later")
    g.add_argument("--dist-timeout", type=float, metavar="S", help="under torchrun: seconds a rank waits for the "
                   f"others before it ends the job (default {d['dist_timeout']:g}; more than rank 0's per-epoch "
                   "evaluation and checkpoint)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_and_space(p)
    add_recipe_and_job(p)


def supernet_options(p: argparse.ArgumentParser) -> None:
    """What only a supernet has: Shadow BN, and the final scoring of sampled subnets."""
    d = DEFAULTS
    p.add_argument("--shadow-bn", action=argparse.BooleanOptionalAction,
                   help="one BN per path count (default on; --no-shadow-bn is the single-BN ablation)")
    p.add_argument("--sampling", choices=SAMPLINGS, help=f"architectures per step (default {d['sampling']}): "
                   "uniform trains one sampled architecture; fair trains a group of expansions x kernels "
                   "architectures in which every kernel, expansion and (expansion, kernel) pair of each layer "
                   "is used equally often, averaged into one update")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-archs", type=int, metavar="N", help=f"sampled subnets scored at the end "
                   f"(default {d['eval_archs']})")
    g.add_argument("--eval-arch", action="append", metavar="ARCH", help="also score this architecture, "
                   "e.g. '6:3,5|3:7|...' (repeatable)")
    g.add_argument("--calib-batches", type=int, metavar="N", help=f"training batches for BN recalibration "
                   f"(default {d['calib_batches']})")


# Unset options stay out of the namespace, so a resumed run can take them from its checkpoint.
PARSER_OPTIONS = dict(description="Train a MixPath supernet (one sampled multi-path architecture per step) and "
                      "score subnets after BN recalibration.", epilog=EPILOG,
                      formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS)


def _fill(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_arguments(p)
    supernet_options(p)
    add_differentiable_arguments(p)
    return p


def add_parser(subparsers) -> None:
    add_subcommand(subparsers, "train", HELP, PARSER_OPTIONS, _fill, run)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    return _fill(Parser(prog=prog, **PARSER_OPTIONS))


def run(args: argparse.Namespace, prog: str) -> int:
    options = {k: v for k, v in vars(args).items() if k != "command"}
    return guarded(prog, lambda: dispatch(options))  # one-shot (train) or differentiable


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`python train.py ...`: the same as `mixpath train ...`."""
    parser = build_parser(prog)
    return run(parser.parse_args(argv), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
