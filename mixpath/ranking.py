"""How well a supernet ranks architectures: scoring many subnets, Kendall tau, reports, plots, ground truth.

Ground-truth files hold stand-alone accuracies, one architecture a line, in the
compact form of `Arch` (`t:k,k|t:k|...`):
- `.csv`: a header starting `arch,accuracy`, then rows (the arch is quoted
  because it contains commas; the csv module does that);
- `.jsonl` / `.json`: one object a line, `{"arch": "6:3,5|3:7", "accuracy": 93.1}`.
Further columns or keys (`collect_truth` writes accuracy_std, n and seeds) are
kept for people and ignored when ranking. The accuracy is the stand-alone
VALIDATION accuracy: ranking feeds architecture selection, which never looks at
test data, so `collect_truth` leaves test accuracy out of the file.
"""
from __future__ import annotations

import csv
import json
import math
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from .checkpoint import atomic_write
from .evaluate import accuracy, score_arch
from .space import Arch, ArchError, SearchSpace, space_from_dict

_CSV_SUFFIXES = (".csv",)
_JSONL_SUFFIXES = (".jsonl", ".json")
TRUTH_COLUMNS = ("arch", "accuracy", "accuracy_std", "n", "seeds")
SUMMARY_NAME = "summary.json"
# retrains that differ in these trained different networks or data: not one ground truth
_SAME_SETTING = ("space", "layout", "data")


