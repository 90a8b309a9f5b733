"""`mixpath stats RUN --out DIR`: is a j-path sum like j times one path? (`mixpath.stats`)

For each searchable layer and each path count j, on a batch of training images,
compares the features that enter the Shadow BN (the sum of the j paths) with the
single-path features of the same paths: the cosine between the sum and j times
each path, and the ratio of the sum's norm to a single path's (j when the paths
are aligned, sqrt(j) when they are independent). Measured on the run's
supernet after training and on the same supernet freshly initialised (the
run's seed), for the run's layout.
"""
from __future__ import annotations

import argparse

from .common import UsageError, add_run_options, guarded, parser_options

HELP = "cosine and norm ratio of j-path sums against single paths, per layer (MixPath's Shadow BN premise)"
EPILOG = """\
outputs in --out DIR: stats.json (per state 'initial' and 'trained': one row per
layer and j with cosine, norm_ratio, subsets; the reference architecture that
feeds each layer its input) and stats.png (both measures per layer, a line per j).
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("stats", help=HELP, **parser_options(__doc__, EPILOG))
    p.add_argument("run", metavar="RUN", help="a `mixpath train` run folder or its last.pt")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--images", type=int, default=256, metavar="N", help="training images to measure on "
                   "(default 256)")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    add_run_options(p, scoring=False)
    p.set_defaults(command=run)


def stats(args) -> dict:
    from ..runs import open_run
    from ..stats import save_stats, stats_table, supernet_stats

    if args.images < 2:
        raise UsageError(f"--images {args.images} is too few: use at least 2")
    trained = open_run(args.run, device=args.device, backend=args.backend, data_dir=args.data_dir)
    report = supernet_stats(trained, images=args.images)
    paths = save_stats(report, args.out, force=args.force)
    print(f"{trained.describe()}; {report['images']} training images, inputs through {report['reference_arch']}")
    print(stats_table(report))
    print("written: " + ", ".join(map(str, paths)))
    return report


def run(args: argparse.Namespace, prog: str) -> int:
    return guarded(prog, lambda: stats(args))
