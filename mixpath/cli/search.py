"""`mixpath search RUN --out DIR`: multi-objective search of a trained supernet (`mixpath.search`).

Accuracy is top-1 on the validation split after BN recalibration on training
batches, on a copy (the supernet never changes); FLOPs and parameters are
analytic; latency is measured on --device (warm-up, synchronised, median) and
cached per architecture. Every architecture scored is appended to
DIR/evaluated.jsonl as it is scored: --resume after a kill continues without
scoring any of them again. --space-file searches only inside the pockets of a
`mixpath shrink` result: no individual ever leaves them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError, add_job_options, add_run_options, add_subcommand, guarded, open_run_from, parser_options

HELP = "search a trained supernet (NSGA-II or random) for accuracy/cost trade-offs"
OUTPUTS = ("evaluated.jsonl", "front.json", "front.csv", "pareto.png", "search.json")
EPILOG = """\
outputs in --out DIR: evaluated.jsonl (every architecture scored), front.json and
front.csv (the non-dominated set: arch, acc, flops, params, latency), pareto.png,
search.json (the settings, the supernet and counts), latency.json (with the
latency objective). Next: mixpath retrain --from-front DIR/front.json --pick N.
"""


def _objectives(text: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in text.split(",") if o.strip())


def _fill(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("run", metavar="RUN", help="a `mixpath train` run folder or its last.pt")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    g = p.add_argument_group("the search")
    g.add_argument("--strategy", choices=("nsga2", "random"), default="nsga2",
                   help="NSGA-II (pymoo), or uniform random search with the same budget (default nsga2)")
    g.add_argument("--objectives", type=_objectives, default=("acc", "flops"), metavar="O,O",
                   help="acc and any of flops, params, latency (default acc,flops)")
    g.add_argument("--population", type=int, default=40, metavar="N", help="NSGA-II population (default 40)")
    g.add_argument("--generations", type=int, default=40, metavar="N",
                   help="NSGA-II generations (default 40); random search evaluates population x generations")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="search seed (default 0)")
    g.add_argument("--max-flops", type=float, metavar="F", help="hard bound on multiply-adds (e.g. 3e8)")
    g.add_argument("--max-params", type=float, metavar="P", help="hard bound on parameters (e.g. 5e6)")
    g.add_argument("--latency-batch", type=int, default=32, metavar="N",
                   help="batch size at which latency is measured (default 32)")
    g.add_argument("--space-file", metavar="FILE", help="search only inside the pockets of this shrunk space "
                   "(the space.json of `mixpath shrink` on the same run)")
    add_job_options(p, "search")
    add_run_options(p)
    return p


PARSER_OPTIONS = parser_options(__doc__, EPILOG)


def add_parser(subparsers) -> None:
    add_subcommand(subparsers, "search", HELP, PARSER_OPTIONS, _fill, run)


def _check(args) -> None:
    for name in ("population", "generations", "latency_batch"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)} is out of range: use at least 1")
    if args.strategy == "nsga2" and args.population < 2:
        raise UsageError(f"--population {args.population} is too small for NSGA-II: use at least 2")
    if args.seed < 0:
        raise UsageError(f"--seed {args.seed} is out of range: seeds are non-negative integers")
    if args.resume and args.force:
        raise UsageError("--resume continues the search in --out, --force replaces it: pass one of them")


def search(args) -> dict:
    """The whole command: open the supernet, search, write the outputs; returns search.json's content."""
    from .. import search as lib
    from ..checkpoint import write_json
    from ..latency import LatencyCache
    from ..outdir import OutputFolder
    from ..space import load_space_file

    _check(args)
    run = open_run_from(args)
    space = run.space if args.space_file is None else load_space_file(args.space_file, run.space)
    with OutputFolder(args.out) as folder:
        out = folder.path
        folder.claim(OUTPUTS, resume=args.resume, force=args.force)
        if args.force:
            for name in OUTPUTS + ("latency.json",):
                (out / name).unlink(missing_ok=True)
        score = run.scorer(batch_size=args.batch_size, calib_batches=args.calib_batches)
        # What the logged scores depend on: a resumed search must score with the same supernet and batches.
        meta = lib.scoring_meta(run, args.batch_size, args.calib_batches)
        log = lib.EvaluationLog(out / "evaluated.jsonl", space, layout=run.config["layout"], meta=meta)
        latency = None
        if "latency" in args.objectives:
            shape = (args.latency_batch, 3, run.splits.image_size, run.splits.image_size)
            latency = LatencyCache(run.supernet.subnet, shape, run.device, path=out / "latency.json")
        common = dict(objectives=args.objectives, seed=args.seed, latency=latency, layout=run.config["layout"],
                      max_flops=args.max_flops, max_params=args.max_params, log=log)
        print(f"{run.describe()}; {len(log)} architectures already scored in {out / 'evaluated.jsonl'}")
        if space.pockets:
            print(space.describe())
        try:
            if args.strategy == "nsga2":
                result = lib.nsga2_search(space, score, population=args.population,
                                          generations=args.generations, **common)
            else:
                result = lib.random_search(space, score, budget=args.population * args.generations, **common)
        except ValueError as e:  # the library's checks of objectives and bounds, before any scoring
            raise UsageError(str(e)) from None
        lib.save_front(result, out)
        settings = {"run": str(run.checkpoint.resolve()), "device": str(run.device),
                    "space_file": None if args.space_file is None else str(Path(args.space_file).resolve()),
                    "latency_batch": args.latency_batch, "max_flops": args.max_flops, "max_params": args.max_params,
                    **{k: v for k, v in result.to_dict().items() if k != "front"}}
        write_json(out / "search.json", settings)
    best = max(result.front, key=lambda c: c.acc)
    print(f"{settings['n_scored']} architectures scored; front of {len(result.front)}, "
          f"best val acc {best.acc:.4f} ({best.arch}, {best.flops / 1e6:.2f} MFLOPs): {Path(out) / 'front.json'}")
    return settings


def run(args: argparse.Namespace, prog: str) -> int:
    return guarded(prog, lambda: search(args))
