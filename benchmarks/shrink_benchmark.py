"""Does shrinking pay? NSGA-II in the full space against shrink + NSGA-II in the shrunk space, equal budgets.

    python -m benchmarks.shrink_benchmark                       # synthetic scorers only (seconds)
    python -m benchmarks.shrink_benchmark --run RUN --seeds 3   # plus a real supernet (scores cached in --cache)

Budget: the full-space search evaluates population x generations individuals;
the shrink arm spends `--shrink-budget` distinct architectures on shrinking,
then searches the shrunk space with the generations that leave the same total
(its front and best are taken over both phases). Reported per arm, over
`--seeds`: the best score found and the hypervolume (pymoo's HV) of the
(score, FLOPs) front, with FLOPs divided by the space's largest and the
reference point (score 0, FLOPs 1.1). With `--truth FILE` (the ranking study's
benchmarks/study/truth.csv) and `--run`: Kendall tau of the supernet against
the truth over all its architectures and over those inside the shrunk space.
Writes --out (default benchmarks/SHRINK.md) and a JSON beside it.
"""
from __future__ import annotations

import argparse
import math
import zlib
from pathlib import Path

import numpy as np

from mixpath.checkpoint import atomic_write, write_json
from mixpath.search import EvaluationLog, encode, non_dominated, nsga2_search
from mixpath.shrink import shrink
from mixpath.space import get_space


def synthetic_scorers(space):
    """Score functions of the encoding with a known structure: locality holds for the first, not the second."""
    n = space.choices_per_layer()
    peaks = [np.full(len(space.layers), 2), np.full(len(space.layers), n - 3)]
    heights = [0.9, 0.8]

    def smooth(arch):  # two optima, scores fall with the distance in gene space
        g = np.array(encode(space, arch))
        return float(max(h * math.exp(-((g - p) ** 2).sum() / 20) for h, p in zip(heights, peaks)))

    def rugged(arch):  # a hash: neighbours are unrelated
        return (zlib.crc32(str(arch).encode()) % 10007) / 10007

    return {"smooth two-peak": smooth, "rugged (no locality)": rugged}


def hypervolume(front, largest_flops: float) -> float:
    from pymoo.indicators.hv import HV

    F = np.array([[-c.acc, c.flops / largest_flops] for c in front], dtype=float)
    return float(HV(ref_point=np.array([0.0, 1.1]))(F))


def compare(space, score, *, seed, population, generations, shrink_budget, log=None, shrink_options=None):
    """(full arm, shrink arm) results of one seed: best score, hypervolume, distinct architectures scored."""
    largest = space.flops(space.largest())
    full = nsga2_search(space, score, population=population, generations=generations, seed=seed, log=log,
                        progress=False)
    options = dict(samples=max(2, shrink_budget // 4), budget=shrink_budget, **(shrink_options or {}))
    shrunk = shrink(space, score, seed=seed, log=log, progress=False, **options)
    left = max(1, (population * generations - len(shrunk.evaluated)) // population)
    inside = nsga2_search(shrunk.space, score, population=population, generations=left, seed=seed, log=log,
                          progress=False)
    both = list({c.arch: c for c in shrunk.evaluated + inside.evaluated}.values())
    front = non_dominated(both, ("acc", "flops"))
    return ({"best": max(c.acc for c in full.evaluated), "hv": hypervolume(full.front, largest),
             "evaluations": full.n_evaluations, "distinct": len(full.evaluated)},
            {"best": max(c.acc for c in both), "hv": hypervolume(front, largest),
             "evaluations": len(shrunk.evaluated) + inside.n_evaluations, "distinct": len(both),
             "pockets": len(shrunk.space.pockets), "fraction": shrunk.space.size() / space.size(),
             "stop": shrunk.stop})


def summarise(rows):
    keys = ("best", "hv", "evaluations", "distinct")
    return {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows]))) for k in keys}


