"""The ranking study's outputs: numbers from its run folders, the CSVs, the PNGs, study.json and STUDY.md.

Everything here reads what the trainings, `mixpath rank` and `mixpath stats` wrote under the study's
--out folder; nothing is trained. The verdict sentences follow fixed rules, stated in STUDY.md, so the
report says the same whatever the numbers turn out to be.
"""
from __future__ import annotations

import csv
import io
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from mixpath.checkpoint import atomic_write, write_json
from mixpath.stats import describe as describe_stats
from mixpath.stats import plot_stats

SHADOW_VS_SINGLE = {"mixpath": ("mixpath-shadow", "mixpath-single"), "official": ("official-shadow", "official-single")}
FAIR_VS_UNIFORM = ("mixpath-shadow-fair", "mixpath-shadow")


def _read_json(path: Path):
    return json.loads(path.read_text())


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def spread_ratio_ci(first: np.ndarray, multi: list[np.ndarray], n_resamples: int, seed: int = 0) -> list:
    """A 95% BCa bootstrap interval of arch std / pooled seed std: architectures are resampled for the first,
    the multi-seed architectures (independently) for the second. [None, None] where it is undefined."""
    def ratio(first_seed, variances):
        return np.std(first_seed, ddof=1) / np.sqrt(np.mean(variances))

    variances = np.array([v.var(ddof=1) for v in multi])
    if len(first) < 3 or len(variances) < 3 or np.sqrt(variances.mean()) < 1e-9:  # 1e-9: no spread but rounding
        return [None, None]
    with warnings.catch_warnings():  # a degenerate resample gives NaN, reported as undefined
        warnings.simplefilter("ignore")
        ci = scipy_stats.bootstrap((first, variances), ratio, vectorized=False, n_resamples=n_resamples,
                                   method="BCa", rng=np.random.default_rng(seed)).confidence_interval
    return [None if np.isnan(v) else float(v) for v in (ci.low, ci.high)]


def truth_spread(jobs, archs, seed: int, n_resamples: int) -> dict:
    """Stand-alone accuracy: its spread across architectures (first seed) against its spread across seeds."""
    runs: dict[int, dict[int, float]] = {}
    for job in jobs:
        if job.kind == "retrain":
            summary = _read_json(job.folder / "summary.json")
            runs.setdefault(job.meta["index"], {})[summary["seed"]] = summary["val_acc"]
    first = np.array([runs[i][seed] for i in range(len(archs))])
    multi = [np.array(list(r.values())) for r in runs.values() if len(r) > 1]
    seed_std = float(np.sqrt(np.mean([v.var(ddof=1) for v in multi])))
    arch_std = float(first.std(ddof=1))
    seeds = sorted(next(r for r in runs.values() if len(r) > 1))
    a, b = (np.array([r[s] for r in runs.values() if len(r) > 1]) for s in seeds[:2])
    between = scipy_stats.kendalltau(a, b).statistic if len(a) > 2 else np.nan
    return {"arch_std": arch_std, "seed_std": seed_std, "ratio": arch_std / seed_std if seed_std else None,
            "ratio_ci95": spread_ratio_ci(first, multi, n_resamples),
            "accuracy_min": float(first.min()), "accuracy_max": float(first.max()),
            "accuracy_mean": float(first.mean()), "seed_archs": len(multi), "seeds": seeds,
            "tau_between_seeds": None if np.isnan(between) else float(between),
            "per_arch": {str(archs[i]): runs[i] for i in range(len(archs))}}


def paired_tau_difference(truth, first, second, n_resamples: int = 2000, seed: int = 0) -> dict:
    """tau(first) - tau(second) against the same truth, with a 95% percentile bootstrap interval over
    architectures (the same resample for both), so a difference can be told from noise."""
    truth, first, second = (np.asarray(v, float) for v in (truth, first, second))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(truth), len(truth))
        d = scipy_stats.kendalltau(first[idx], truth[idx]).statistic - \
            scipy_stats.kendalltau(second[idx], truth[idx]).statistic
        if np.isfinite(d):
            diffs.append(d)
    point = scipy_stats.kendalltau(first, truth).statistic - scipy_stats.kendalltau(second, truth).statistic
    low, high = np.percentile(diffs, [2.5, 97.5]) if diffs else (np.nan, np.nan)
    return {"difference": float(point), "ci95": [float(low), float(high)]}


