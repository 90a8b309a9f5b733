"""What every subcommand shares: the one-line error boundary, the parser class, common options.

The boundary: bad input (an option, a dataset, an architecture, a checkpoint,
an output folder) ends the program with one line on stderr naming the problem
and the fix, exit status 2; a failure while working (a diverged loss, a full
disk, out of GPU memory) with one line and status 1; Ctrl-C with 130, SIGTERM
with 143. Unexpected exceptions keep their traceback: they are bugs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from ..checkpoint import CheckpointError
from ..data import DataError
from ..outdir import OutputError, disk_full_message
from ..space import Arch, ArchError

__all__ = ["Parser", "UsageError", "guarded", "int_list", "add_arch_source", "read_arch", "add_job_options",
           "add_run_options", "parser_options", "add_subcommand"]


class UsageError(ValueError):
    """A command-line option is missing or contradicts another."""


def user_errors() -> tuple[type[Exception], ...]:
    from ..training import ConfigError

    return (ConfigError, DataError, ArchError, CheckpointError, OutputError, UsageError)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, like every other error this program reports.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser_options(doc: str, epilog: str | None = None, *, keep_unset_out: bool = False) -> dict:
    """A subcommand parser's options: its module docstring less the first paragraph as the description.
    keep_unset_out: unset options stay out of the namespace (so a resumed run takes them from its checkpoint)."""
    options = dict(description=doc.split("\n\n", 1)[1], epilog=epilog,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    return {**options, "argument_default": argparse.SUPPRESS} if keep_unset_out else options


def add_subcommand(subparsers, name: str, help: str, options: dict, fill: Callable, run: Callable) -> None:
    """`mixpath NAME`: a subparser with `options`, its arguments added by `fill`, dispatching to `run`."""
    fill(subparsers.add_parser(name, help=help, **options)).set_defaults(command=run)


def guarded(prog: str, action: Callable[[], object], extra_user_errors: tuple = ()) -> int:
    """Run `action`, turning the errors a user can cause into one line on stderr and an exit status."""
    import torch

    from ..training import Terminated, TrainingError

    def fail(status: int, message: str) -> int:
        print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
        return status

    try:
        action()
    except user_errors() + tuple(extra_user_errors) as e:
        return fail(2, str(e))
    except TrainingError as e:
        return fail(1, str(e))
    except torch.cuda.OutOfMemoryError:
        return fail(1, "out of GPU memory: lower --batch-size, or try --amp bf16 or a smaller --width-mult")
    except OSError as e:
        full = disk_full_message(e)
        if full:
            return fail(1, full)
        where = f" {e.filename}" if e.filename else ""
        return fail(1, f"cannot read or write{where}: {e.strerror or e}; check the path and its permissions")
    except Terminated:
        return 143
    except KeyboardInterrupt:
        return 130
    return 0


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 3,5,7,9, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer, e.g. 3,5,7,9")
    return values


def add_arch_source(p: argparse.ArgumentParser) -> None:
    """ARCH, or --from-front FILE --pick N."""
    p.add_argument("arch", nargs="?", metavar="ARCH",
                   help="the architecture: a compact string like '6:3,5|3:7|...', or a JSON file "
                        "({\"layers\": [...]}, or a summary.json with an \"arch\")")
    p.add_argument("--from-front", metavar="FILE", help="take the architecture from a search's front.json")
    p.add_argument("--pick", type=int, metavar="N", help="with --from-front: its N-th entry, 0 = the first "
                   "(the cheapest; the front is sorted by its first cost)")


def read_arch(arch: str | None, from_front: str | None, pick: int | None) -> str:
    """The compact string of ARCH / --from-front FILE --pick N; UsageError or ArchError when they are wrong."""
    if from_front is not None:
        if arch is not None:
            raise UsageError("give ARCH or --from-front FILE --pick N, not both")
        if pick is None:
            raise UsageError("--from-front needs --pick N (0 = the front's first entry)")
        front = _read_json(Path(from_front), "--from-front")
        if not isinstance(front, list) or not all(isinstance(e, dict) and "arch" in e for e in front):
            raise UsageError(f"--from-front {from_front} is not a search front (a JSON list of objects with "
                             "'arch'): pass the front.json of `mixpath search`")
        if not 0 <= pick < len(front):
            raise UsageError(f"--pick {pick} is out of range: {from_front} holds {len(front)} architectures "
                             f"(0..{len(front) - 1})")
        return str(Arch.parse(front[pick]["arch"]))
    if pick is not None:
        raise UsageError("--pick needs --from-front FILE")
    if arch is None:
        raise UsageError("no architecture: give ARCH (e.g. '6:3,5|3:7|...' or a JSON file) or "
                         "--from-front FILE --pick N")
    path = Path(arch)
    if arch.endswith(".json") or path.is_file():
        data = _read_json(path, "ARCH")
        for key in ("arch", "derived_arch"):
            if isinstance(data, dict) and isinstance(data.get(key), str):
                return str(Arch.parse(data[key]))
        return str(Arch.from_json(json.dumps(data)))
    return str(Arch.parse(arch))


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{what} {path} is not valid JSON ({e}); pass the file mixpath wrote") from None


def add_job_options(p: argparse.ArgumentParser, what: str) -> None:
    """--resume / --force for a command whose outputs in --out can be continued or replaced."""
    g = p.add_argument_group("the job")
    g.add_argument("--resume", action="store_true", help=f"continue a {what} in DIR (nothing is scored twice)")
    g.add_argument("--force", action="store_true", help=f"replace the {what} in DIR")


def add_run_options(p: argparse.ArgumentParser, scoring: bool = True) -> None:
    """Where a trained supernet (RUN) is opened and, with `scoring`, how its subnets are scored."""
    g = p.add_argument_group("the supernet and its data")
    g.add_argument("--device", metavar="DEV", help="cpu, cuda or cuda:N (default: the run's, if present here)")
    g.add_argument("--backend", metavar="NAME", help="fused-op backend (default: the run's, else the fastest here)")
    g.add_argument("--data-dir", metavar="D", help="where the run's dataset is now (default: where it was)")
    if not scoring:
        return
    g.add_argument("--batch-size", type=int, metavar="N", help="scoring batch size (default: the run's)")
    g.add_argument("--calib-batches", type=int, metavar="N", help="training batches for BN recalibration "
                   "(default: the run's)")


def open_run_from(args):
    from ..runs import open_run

    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} is out of range: use at least 1")
    if getattr(args, "calib_batches", None) is not None and args.calib_batches < 1:
        raise UsageError(f"--calib-batches {args.calib_batches} is out of range: use at least 1")
    return open_run(args.run, device=args.device, backend=args.backend, data_dir=args.data_dir)
