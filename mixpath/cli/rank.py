"""`mixpath rank RUN --truth FILE --out DIR`: how well a supernet ranks architectures (`mixpath.ranking`).

Scores every architecture of the truth file with the supernet, with its own BN
statistics and after BN recalibration on training batches (validation split,
on a copy), and compares both rankings with the stand-alone accuracies: Kendall
tau with a 95% bootstrap interval over architectures, Spearman, top-k overlap.
`mixpath rank --collect RETRAIN_DIR... --out truth.csv` first gathers the
summaries of `mixpath retrain` runs into such a truth file (mean validation
accuracy and count per architecture retrained with several seeds). With
--space-file (a `mixpath shrink` result), every truth architecture must lie in
its pockets: the ranking inside the shrunk space.
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from .common import UsageError, add_run_options, add_subcommand, guarded, open_run_from, parser_options

HELP = "Kendall tau of a supernet against retrained ground truth (or --collect retrain results)"
OUTPUTS = ("ranking.json", "ranking.png", "scores.csv")
EPILOG = """\
outputs in --out DIR: ranking.json (n, kendall_tau, tau_ci95, spearman, top_k_overlap,
best_predicted..., the same under before_recalibration, and every arch's numbers),
scores.csv (arch, standalone, acc_before, acc_after), ranking.png (both scatters).
With --collect, --out is the truth file to write (.csv or .jsonl).
"""


def _fill(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("run", nargs="?", metavar="RUN", help="a `mixpath train` run folder or its last.pt")
    p.add_argument("--truth", metavar="FILE", help="stand-alone accuracies: .csv (arch,accuracy) or .jsonl")
    p.add_argument("--collect", nargs="+", metavar="RETRAIN_DIR", help="gather these `mixpath retrain` folders "
                   "into the truth file --out instead of ranking")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (with --collect: the truth file)")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="bootstrap seed (default 0)")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.add_argument("--space-file", metavar="FILE", help="a shrunk space (space.json of `mixpath shrink`): refuse "
                   "truth architectures outside its pockets")
    add_run_options(p)
    return p


PARSER_OPTIONS = parser_options(__doc__, EPILOG)


def add_parser(subparsers) -> None:
    add_subcommand(subparsers, "rank", HELP, PARSER_OPTIONS, _fill, run)


def collect(args) -> list[dict]:
    from ..ranking import collect_truth

    if args.run is not None or args.truth is not None:
        raise UsageError("--collect gathers retrain folders into --out: drop RUN and --truth")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise UsageError(f"--out {out} exists; pass --force to replace it, or choose another --out")
    try:
        rows = collect_truth(args.collect, out)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"{len(rows)} architectures from {len(args.collect)} retrain folders: {out}")
    return rows


def rank(args) -> dict:
    """The whole command: score the truth file's architectures, compare, write; returns ranking.json's content."""
    from .. import ranking
    from ..checkpoint import atomic_write, write_json
    from ..outdir import OutputFolder
    from ..space import load_space_file

    if args.run is None or args.truth is None:
        raise UsageError("give RUN and --truth FILE (or --collect RETRAIN_DIR... to make a truth file)")
    if args.bootstrap < 100:
        raise UsageError(f"--bootstrap {args.bootstrap} is too few resamples for an interval: use at least 100")
    if not Path(args.truth).is_file():
        raise UsageError(f"--truth {args.truth} does not exist: pass a truth file (mixpath rank --collect makes one)")
    run = open_run_from(args)
    space = run.space if args.space_file is None else load_space_file(args.space_file, run.space)
    try:
        truth = ranking.load_ground_truth(args.truth, space)
        if len(truth) < 3:
            raise ValueError(f"{args.truth}: {len(truth)} architectures; a ranking needs at least 3")
    except ValueError as e:
        raise UsageError(str(e)) from None
    archs, standalone = [a for a, _ in truth], [acc for _, acc in truth]
    with OutputFolder(args.out) as folder:
        out = folder.path
        folder.claim(OUTPUTS, force=args.force, hint="pass --force to replace it")
        calibration, validation = run.batch_factories(args.batch_size, args.calib_batches)
        before = [acc for _, acc in ranking.rank_architectures(run.supernet, archs, None, validation,
                                                                 recalibrate=False)]
        after = [acc for _, acc in ranking.rank_architectures(run.supernet, archs, calibration, validation)]
        report = ranking.rank_report(archs, standalone, after, before, n_resamples=args.bootstrap, seed=args.seed)
        report = {"run": str(run.checkpoint.resolve()), "truth": str(Path(args.truth).resolve()),
                  "space_file": None if args.space_file is None else str(Path(args.space_file).resolve()), **report}
        write_json(out / "ranking.json", report)
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["arch", "standalone", "acc_before", "acc_after"])
        writer.writerows(zip(map(str, archs), standalone, before, after))
        atomic_write(out / "scores.csv", lambda f: f.write(text.getvalue()), binary=False)
        ranking.plot_rank_scatter(standalone, after, before, out / "ranking.png", title=run.folder.name)
    def tau(part):
        if part["kendall_tau"] is None:
            return "undefined (every score equal)"
        lo, hi = (f"{v:.3f}" if v is not None else "undefined" for v in part["tau_ci95"])
        return f"{part['kendall_tau']:.3f} (95% CI [{lo}, {hi}])"

    print(f"n = {report['n']}: Kendall tau {tau(report)} after BN recalibration, "
          f"{tau(report['before_recalibration'])} before: {out / 'ranking.json'}")
    return report


def run(args: argparse.Namespace, prog: str) -> int:
    return guarded(prog, lambda: collect(args) if args.collect else rank(args))