def read_scores(out: Path, names) -> dict[str, dict[str, list]]:
    """Per supernet: the arch, standalone, acc_before and acc_after columns of its scores.csv."""
    result = {}
    for name in names:
        with (out / "rank" / name / "scores.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        result[name] = {"arch": [r["arch"] for r in rows],
                        **{k: [float(r[k]) for r in rows] for k in ("standalone", "acc_before", "acc_after")}}
    return result


def curves(out: Path, names) -> dict[str, list[dict]]:
    return {name: [json.loads(line) for line in (out / "supernets" / name / "metrics.jsonl").read_text().splitlines()
                   if line.strip()] for name in names}


def plot_curves(history: dict[str, list[dict]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for i, (name, records) in enumerate(history.items()):
        epochs = [r["epoch"] for r in records]
        style = {"shadow": "-", "single": "--"}.get(name.rsplit("-", 1)[-1], ":")
        loss_ax.plot(epochs, [r["train_loss"] for r in records], style, color=f"C{i}", label=name)
        acc_ax.plot(epochs, [r["val_acc"] for r in records], style, color=f"C{i}", label=name, marker=".")
    loss_ax.set_title("supernet training loss (sampled subnets)", fontsize=9)
    acc_ax.set_title(f"monitor architecture, val top-1 after BN recalibration\n{records[0]['val_arch']}", fontsize=9)
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_scatters(scores: dict, report: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    rows = (len(scores) + 2) // 3
    fig = Figure(figsize=(14, 4.3 * rows))
    axes = fig.subplots(rows, 3).ravel()
    for ax in axes[len(scores):]:
        ax.set_visible(False)
    for ax, (name, s) in zip(axes, scores.items()):
        r = report[name]
        ax.scatter(s["acc_before"], s["standalone"], marker="x", s=16,
                   label=f"before recalibration: tau {_fmt(r['before_recalibration']['kendall_tau'])}")
        ax.scatter(s["acc_after"], s["standalone"], marker="o", s=16,
                   label=f"after recalibration: tau {_fmt(r['kendall_tau'])}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("supernet top-1 (val)")
        ax.set_ylabel("stand-alone top-1 (val)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_spread(spread: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6))
    ax = fig.add_subplot()
    per_arch = sorted(spread["per_arch"].values(), key=lambda r: np.mean(list(r.values())))
    for x, runs in enumerate(per_arch):
        values = list(runs.values())
        ax.scatter([x] * len(values), values, s=10, color="C1" if len(values) > 1 else "C0")
    ax.set_xlabel("architecture (sorted by mean stand-alone accuracy)")
    ax.set_ylabel("stand-alone val top-1")
    ax.set_title(f"spread across architectures (std {spread['arch_std']:.4f}) vs across seeds "
                 f"(orange, pooled std {spread['seed_std']:.4f})", fontsize=9)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _fmt(value, digits: int = 3) -> str:
    return "undefined" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _ci(pair, digits: int = 3) -> str:
    return f"[{_fmt(pair[0], digits)}, {_fmt(pair[1], digits)}]"


def stats_summary(report: dict) -> dict:
    """Per state and j >= 2: mean cosine and norm ratio over layers."""
    result = {}
    for state in ("initial", "trained"):
        for j in range(2, report["max_paths"] + 1):
            rows = [r for r in report[state] if r["j"] == j]
            result[f"{state}_j{j}"] = {"cosine": float(np.mean([r["cosine"] for r in rows])),
                                       "norm_ratio": float(np.mean([r["norm_ratio"] for r in rows]))}
    return result


def claim1_verdict(summary: dict, max_paths: int) -> str:
    """Reproduced: after training, for every j >= 2, cosine >= 0.9 and the norm ratio nearer j than sqrt(j)."""
    trained = [(j, summary[f"trained_j{j}"]) for j in range(2, max_paths + 1)]
    aligned = all(s["cosine"] >= 0.9 for _, s in trained)
    scaled = all(s["norm_ratio"] >= (j + j ** 0.5) / 2 for j, s in trained)
    numbers = "; ".join(f"j={j}: cosine {s['cosine']:.3f}, norm ratio {s['norm_ratio']:.2f} (j = {j}, sqrt j = "
                        f"{j ** 0.5:.2f})" for j, s in trained)
    if aligned and scaled:
        return f"reproduced ({numbers})"
    if scaled or aligned:
        return f"partly reproduced ({numbers})"
    return f"not reproduced: the paths add more like independent features than like copies ({numbers})"


def _difference_verdict(diff: dict, label: str, when: str, first: str, second: str, neither: str) -> str:
    """`first` when the 95% interval of the tau difference lies above 0, `second` below, else `neither`."""
    low, high = diff["ci95"]
    verdict = first if low > 0 else second if high < 0 else neither
    return f"{verdict} {when} ({label} = {diff['difference']:+.3f}, 95% CI {_ci(diff['ci95'])})"


def _informative(spread: dict) -> bool:
    """The aim the study was set: the truth varies across architectures at least 3 times as much as across seeds."""
    return spread["ratio"] is not None and spread["ratio"] >= 3


def claim2_verdict(diff: dict, when: str) -> str:
    return _difference_verdict(diff, "tau(Shadow BN) - tau(single BN)", when, "reproduced, Shadow BN ranks better",
                               "not reproduced, single BN ranks better", "not shown, the difference is within noise")


def fairness_verdict(diff: dict, when: str) -> str:
    return _difference_verdict(diff, "tau(fair) - tau(uniform)", when, "fair sampling ranks better",
                               "uniform sampling ranks better", "no difference beyond noise")


def write_outputs(o, jobs, archs, splits, session_seconds: float, since_start: float) -> dict:
    """Write the results folder and the report; returns study.json's content."""
    from mixpath.data import describe

    out, results = o.out, o.results
    names = [j.name for j in jobs if j.kind == "supernet"]
    spread = truth_spread(jobs, archs, o.seed, o.bootstrap)
    scores = read_scores(out, names)
    ranking = {name: _read_json(out / "rank" / name / "ranking.json") for name in names}
    stats_reports = {name: _read_json(out / "stats" / name / "stats.json") for name in names}
    history = curves(out, names)
    truth = scores[names[0]]["standalone"]
    def paired(a, b):
        return {when: paired_tau_difference(truth, scores[a][key], scores[b][key], o.bootstrap)
                for when, key in (("after", "acc_after"), ("before", "acc_before"))}

    differences = {layout: paired(a, b) for layout, (a, b) in SHADOW_VS_SINGLE.items()}
    fairness = paired(*FAIR_VS_UNIFORM)
    summaries = {j.name: _read_json(j.folder / "summary.json") for j in jobs}
    train_seconds = sum(s["seconds"] for s in summaries.values())

    # scores.csv: one row per architecture and supernet
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["arch", "supernet", "acc_before", "acc_after"])
    for name in names:
        s = scores[name]
        writer.writerows(zip(s["arch"], [name] * len(s["arch"]), s["acc_before"], s["acc_after"]))
    atomic_write(results / "scores.csv", lambda f: f.write(text.getvalue()), binary=False)
    plot_curves(history, results / "curves.png")
    plot_scatters(scores, ranking, results / "ranking.png")
    plot_spread(spread, results / "spread.png")
    plot_stats({f"{name} ({describe_stats(r)})": r for name, r in stats_reports.items()}, results / "stats.png")

    stat_numbers = {name: stats_summary(r) for name, r in stats_reports.items()}
    study = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(o).items()},
             "data": describe(splits), "space": summaries[names[0]]["space"], "spread": spread,
             "recipe": {k: summaries[names[0]]["config"][k] for k in RECIPE_KEYS},
             "ranking": {name: {k: r[k] for k in ("n", "kendall_tau", "tau_ci95", "spearman", "top_k_overlap",
                                                    "best_predicted_true_rank", "before_recalibration")}
                         for name, r in ranking.items()},
             "shadow_minus_single": differences, "fair_minus_uniform": fairness, "stats": stat_numbers,
             "supernet_final": {name: history[name][-1] for name in names},
             "supernet_best_val": {name: max(r["val_acc"] for r in history[name]) for name in names},
             "train_seconds": train_seconds, "session_seconds": session_seconds, "since_start_seconds": since_start,
             "written": time.strftime("%Y-%m-%d %H:%M")}
    write_json(results / "study.json", study)
    _write_text(o.doc, _markdown(study, stats_reports))
    return study


RECIPE_KEYS = ("lr", "batch_size", "momentum", "weight_decay", "augment")


def _recipe(r: dict) -> str:
    augment = {True: "the dataset's augmentation", False: "no augmentation"}[r["augment"]]
    return (f"SGD lr {r['lr']} momentum {r['momentum']}, cosine, batch {r['batch_size']}, weight decay "
            f"{r['weight_decay']}, {augment}")


def _markdown(study: dict, stats_reports: dict) -> str:
    spread, c = study["spread"], study["config"]
    rel = lambda name: f"study/{name}"  # noqa: E731 - paths relative to STUDY.md in benchmarks/
    m = c["max_paths"]
    lines = [
        "# Does MixPath work here? A small-scale reproduction",
        "",
        "Written by `python -m benchmarks.ranking_study" + (" --smoke" if c["smoke"] else "") + "` on "
        f"{study['written']}; every number below is read from its outputs (`{rel('study.json')}`). "
        "Run it again with the same options to continue a killed study; `--out` (default "
        "`benchmarks/out/ranking_study`, not committed) holds every run folder and checkpoint.",
        "",
        "## The two claims (`../shared/design/MIXPATH.md`)",
        "1. Features summed from j paths are close to j times a single path's features (nearly the same "
        "direction, about j times the norm), so one BatchNorm cannot serve every path count.",
        "2. Shadow BN (one BN per path count) therefore stabilises supernet training and improves how well the "
        "supernet ranks architectures (the paper: Kendall tau 0.597 on its NAS-Bench-101 subspace).",
        "",
        "## Verdicts at this scale",
    ]
    for name, report in stats_reports.items():
        lines.append(f"- Claim 1, {name}: {claim1_verdict(study['stats'][name], m)}.")
    for layout, diff in study["shadow_minus_single"].items():
        lines.append(f"- Claim 2 (ranking), {layout} layout: {claim2_verdict(diff['after'], 'after BN recalibration')}"
                     f"; {claim2_verdict(diff['before'], 'before recalibration')}.")
    fair = study["fair_minus_uniform"]
    lines.append(f"- Strict-fairness sampling (mixpath layout, Shadow BN, the same images): "
                 f"{fairness_verdict(fair['after'], 'after BN recalibration')}; "
                 f"{fairness_verdict(fair['before'], 'before recalibration')}. Each fair step trains a group of "
                 f"{2 * len(c['kernels'])} architectures on its batch, so it cost that many times the compute.")
    if not _informative(spread):
        lines.append(f"- **Caution**: every ranking verdict above rests on a noisy ground truth. It varies across "
                     f"architectures only {_fmt(spread['ratio'], 2)} times as much as across seeds, and two seeds of "
                     f"it rank the same architectures with a Kendall tau of {_fmt(spread['tau_between_seeds'])} "
                     "(below): read these verdicts as what this run measured, not as settled.")
    final = study["supernet_final"]
    lines.append("- Claim 2 (training): final epoch, train loss / monitor val top-1: " + "; ".join(
        f"{name} {r['train_loss']:.3f} / {r['val_acc']:.3f}" for name, r in final.items())
        + " (curves below; one run each, so differences of a few points are within seed noise, "
        f"{spread['seed_std']:.3f} for stand-alone nets).")
    lines += [
        "",
        "Rules behind the verdicts: claim 1 is reproduced when, after training and averaged over layers, every "
        "j >= 2 has cosine >= 0.9 and a norm ratio nearer j than sqrt(j) (independent paths give cosine "
        "1/sqrt(j) and ratio sqrt(j)); partly when one of the two holds. Claim 2's ranking part is reproduced "
        "when the 95% bootstrap interval of tau(Shadow BN) - tau(single BN), resampling architectures "
        "jointly for both supernets, lies above 0.",
        "",
        "## Set-up",
        f"- Data: {study['data']}.",
        f"- Space: tiny (4 searchable layers), kernels {c['kernels']}, at most {m} paths, expansions 3 and 6, "
        f"width multiplier {c['width_mult']}, image {c['image_size'] or 'native'} px.",
        f"- Supernets: {c['supernet_epochs']} epochs each, the dataset's recipe ({_recipe(study['recipe'])}), "
        f"seed {c['seed']}, the release's uniform sampler (t, then j, then a j-subset); the fifth samples "
        "strict-fairness groups (`--sampling fair`, see the README) over the same images and epochs.",
        f"- Ground truth: {c['archs']} architectures sampled with seed {c['seed']}, stratified so that in every "
        f"layer each path count 1..{m} is used by the same number of them (to within one); each retrained "
        f"from scratch in the mixpath layout for {c['retrain_epochs']} epochs with the same recipe "
        f"(`mixpath.training.retrain`, what `mixpath retrain` calls); {spread['seed_archs']} of them with seeds {spread['seeds']}. The truth is the "
        "validation accuracy, averaged over seeds where there are several (`mixpath rank --collect`'s "
        "`collect_truth`). The official-layout supernets are ranked against the same mixpath-layout truth, so "
        "all four see the same architectures and ground truth.",
        "- Ranking: `mixpath rank`'s own function (`mixpath.cli.rank.rank`) per supernet: validation accuracy "
        "with the supernet's running BN statistics (before) and after recalibrating the BN rows each subnet "
        "uses on 20 training batches (after); Kendall tau-b with a 95% BCa bootstrap interval over "
        f"architectures ({c['bootstrap']} resamples), Spearman rho, top-5 overlap. Selection never reads the "
        "test split.",
        "- Stats: `mixpath.stats.supernet_stats` (what `mixpath stats` calls) on each supernet, "
        "256 training images.",
        f"- Budget: {c['workers']} trainings at a time, one thread each, backend {c['backend']} on {c['device']} "
        f"({platform.processor() or platform.machine()}). The trainings took {study['train_seconds'] / 60:.1f} "
        f"min of process time in all; the study took {study['since_start_seconds'] / 60:.1f} min of wall time from "
        f"its first start to its report (its last session: {study['session_seconds'] / 60:.1f} min). The machine "
        "was shared with other jobs.",
        "",
        "## Is the ground truth informative?",
        f"Stand-alone validation accuracy ranges from {spread['accuracy_min']:.3f} to {spread['accuracy_max']:.3f} "
        f"(mean {spread['accuracy_mean']:.3f}). Its standard deviation across the {c['archs']} architectures is "
        f"**{spread['arch_std']:.4f}**; across seeds (pooled over the {spread['seed_archs']} architectures with "
        f"several seeds) **{spread['seed_std']:.4f}**: a ratio of **{_fmt(spread['ratio'], 2)}** (95% bootstrap "
        f"interval {_ci(spread['ratio_ci95'], 2)}). Kendall tau "
        f"between two seeds' accuracies over those architectures: {_fmt(spread['tau_between_seeds'])} (a ceiling "
        "for any supernet's tau against single-seed truth). How the default configuration was chosen, from "
        f"pilots of this spread: [PILOTS.md]({rel('PILOTS.md')}).",
        "",
        *([] if _informative(spread) else [
            f"**The ground truth is too noisy here**: the spread across architectures is only "
            f"{_fmt(spread['ratio'], 2)} times the spread across seeds, short of the several times a ranking "
            "needs (the aim this study was set). Every tau below is bounded by that noise, and differences "
            "between supernets are hard to tell from it. The pilots (PILOTS.md) found no setting of this "
            "dataset that reaches 3: longer trainings bring the architectures together faster than they quiet "
            "the seeds, and the seed spread left is mostly the sampling noise of the validation digits. A "
            "dataset with more distinct images (`--data cifar10`) is what a sharper ground truth needs.", ""]),
        f"![spread]({rel('spread.png')})",
        "",
        "## Ranking",
        "| supernet | tau after recal. | 95% CI | Spearman | top-5 overlap | tau before recal. | 95% CI | "
        "Spearman | top-5 overlap | true rank of its pick |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in study["ranking"].items():
        b = r["before_recalibration"]
        lines.append(f"| {name} | {_fmt(r['kendall_tau'])} | {_ci(r['tau_ci95'])} | {_fmt(r['spearman'])} | "
                     f"{_fmt(r['top_k_overlap'].get('5'))} | {_fmt(b['kendall_tau'])} | {_ci(b['tau_ci95'])} | "
                     f"{_fmt(b['spearman'])} | {_fmt(b['top_k_overlap'].get('5'))} | "
                     f"{r['best_predicted_true_rank']} of {r['n']} |")
    lines += ["", f"Shadow BN minus single BN, same architectures and truth (paired bootstrap, {c['bootstrap']} "
              "resamples):", "",
              "| layout | after recalibration | 95% CI | before recalibration | 95% CI |", "|---|---|---|---|---|"]
    for layout, d in study["shadow_minus_single"].items():
        lines.append(f"| {layout} | {d['after']['difference']:+.3f} | {_ci(d['after']['ci95'])} | "
                     f"{d['before']['difference']:+.3f} | {_ci(d['before']['ci95'])} |")
    d = study["fair_minus_uniform"]
    lines += ["", "Fair minus uniform sampling (mixpath layout, Shadow BN), the same way:", "",
              "| after recalibration | 95% CI | before recalibration | 95% CI |", "|---|---|---|---|",
              f"| {d['after']['difference']:+.3f} | {_ci(d['after']['ci95'])} | {d['before']['difference']:+.3f} | "
              f"{_ci(d['before']['ci95'])} |"]
    lines += ["", f"![ranking]({rel('ranking.png')})", "", "## Supernet training",
              "One fixed monitor architecture (the first of the training's evaluation stream) is scored on the "
              "validation split after BN recalibration at the end of every epoch.", "",
              "| supernet | final train loss | final train acc | monitor val top-1 (last) | best monitor val "
              "top-1 |", "|---|---|---|---|---|"]
    for name, r in study["supernet_final"].items():
        lines.append(f"| {name} | {r['train_loss']:.3f} | {r['train_acc']:.3f} | {r['val_acc']:.3f} | "
                     f"{study['supernet_best_val'][name]:.3f} |")
    lines += ["", f"![curves]({rel('curves.png')})", "", "## Claim 1: j-path sums against single paths",
              "Mean over the 4 layers; cosine between the j-path sum and j times each of its paths; norm ratio "
              "|sum| / mean |single| (j if aligned, sqrt(j) if independent). Initial: the same supernet "
              "freshly initialised with the run's seed.", "",
              "| supernet | j | cosine initial | cosine trained | norm ratio initial | norm ratio trained |",
              "|---|---|---|---|---|---|"]
    for name, s in study["stats"].items():
        for j in range(2, m + 1):
            a, b = s[f"initial_j{j}"], s[f"trained_j{j}"]
            lines.append(f"| {name} | {j} | {a['cosine']:.3f} | {b['cosine']:.3f} | {a['norm_ratio']:.2f} | "
                         f"{b['norm_ratio']:.2f} |")
    lines += ["", f"![stats]({rel('stats.png')})", "",
              "## Files", f"- `{rel('truth.csv')}`: arch, accuracy (mean val over seeds), accuracy_std, n, seeds.",
              f"- `{rel('scores.csv')}`: arch, supernet, acc_before, acc_after (one row per arch and supernet).",
              f"- `{rel('study.json')}`: every number above; PNGs: spread, ranking, curves, stats.",
              "", "## The CIFAR-10 version, on a GPU",
              "`python -m benchmarks.ranking_study --data cifar10 --data-dir D --device cuda --workers 1 "
              "--supernet-epochs 100 --retrain-epochs 30 --width-mult 1 --kernels 3,5,7,9 --max-paths 4 "
              "--out runs/study-cifar --results runs/study-cifar/results --doc runs/study-cifar/STUDY.md` "
              "(D: the cifar-10-batches-py folder; the cifar space, 12 layers; expect hours on one GPU: "
              "each of the 60 retrainings is a full CIFAR-10 training).", ""]
    return "\n".join(lines)