def _paired(predicted, truth, what="predicted and true accuracies") -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(predicted, dtype=float), np.asarray(truth, dtype=float)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"{what} must be flat sequences of numbers")
    if len(a) != len(b):
        raise ValueError(f"{what} differ in length ({len(a)} vs {len(b)}); they must be paired per architecture")
    if len(a) < 2:
        raise ValueError(f"a rank correlation needs at least 2 architectures; got {len(a)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"{what} contain NaN or infinity")
    return a, b


def kendall_tau(predicted: Sequence[float], truth: Sequence[float]) -> tuple[float, float]:
    """(tau, p-value) of scipy.stats.kendalltau (tau-b); NaN when either list is constant."""
    a, b = _paired(predicted, truth)
    result = stats.kendalltau(a, b)
    return float(result.statistic), float(result.pvalue)


def bootstrap_tau_ci(predicted: Sequence[float], truth: Sequence[float], confidence: float = 0.95,
                     n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """(low, high): a `confidence` bootstrap interval of Kendall tau, resampling architectures (paired).

    scipy.stats.bootstrap with method 'BCa': tau is bounded by +-1 and its
    sampling distribution is skewed and biased towards 0 near those bounds (the
    range good supernets reach), which the percentile interval ignores and BCa
    corrects, at the cost of n extra tau evaluations for the jackknife. Where a
    resample has a constant side (tau undefined; likely only for a few
    architectures or heavy ties) the interval may come back NaN.
    """
    a, b = _paired(predicted, truth)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95); got {confidence}")
    if len(np.unique(a)) < 2 or len(np.unique(b)) < 2:
        raise ValueError("Kendall tau is undefined when all predicted or all true accuracies are equal")
    # A degenerate resample makes scipy warn and return NaN; the NaN is the answer callers report, the
    # warning only noise on the user's terminal.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.bootstrap((a, b), lambda x, y: stats.kendalltau(x, y).statistic, paired=True,
                                 vectorized=False, confidence_level=confidence, n_resamples=n_resamples,
                                 method="BCa", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def uncalibrated_accuracy(net, arch: Arch | str, validation: Callable[[], Iterable]) -> float:
    """Top-1 of `arch` with the supernet's own running BN statistics (no recalibration), on a subnet copy."""
    return accuracy(net.subnet(net.space.check(arch)), None, validation())


def rank_architectures(net, archs: Iterable[Arch | str], calibration: Callable[[], Iterable] | None,
                       validation: Callable[[], Iterable], progress: bool = True, *,
                       recalibrate: bool = True) -> list[tuple[Arch, float]]:
    """(arch, supernet top-1) for each arch: via `score_arch` (BN recalibration, then accuracy), or with
    `recalibrate=False` via `uncalibrated_accuracy` (calibration is then not used and may be None).

    Results keep the input order so they line up with ground truth; sort by
    accuracy for a ranking. Arch strings are parsed and every arch is checked
    against `net.space` before any is scored.
    """
    archs = [net.space.check(a) for a in archs]
    if recalibrate and calibration is None:
        raise ValueError("scoring with BN recalibration needs calibration batches")
    score = ((lambda a: score_arch(net, a, calibration, validation)) if recalibrate
             else (lambda a: uncalibrated_accuracy(net, a, validation)))
    desc = "scoring" if recalibrate else "scoring (no recalibration)"
    return [(a, score(a)) for a in tqdm(archs, desc=desc, unit="arch", disable=not progress)]


def ranking_report(archs: Sequence[Arch | str], supernet_accs: Sequence[float], standalone_accs: Sequence[float],
                   top_k: Sequence[int] = (1, 5, 10)) -> dict:
    """Kendall tau and Spearman rho (with p-values), top-k overlap, and where the supernet's pick really ranks.

    top_k_overlap[k]: the fraction of the k best stand-alone architectures that
    are also among the supernet's k best (only for k < n, where it means something).
    """
    pred, true = _paired(supernet_accs, standalone_accs, "supernet and stand-alone accuracies")
    if len(archs) != len(pred):
        raise ValueError(f"{len(archs)} architectures but {len(pred)} accuracies; they must be paired")
    tau, tau_p = kendall_tau(pred, true)
    rho = stats.spearmanr(pred, true)
    # stable sorts: ties keep input order, so the report is deterministic
    pred_order = np.argsort(-pred, kind="stable")
    true_order = np.argsort(-true, kind="stable")
    true_rank = np.empty(len(true), dtype=int)
    true_rank[true_order] = np.arange(1, len(true) + 1)
    best = int(pred_order[0])
    return {
        "n": len(pred),
        "kendall_tau": tau,
        "kendall_p": tau_p,
        "spearman": float(rho.statistic),
        "spearman_p": float(rho.pvalue),
        "top_k_overlap": {k: len(set(pred_order[:k]) & set(true_order[:k])) / k for k in top_k if 0 < k < len(pred)},
        "best_predicted": str(archs[best]),
        "best_predicted_true_rank": int(true_rank[best]),
    }


def plot_ranking(supernet_accs: Sequence[float], standalone_accs: Sequence[float], path,
                 title: str | None = None) -> Path:
    """Scatter of stand-alone against supernet accuracy, Kendall tau in the title, saved as PNG."""
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend and global state alone

    pred, true = _paired(supernet_accs, standalone_accs, "supernet and stand-alone accuracies")
    tau, p = kendall_tau(pred, true)
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    ax.scatter(pred, true, s=14)
    ax.set_xlabel("supernet top-1 (after BN recalibration)")
    ax.set_ylabel("stand-alone top-1")
    ax.set_title(f"{title + ': ' if title else ''}Kendall tau = {tau:.3f} (p = {p:.2g}, n = {len(pred)})")
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


def rank_report(archs: Sequence[Arch | str], standalone_accs: Sequence[float], recalibrated: Sequence[float],
                uncalibrated: Sequence[float], *, top_k: Sequence[int] = (1, 5, 10), n_resamples: int = 2000,
                seed: int = 0) -> dict:
    """ranking.json: `ranking_report` plus `tau_ci95` for the scores after BN recalibration, the same under
    `before_recalibration`, and the per-architecture numbers under `archs`.

    standalone_accs: stand-alone validation accuracies; recalibrated /
    uncalibrated: the supernet's scores with and without BN recalibration, all
    paired with `archs`.
    """
    archs = [str(a) for a in archs]
    for name, scores in (("recalibrated", recalibrated), ("uncalibrated", uncalibrated)):
        if len(scores) != len(archs):
            raise ValueError(f"{len(archs)} architectures but {len(scores)} {name} scores; they must be paired")

    def metrics(scores):
        report = ranking_report(archs, scores, standalone_accs, top_k)
        if math.isnan(report["kendall_tau"]):
            # Every score equal (e.g. an untrained supernet without recalibration at chance): no ranking at
            # all. Reported as null, not refused, so the other half of the report still comes out.
            report = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}
            report["tau_ci95"] = [None, None]
            report["note"] = "every score is equal: the ranking is undefined"
        else:
            # NaN (BCa on a degenerate resample, e.g. very few archs) is written as null: JSON has no NaN
            report["tau_ci95"] = [None if math.isnan(v) else v
                                  for v in bootstrap_tau_ci(scores, standalone_accs, 0.95, n_resamples, seed)]
        return report

    after, before = metrics(recalibrated), metrics(uncalibrated)
    del before["n"]
    return {**after, "bootstrap": {"method": "BCa", "n_resamples": n_resamples, "seed": seed},
            "before_recalibration": before,
            "archs": [{"arch": a, "standalone": float(t), "supernet": float(r), "supernet_uncalibrated": float(u)}
                      for a, t, r, u in zip(archs, standalone_accs, recalibrated, uncalibrated)]}


