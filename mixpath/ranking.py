"""How well a supernet ranks architectures: scoring many subnets, Kendall tau, reports, plots, ground truth.

Ground-truth files hold stand-alone accuracies, one architecture a line, in the
compact form of `Arch` (`t:k,k|t:k|...`):
- `.csv`: a header `arch,accuracy`, then rows (the arch is quoted because it
  contains commas; the csv module does that);
- `.jsonl` / `.json`: one object a line, `{"arch": "6:3,5|3:7", "accuracy": 93.1}`.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from .evaluate import score_arch
from .space import Arch, ArchError, SearchSpace

_CSV_SUFFIXES = (".csv",)
_JSONL_SUFFIXES = (".jsonl", ".json")


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


def rank_architectures(net, archs: Iterable[Arch | str], calibration: Callable[[], Iterable],
                       validation: Callable[[], Iterable], progress: bool = True) -> list[tuple[Arch, float]]:
    """(arch, supernet top-1) for each arch, via `score_arch` (BN recalibration, then accuracy).

    Results keep the input order so they line up with ground truth; sort by
    accuracy for a ranking. Arch strings are parsed and every arch is checked
    against `net.space` before any is scored.
    """
    archs = [net.space.check(a) for a in archs]
    return [(a, score_arch(net, a, calibration, validation))
            for a in tqdm(archs, desc="scoring", unit="arch", disable=not progress)]


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
        "spearman_rho": float(rho.statistic),
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


# -- ground truth files -------------------------------------------------------
def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _CSV_SUFFIXES:
        return "csv"
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    raise ValueError(f"{path}: unknown ground-truth format {suffix!r}; use .csv or .jsonl")


def save_ground_truth(path, entries: Iterable[tuple[Arch | str, float]]) -> Path:
    """Write (arch, accuracy) pairs as CSV or JSON lines, chosen by the file's suffix."""
    path = Path(path)
    fmt = _format(path)
    rows = [(str(a), float(acc)) for a, acc in entries]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        if fmt == "csv":
            writer = csv.writer(f)
            writer.writerow(["arch", "accuracy"])
            writer.writerows(rows)
        else:
            f.writelines(json.dumps({"arch": a, "accuracy": acc}) + "\n" for a, acc in rows)
    return path


def _rows(path: Path, fmt: str):
    """(line number, arch text, accuracy value) per entry; ValueError naming the line for malformed ones."""
    with path.open(newline="") as f:
        if fmt == "csv":
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header] != ["arch", "accuracy"]:
                raise ValueError(f"{path}:1: expected the header 'arch,accuracy'; got {header}")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != 2:
                    raise ValueError(f"{path}:{reader.line_num}: expected 2 fields (arch, accuracy); got {len(row)} "
                                     "(quote the arch: it contains commas)")
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


__all__ = ["kendall_tau", "load_ground_truth", "plot_ranking", "rank_architectures", "ranking_report",
           "save_ground_truth"]
