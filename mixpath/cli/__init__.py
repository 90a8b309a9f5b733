"""The `mixpath` command: one subcommand per step of a NAS job, one module per subcommand.

    mixpath train     train a supernet                          (cli/train.py, over mixpath.training.train)
    mixpath search    multi-objective search of a trained supernet  (cli/search.py, over mixpath.search)
    mixpath retrain   train one architecture from scratch        (cli/retrain.py, over mixpath.training.retrain)
    mixpath rank      how well a supernet ranks, against retrained truth  (cli/rank.py, over mixpath.ranking)
    mixpath export    a standalone inference model of a subnet   (cli/export.py, over mixpath.export)
    mixpath stats     j-path sums against single paths, per layer  (cli/stats.py, over mixpath.stats)
    mixpath shrink    shrink the space to pockets of good archs   (cli/shrink.py, over mixpath.shrink)

Each module holds only argument parsing and printing: everything it does is a
library function a user can call from Python too.
"""
from __future__ import annotations

import importlib
import sys

from .common import Parser

COMMANDS = ("train", "search", "retrain", "rank", "export", "stats", "shrink")


def build_parser() -> Parser:
    parser = Parser(prog="mixpath", description="Fast one-shot NAS over multi-path supernets (MixPath): train a "
                    "supernet, search it, retrain the winners, check the ranking, export the network.")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command
    del args.command
    return command(args, f"mixpath {command.__module__.rsplit('.', 1)[-1]}")


if __name__ == "__main__":
    sys.exit(main())