def kendall_inside(run, truth_path, space_file_path):
    """Kendall tau of the supernet over the truth's architectures, all and those inside the shrunk space."""
    from mixpath.ranking import kendall_tau, load_ground_truth
    from mixpath.space import load_space_file

    truth = load_ground_truth(truth_path, run.space)
    shrunk = load_space_file(space_file_path, run.space)
    score = run.scorer()
    predicted = {a: score(a) for a, _ in truth}
    inside = [(a, t) for a, t in truth if any(a in p for p in shrunk.pockets)]
    out = {"n_full": len(truth), "tau_full": kendall_tau([predicted[a] for a, _ in truth], [t for _, t in truth])[0],
           "n_inside": len(inside)}
    out["tau_inside"] = (kendall_tau([predicted[a] for a, _ in inside], [t for _, t in inside])[0]
                         if len(inside) >= 3 else None)
    return out


def table(title, results):
    lines = [f"### {title}", "", "| arm | best score | hypervolume | evaluations | distinct scored |",
             "|---|---|---|---|---|"]
    for arm, s in results.items():
        lines.append(f"| {arm} | {s['best'][0]:.4f} ± {s['best'][1]:.4f} | {s['hv'][0]:.4f} ± {s['hv'][1]:.4f} | "
                     f"{s['evaluations'][0]:.0f} | {s['distinct'][0]:.0f} |")
    return lines + [""]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a `mixpath train` run: also compare on its supernet")
    p.add_argument("--cache", help="evaluated.jsonl for the run's scores (reused across seeds and arms)")
    p.add_argument("--truth", help="ranking-study truth file (with --run and --space-file): tau inside vs full")
    p.add_argument("--space-file", help="the shrunk space for the tau comparison")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--population", type=int, default=10)
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--shrink-budget", type=int, default=100)
    p.add_argument("--out", default=str(Path(__file__).with_name("SHRINK.md")))
    args = p.parse_args(argv)

    space = get_space("tiny", max_paths=2, kernel_sizes=(3, 5, 7))
    report, lines = {}, ["# Shrink + NSGA-II against NSGA-II, equal evaluation budgets", "",
                         f"population {args.population}, {args.generations} generations "
                         f"({args.population * args.generations} evaluations per arm), shrink budget "
                         f"{args.shrink_budget} distinct architectures, seeds 0..{args.seeds - 1}; "
                         "mean ± std over seeds.", ""]
    for name, score in synthetic_scorers(space).items():
        rows = [compare(space, score, seed=s, population=args.population, generations=args.generations,
                        shrink_budget=args.shrink_budget) for s in range(args.seeds)]
        report[name] = {"full": summarise([r[0] for r in rows]), "shrink": summarise([r[1] for r in rows]),
                        "shrink_runs": [r[1] for r in rows]}
        lines += table(f"synthetic: {name} (tiny space, {space.size()} architectures)",
                       {"NSGA-II, full space": report[name]["full"], "shrink + NSGA-II": report[name]["shrink"]})
    if args.run:
        from mixpath.runs import open_run
        from mixpath.search import scoring_meta

        run = open_run(args.run)
        log = EvaluationLog(args.cache, run.space, layout=run.config["layout"], meta=scoring_meta(run))
        score = run.scorer()
        rows = [compare(run.space, score, seed=s, population=args.population, generations=args.generations,
                        shrink_budget=args.shrink_budget, log=log) for s in range(args.seeds)]
        report["supernet"] = {"run": str(run.checkpoint), "full": summarise([r[0] for r in rows]),
                              "shrink": summarise([r[1] for r in rows]), "shrink_runs": [r[1] for r in rows]}
        lines += table(f"supernet {run.checkpoint} ({run.space.describe()})",
                       {"NSGA-II, full space": report["supernet"]["full"],
                        "shrink + NSGA-II": report["supernet"]["shrink"]})
        if args.truth and args.space_file:
            report["kendall"] = kendall_inside(run, args.truth, args.space_file)
            k = report["kendall"]
            lines += ["### Kendall tau against the ranking study's truth", "",
                      f"full space: tau {k['tau_full']:.3f} over {k['n_full']} architectures; inside the shrunk "
                      f"space: {'n/a' if k['tau_inside'] is None else format(k['tau_inside'], '.3f')} over "
                      f"{k['n_inside']}.", ""]
    out = Path(args.out)
    atomic_write(out, lambda f: f.write("\n".join(lines) + "\n"), binary=False)
    write_json(out.with_suffix(".json"), report, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