def plot_rank_scatter(standalone_accs: Sequence[float], recalibrated: Sequence[float], uncalibrated: Sequence[float],
                      path, title: str | None = None) -> Path:
    """Stand-alone against supernet accuracy, before and after BN recalibration in one PNG, tau in the legend."""
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend and global state alone

    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    for scores, label, marker in ((uncalibrated, "before BN recalibration", "x"),
                                  (recalibrated, "after BN recalibration", "o")):
        pred, true = _paired(scores, standalone_accs, "supernet and stand-alone accuracies")
        ax.scatter(pred, true, s=16, marker=marker, label=f"{label}: tau = {kendall_tau(pred, true)[0]:.3f}")
    ax.set_xlabel("supernet top-1")
    ax.set_ylabel("stand-alone top-1 (validation)")
    ax.set_title(f"{title + ': ' if title else ''}n = {len(standalone_accs)} architectures")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    return path


# -- ground truth files -------------------------------------------------------
def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _CSV_SUFFIXES:
        return "csv"
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    raise ValueError(f"{path}: unknown ground-truth format {suffix!r}; use .csv or .jsonl")


def _write_truth(path: Path, rows: list[dict], columns: Sequence[str]) -> Path:
    """Rows (dicts with `columns`) as CSV or JSON lines, by the file's suffix, written atomically."""
    fmt = _format(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(f):
        if fmt == "csv":
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)
        else:
            f.writelines(json.dumps({c: row[c] for c in columns}) + "\n" for row in rows)

    atomic_write(path, write, binary=False)
    return path


def save_ground_truth(path, entries: Iterable[tuple[Arch | str, float]]) -> Path:
    """Write (arch, accuracy) pairs as CSV or JSON lines, chosen by the file's suffix."""
    rows = [{"arch": str(a), "accuracy": float(acc)} for a, acc in entries]
    return _write_truth(Path(path), rows, TRUTH_COLUMNS[:2])


def _rows(path: Path, fmt: str):
    """(line number, arch text, accuracy value) per entry; ValueError naming the line for malformed ones."""
    with path.open(newline="") as f:
        if fmt == "csv":
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header[:2]] != ["arch", "accuracy"]:
                raise ValueError(f"{path}:1: expected the header 'arch,accuracy' (further columns are ignored); "
                                 f"got {header}")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise ValueError(f"{path}:{reader.line_num}: expected {len(header)} fields ({', '.join(header)}); "
                                     f"got {len(row)} (quote the arch: it contains commas)")
                yield reader.line_num, row[0], row[1]
        else:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict) or "arch" not in obj or "accuracy" not in obj:
                    raise ValueError(f"{path}:{line_no}: expected an object with 'arch' and 'accuracy'")
                yield line_no, obj["arch"], obj["accuracy"]


