"""`mixpath shrink RUN --out DIR`: shrink the run's space to pockets of good architectures (`mixpath.shrink`).

LISSNAS-style locality shrinkage with the supernet as the scorer (top-1 on the
validation split after BN recalibration on training batches, on a copy):
sample --samples architectures, take the best --seed-fraction as seeds, grow
the good set by neighbours (one layer's choice changed, or up to --radius)
scoring at least the threshold minus --tolerance until its mean stops
improving (--patience) or --budget architectures have been looked at, then
group it into pockets (connected components). Every score is appended to
DIR/evaluated.jsonl as it is taken: --resume after a kill scores nothing twice;
--reuse FILE takes scores from a `mixpath search` of the same supernet.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError, add_job_options, add_run_options, add_subcommand, guarded, open_run_from, parser_options

HELP = "shrink a supernet's space to pockets of good architectures (LISSNAS locality)"
OUTPUTS = ("evaluated.jsonl", "space.json", "shrink.json", "shrink.png")
EPILOG = """\
outputs in --out DIR: space.json (the shrunk space: pass it as --space-file to train,
search, rank and export), shrink.json (settings, rounds, pockets with their per-layer
choices, sizes against the full space, scores inside and outside, diversity, locality:
mean |score difference| per distance), shrink.png (score against distance from the
nearest seed), evaluated.jsonl (every architecture scored).
"""


def _fill(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from ..shrink import DISTANCES, THRESHOLDS

    p.add_argument("run", metavar="RUN", help="a `mixpath train` run folder or its last.pt")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    g = p.add_argument_group("the shrinkage")
    g.add_argument("--samples", type=int, default=100, metavar="N", help="architectures sampled uniformly, "
                   "then scored (default 100)")
    g.add_argument("--seed-fraction", type=float, default=0.1, metavar="F",
                   help="the best F of the samples are the seeds (default 0.1)")
    g.add_argument("--radius", type=int, default=1, metavar="R", help="neighbours are at distance 1..R; pockets "
                   "link members at distance <= R (default 1)")
    g.add_argument("--distance", choices=DISTANCES, default="hamming", help="per layer: hamming (1 if the choice "
                   "differs) or fine (expansion differs + kernel-set symmetric difference); default hamming")
    g.add_argument("--threshold", choices=THRESHOLDS, default="seed", help="a neighbour joins when it scores at "
                   "least the worst seed (seed) or the good set's mean (mean), minus --tolerance; default seed")
    g.add_argument("--tolerance", type=float, default=0.0, metavar="T", help="score slack below the threshold "
                   "(default 0)")
    g.add_argument("--patience", type=int, default=2, metavar="P", help="stop after P rounds in a row that do "
                   "not raise the good set's mean (default 2)")
    g.add_argument("--min-delta", type=float, default=0.0, metavar="D", help="a round raises the mean when by "
                   "more than D (default 0)")
    g.add_argument("--budget", type=int, default=1000, metavar="N", help="stop after N distinct architectures, "
                   "samples included (default 1000)")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)")
    g.add_argument("--reuse", metavar="FILE", help="take scores from this evaluated.jsonl of a `mixpath search` "
                   "of the same supernet and scoring batches")
    add_job_options(p, "shrink")
    add_run_options(p)
    return p


PARSER_OPTIONS = parser_options(__doc__, EPILOG)


def add_parser(subparsers) -> None:
    add_subcommand(subparsers, "shrink", HELP, PARSER_OPTIONS, _fill, run)


def shrink(args) -> dict:
    """The whole command: open the supernet, shrink, write the outputs; returns shrink.json's content."""
    from .. import search, shrink as lib
    from ..checkpoint import write_json
    from ..outdir import OutputFolder
    from ..space import space_file

    if args.resume and args.force:
        raise UsageError("--resume continues the shrink in --out, --force replaces it: pass one of them")
    if args.reuse is not None and not Path(args.reuse).is_file():
        raise UsageError(f"--reuse {args.reuse} does not exist: pass the evaluated.jsonl of a `mixpath search`")
    run = open_run_from(args)
    layout = run.config["layout"]
    meta = search.scoring_meta(run, args.batch_size, args.calib_batches)
    try:
        reuse = None if args.reuse is None else search.EvaluationLog(args.reuse, run.space, layout=layout, meta=meta)
    except ValueError as e:  # another supernet's or space's scores
        raise UsageError(f"--reuse: {e}") from None
    with OutputFolder(args.out) as folder:
        out = folder.path
        folder.claim(OUTPUTS, resume=args.resume, force=args.force)
        if args.force:
            for name in OUTPUTS:
                (out / name).unlink(missing_ok=True)
        try:
            log = search.EvaluationLog(out / "evaluated.jsonl", run.space, layout=layout, meta=meta)
        except ValueError as e:
            raise UsageError(str(e)) from None
        print(f"{run.describe()}; {len(log)} architectures already scored in {out / 'evaluated.jsonl'}")
        score = run.scorer(batch_size=args.batch_size, calib_batches=args.calib_batches)
        try:
            result = lib.shrink(run.space, score, samples=args.samples, seed_fraction=args.seed_fraction,
                                radius=args.radius, distance=args.distance, threshold=args.threshold,
                                tolerance=args.tolerance, patience=args.patience, min_delta=args.min_delta,
                                budget=args.budget, seed=args.seed, layout=layout,
                                log=log, reuse=reuse)
        except ValueError as e:  # the settings' checks, before any scoring
            raise UsageError(str(e).replace("_", "-")) from None
        report = {"run": str(run.checkpoint.resolve()), "device": str(run.device), **result.to_dict()}
        made = {"run": report["run"], "shrink": str((out / "shrink.json").resolve())}
        write_json(out / "space.json", space_file(result.space, made=made), indent=1)
        write_json(out / "shrink.json", report, indent=1)
        lib.plot_shrink(result, out / "shrink.png")
    size, scores = report["size"], report["scores"]
    print(f"{report['n_evaluated']} architectures looked at (stop: {result.stop}); {len(result.space.pockets)} "
          f"pocket(s) holding {size['shrunk']} of {size['full']} architectures ({size['fraction']:.2%}); "
          f"mean score inside {scores['inside']['mean']:.4f}, outside "
          f"{'n/a' if scores['outside']['mean'] is None else format(scores['outside']['mean'], '.4f')}: "
          f"{out / 'space.json'}")
    return report


def run(args: argparse.Namespace, prog: str) -> int:
    return guarded(prog, lambda: shrink(args))
