"""From architecture weights to an architecture, and the numbers that show a search collapsing.

Derivation, per layer: the expansion rate with the largest weight, and the
kernels whose weight exceeds `keep_threshold`, the largest first, at most the
space's m; when none does, the kernel with the largest weight alone.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from ..checkpoint import atomic_write
from ..space import Arch, LayerChoice, SearchSpace

__all__ = ["derive_arch", "layer_weights", "collapse_stats", "plot_weights", "read_history"]


def derive_arch(space: SearchSpace, kernel_weights: Sequence[Sequence[float]],
                expansion_weights: Sequence[Sequence[float]], keep_threshold: float) -> Arch:
    """The architecture the weights (one row per layer, in the space's kernel / expansion order) choose."""
    layers = []
    for kw, ew in zip(kernel_weights, expansion_weights, strict=True):
        order = sorted(range(len(kw)), key=lambda i: -kw[i])  # stable: ties go to the smaller kernel
        kept = [i for i in order if kw[i] > keep_threshold][:space.max_paths] or order[:1]
        t = max(range(len(ew)), key=lambda i: ew[i])
        layers.append(LayerChoice(space.expansions[t], tuple(sorted(space.kernel_sizes[i] for i in kept))))
    return space.check(Arch(tuple(layers)))


def layer_weights(logits) -> dict:
    """{"kernel_weights", "expansion_weights"}: the softmax weights of `ArchitectureLogits`, as lists per layer."""
    return {"kernel_weights": logits.kernel_probs().detach().cpu().tolist(),
            "expansion_weights": logits.expansion_probs().detach().cpu().tolist()}


def _entropy(p: Sequence[float]) -> float:
    return -sum(q * math.log(q) for q in p if q > 0)


def collapse_stats(kernel_weights: Sequence[Sequence[float]], expansion_weights: Sequence[Sequence[float]]) -> dict:
    """Per layer: the entropy (nats) of the kernel and expansion softmaxes and the smallest kernel's share.

    A uniform softmax over K kernels has entropy log K; a collapsed one, 0. The
    smallest kernel comes first in the space's order.
    """
    return {"kernel_entropy": [_entropy(p) for p in kernel_weights],
            "expansion_entropy": [_entropy(p) for p in expansion_weights],
            "smallest_kernel_share": [p[0] for p in kernel_weights]}


def read_history(metrics_path: str | Path) -> list[dict]:
    """The per-epoch records of a run's metrics.jsonl."""
    return [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]


def plot_weights(history: Sequence[dict], space: SearchSpace, path: str | Path) -> Path:
    """One panel per layer: each kernel's weight (solid) and each expansion's weight (dashed) over the epochs."""
    epochs = [r["epoch"] for r in history]
    n = len(space.layers)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_visible(False)
            continue
        for j, k in enumerate(space.kernel_sizes):
            ax.plot(epochs, [r["kernel_weights"][i][j] for r in history], marker=".", label=f"k{k}")
        for j, t in enumerate(space.expansions):
            ax.plot(epochs, [r["expansion_weights"][i][j] for r in history], ls="--", label=f"t{t}")
        ax.set_title(f"layer {i}: {history[-1]['derived_arch'].split('|')[i]}", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for row in axes:
        row[0].set_ylabel("softmax weight")
    fig.suptitle("architecture weights per layer (title: the derived choice after the last epoch)", fontsize=10)
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    return path