def load_ground_truth(path, space: SearchSpace | None = None) -> list[tuple[Arch, float]]:
    """Read (arch, accuracy) pairs from CSV or JSON lines; with `space`, each arch is checked against it.

    A malformed line, an unparsable arch or accuracy, or an arch listed twice
    raises ValueError naming the file and line.
    """
    path = Path(path)
    fmt = _format(path)
    entries, seen = [], {}
    for line_no, arch_text, acc_value in _rows(path, fmt):
        where = f"{path}:{line_no}"
        try:
            if not isinstance(arch_text, str):
                raise ArchError(f"arch must be a string like '6:3,5|3:7'; got {arch_text!r}")
            arch = space.parse(arch_text) if space is not None else Arch.parse(arch_text)
        except ArchError as e:
            raise ValueError(f"{where}: {e}") from None
        try:
            if isinstance(acc_value, bool):
                raise ValueError
            acc = float(acc_value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: accuracy {acc_value!r} is not a number") from None
        if not math.isfinite(acc):
            raise ValueError(f"{where}: accuracy {acc_value!r} is not finite")
        if arch in seen:
            raise ValueError(f"{where}: architecture {arch} is already listed on line {seen[arch]}")
        seen[arch] = line_no
        entries.append((arch, acc))
    if not entries:
        raise ValueError(f"{path}: no entries")
    return entries


def _read_summary(run_dir: Path) -> dict:
    path = run_dir / SUMMARY_NAME
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}); rerun or drop that retrain folder") from None
    if not isinstance(summary, dict) or "arch" not in summary or "val_acc" not in summary:
        raise ValueError(f"{path}: expected a retrain summary with 'arch' and 'val_acc'")
    return summary


def collect_truth(dirs: Iterable[str | os.PathLike], out_path) -> list[dict]:
    """Gather retrain summaries (DIR/summary.json) into a ground-truth file; returns its rows.

    One row per architecture, in order of first appearance: `accuracy` is the
    mean stand-alone validation accuracy over its retrains, `accuracy_std` the
    sample standard deviation over seeds (None for one retrain), `n` the
    number of retrains and `seeds` their seeds (';'-joined in CSV). test_acc
    is left out (see the module docstring). Refused, naming the folders: ones
    without summary.json, retrains of different spaces, layouts or data, and
    two retrains of one architecture with the same seed (one run counted twice).
    """
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise ValueError("collect_truth needs at least one retrain folder")
    missing = [str(d) for d in dirs if not (d / SUMMARY_NAME).is_file()]
    if missing:
        raise ValueError(f"no {SUMMARY_NAME} in {', '.join(missing)}: pass finished retrain folders only")
    summaries = [(d, _read_summary(d)) for d in dirs]
    first_dir, first = summaries[0]
    for d, summary in summaries[1:]:
        for key in _SAME_SETTING:
            if summary.get(key) != first.get(key):
                raise ValueError(f"{d} retrained with {key} {summary.get(key)} but {first_dir} with "
                                 f"{first.get(key)}; collect one {key} per truth file")
    space = space_from_dict(first["space"]) if first.get("space") else None
    runs: dict[Arch, list[tuple[Path, float, object]]] = {}
    for d, summary in summaries:
        where = d / SUMMARY_NAME
        try:
            arch = space.parse(summary["arch"]) if space is not None else Arch.parse(summary["arch"])
        except ArchError as e:
            raise ValueError(f"{where}: {e}") from None
        acc = summary["val_acc"]
        if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not math.isfinite(acc):
            raise ValueError(f"{where}: val_acc {acc!r} is not a finite number")
        seed = summary.get("seed")
        twin = next((other for other, _, s in runs.get(arch, []) if seed is not None and s == seed), None)
        if twin is not None:
            raise ValueError(f"{twin} and {d} both retrained {arch} with seed {seed}; drop one of them")
        runs.setdefault(arch, []).append((d, float(acc), seed))
    rows = []
    for arch, entries in runs.items():
        accs = [acc for _, acc, _ in entries]
        seeds = [s for _, _, s in entries]
        rows.append({"arch": str(arch), "accuracy": float(np.mean(accs)),
                     "accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
                     "n": len(accs), "seeds": seeds})
    out_path = Path(out_path)
    file_rows = rows
    if _format(out_path) == "csv":  # a CSV cell holds text: seeds joined, a missing std empty
        file_rows = [{**r, "seeds": ";".join("" if s is None else str(s) for s in r["seeds"])} for r in rows]
    _write_truth(out_path, file_rows, TRUTH_COLUMNS)
    return rows


__all__ = ["SUMMARY_NAME", "TRUTH_COLUMNS", "bootstrap_tau_ci", "collect_truth", "kendall_tau", "load_ground_truth",
           "plot_rank_scatter", "plot_ranking", "rank_architectures", "rank_report", "ranking_report",
           "save_ground_truth", "uncalibrated_accuracy"]
