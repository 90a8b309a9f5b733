"""Locality-based search-space shrinkage (LISSNAS, IJCAI 2023): grow pockets of good architectures.

Locality: architectures that are structurally close score alike. `shrink`
follows the paper's description (it has no public code); every choice is a
parameter:

1. sample `samples` distinct architectures uniformly over the encoding (numpy
   `default_rng(seed)`) and score them;
2. seeds: the best `ceil(seed_fraction * samples)` of them (ties: gene order);
3. grow, round by round: every not yet examined neighbour (distance 1 to
   `radius`) of the members the last round added (first: the seeds) is
   scored, and joins the good set if its score is at least the threshold minus
   `tolerance`. The threshold is the worst seed's score (`threshold="seed"`,
   fixed) or the good set's mean at the start of the round (`"mean"`, rising:
   with tolerance 0 the mean never falls). A round "improves" if it lifts the
   set's mean above the best mean so far by more than `min_delta`; growth
   stops after `patience` rounds in a row that do not, when a round admits no
   one (converged), or when `budget` distinct architectures (samples
   included) have been looked at. Members a round admitted stay members;
4. pockets: the good set's connected components, two members linked when at
   distance <= `radius`; each pocket is described by the per-layer choices its
   members use (`mixpath.space.Pocket.of`), and the shrunk space is the union
   of those boxes (`SearchSpace.restrict`).

Distances (per layer, summed over layers): "hamming" counts a layer whose
(expansion, kernel set) differs as 1; "fine" counts a different expansion as
1 plus the symmetric difference of the kernel sets (3:3,5 to 3:3,7 is 2).

Scores go through a `mixpath.search.EvaluationLog` (scored once, kept as they
come), and `reuse` (a search's log of the same supernet) serves scores for
free, so a killed shrink started again with the same settings ends exactly
where the uninterrupted one would have, scoring nothing twice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from .checkpoint import atomic_write
from .search import Candidate, EvaluationLog, _Evaluator, decode, encode, layer_choices
from .space import Arch, Pocket, SearchSpace

__all__ = ["DISTANCES", "THRESHOLDS", "ShrinkResult", "arch_distance", "neighbours", "pairwise_distances",
           "plot_shrink", "pockets_of", "shrink"]

DISTANCES = ("hamming", "fine")
THRESHOLDS = ("seed", "mean")
# Pair statistics (diversity, locality) over at most this many architectures, a seeded subsample beyond:
# they cost n^2 and a few thousand already pin the means down.
MAX_PAIRED = 2000


def _subsample(items: list, limit: int = MAX_PAIRED) -> list:
    if len(items) <= limit:
        return items
    keep = np.sort(np.random.default_rng(0).choice(len(items), size=limit, replace=False))
    return [items[i] for i in keep]


def _choice_distances(space: SearchSpace, metric: str) -> np.ndarray:
    """table[g, h]: the distance between the layer choices of genes g and h."""
    if metric not in DISTANCES:
        raise ValueError(f"unknown distance {metric!r}; choose one of {', '.join(DISTANCES)}")
    choices = layer_choices(space)
    if metric == "hamming":
        return 1 - np.eye(len(choices), dtype=np.int32)
    return np.array([[int(a.expansion != b.expansion) + len(set(a.kernels) ^ set(b.kernels)) for b in choices]
                     for a in choices], dtype=np.int32)


def arch_distance(space: SearchSpace, a: Arch | str, b: Arch | str, metric: str = "hamming") -> int:
    """The distance between two architectures of `space` (see the module docstring)."""
    table = _choice_distances(space, metric)
    return int(sum(table[g, h] for g, h in zip(encode(space, a), encode(space, b))))


def pairwise_distances(space: SearchSpace, archs, metric: str = "hamming") -> np.ndarray:
    """The (n, n) matrix of distances between `archs`."""
    table = _choice_distances(space, metric)
    genes = np.array([encode(space, a) for a in archs], dtype=np.int64).reshape(len(archs), len(space.layers))
    out = np.zeros((len(genes), len(genes)), dtype=np.int32)
    for layer in genes.T:
        out += table[layer[:, None], layer[None, :]]
    return out


def neighbours(space: SearchSpace, arch: Arch | str, radius: int = 1, metric: str = "hamming") -> list[Arch]:
    """Every architecture at distance 1..radius from `arch`, in gene order (deterministic)."""
    table = _choice_distances(space, metric)
    start = encode(space, arch)
    found = []

    def extend(prefix: list[int], left: int):
        i = len(prefix)
        if i == len(start):
            if left < radius:  # not arch itself
                found.append(decode(space, prefix))
            return
        for g in np.flatnonzero(table[start[i]] <= left):
            extend(prefix + [int(g)], left - int(table[start[i], g]))

    extend([], radius)
    return found


def pockets_of(space: SearchSpace, archs, radius: int = 1, metric: str = "hamming") -> list[list[Arch]]:
    """The connected components of `archs`, two linked when at distance <= radius; in input order."""
    from scipy.sparse.csgraph import connected_components

    archs = list(archs)
    if not archs:
        return []
    _, labels = connected_components(pairwise_distances(space, archs, metric) <= radius, directed=False)
    groups: dict[int, list[Arch]] = {}
    for arch, label in zip(archs, labels):
        groups.setdefault(int(label), []).append(arch)
    return list(groups.values())


@dataclass
class ShrinkResult:
    """What `shrink` found. `space` is the shrunk space; candidates hold `score`'s values in `acc`."""
    space: SearchSpace
    samples: list[Candidate]
    seeds: list[Candidate]
    members: list[Candidate]  # the final good set: seeds first, then in order of admission
    groups: list[list[Candidate]]  # the members of each pocket, pockets in `space.pockets` order
    evaluated: list[Candidate]  # every distinct architecture looked at, in order
    rounds: list[dict]
    stop: str  # "patience", "converged" or "budget"
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """shrink.json: settings, counts, pockets, sizes, inside/outside scores, diversity, locality."""
        full, metric = self.space.unrestricted(), self.settings["distance"]
        inside = [c for c in self.evaluated if any(c.arch in p for p in self.space.pockets)]
        outside = [c for c in self.evaluated if not any(c.arch in p for p in self.space.pockets)]

        def scores(cands):
            accs = [c.acc for c in cands]
            return {"n": len(accs), "mean": float(np.mean(accs)) if accs else None,
                    "best": max(accs) if accs else None}

        def mean_distance(cands):
            if len(cands) < 2:
                return None
            cands = _subsample(cands)
            d = pairwise_distances(full, [c.arch for c in cands], metric)
            return float(d[np.triu_indices(len(cands), 1)].mean())

        pockets = [{"index": n, "layers": pocket.to_list(), "size": pocket.size(), "members": len(group),
                    "best": max(c.acc for c in group), "mean": float(np.mean([c.acc for c in group])),
                    "best_arch": str(max(group, key=lambda c: c.acc).arch)}
                   for n, (pocket, group) in enumerate(zip(self.space.pockets, self.groups))]
        return {"settings": self.settings, "stop": self.stop, "n_evaluated": len(self.evaluated),
                "n_samples": len(self.samples), "n_seeds": len(self.seeds), "n_members": len(self.members),
                "threshold_seed": min(c.acc for c in self.seeds), "rounds": self.rounds,
                "size": {"full": full.size(), "shrunk": self.space.size(),
                         "fraction": self.space.size() / full.size()},
                "scores": {"inside": scores(inside), "outside": scores(outside), "samples": scores(self.samples),
                           "members": scores(self.members)},
                "diversity": {"metric": metric, "mean_pairwise_distance_members": mean_distance(self.members),
                              "mean_pairwise_distance_samples": mean_distance(self.samples),
                              "pockets": len(self.space.pockets)},
                "locality": locality(full, self.evaluated, metric),
                "pockets": pockets,
                "seeds": [c.to_dict() for c in self.seeds],
                "members": [c.to_dict() for c in self.members]}


def locality(space: SearchSpace, cands: list[Candidate], metric: str) -> dict:
    """The evidence for locality: over every pair of `cands` (of MAX_PAIRED of them, seeded, if more), mean
    |score difference| per distance, and the Spearman correlation between distance and |score difference|
    (positive: close pairs score alike)."""
    from scipy.stats import spearmanr

    cands = _subsample(cands)
    if len(cands) < 3:
        return {"by_distance": [], "spearman": None}
    d = pairwise_distances(space, [c.arch for c in cands], metric)
    acc = np.array([c.acc for c in cands])
    i, j = np.triu_indices(len(cands), 1)
    dist, diff = d[i, j], np.abs(acc[i] - acc[j])
    by = [{"distance": int(k), "pairs": int((dist == k).sum()), "mean_abs_diff": float(diff[dist == k].mean())}
          for k in np.unique(dist)]
    rho = spearmanr(dist, diff).statistic if len(np.unique(dist)) > 1 else float("nan")
    return {"by_distance": by, "spearman": None if not math.isfinite(rho) else float(rho)}


def _check(space, samples, seed_fraction, radius, distance, threshold, tolerance, patience, min_delta, budget):
    if space.pockets:
        raise ValueError("shrink the full space: this one is already restricted to pockets")
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")
    if threshold not in THRESHOLDS:
        raise ValueError(f"unknown threshold {threshold!r}; choose one of {', '.join(THRESHOLDS)}")
    for name, value, ok, what in (("samples", samples, samples >= 2, "at least 2"),
                                  ("seed_fraction", seed_fraction, 0 < seed_fraction <= 1, "in (0, 1]"),
                                  ("radius", radius, radius >= 1, "at least 1"),
                                  ("tolerance", tolerance, tolerance >= 0, "at least 0"),
                                  ("patience", patience, patience >= 1, "at least 1"),
                                  ("min_delta", min_delta, min_delta >= 0, "at least 0"),
                                  ("budget", budget, budget >= samples, f"at least samples ({samples})")):
        if not ok:
            raise ValueError(f"{name} = {value} is out of range: use {what}")
    if samples > space.size():
        raise ValueError(f"samples = {samples} exceeds the {space.size()} architectures of space {space.name!r}")


def shrink(space: SearchSpace, score: Callable[[Arch], float], *, samples: int = 100, seed_fraction: float = 0.1,
           radius: int = 1, distance: str = "hamming", threshold: str = "seed", tolerance: float = 0.0,
           patience: int = 2, min_delta: float = 0.0, budget: int = 1000, seed: int = 0, sampling: str = "arch",
           layout: str = "mixpath", log: EvaluationLog | None = None, reuse: EvaluationLog | None = None,
           progress: bool = True) -> ShrinkResult:
    """Shrink `space` to pockets of architectures `score` rates well (see the module docstring).

    `sampling` is how the shrunk space's `sample` draws ("arch" or "pocket",
    see `SearchSpace.pocket_sampling`); `log` keeps every score (a file: the
    run resumes), `reuse` serves scores already taken with the same scorer.
    ValueError for out-of-range settings.
    """
    _check(space, samples, seed_fraction, radius, distance, threshold, tolerance, patience, min_delta, budget)
    settings = dict(samples=samples, seed_fraction=seed_fraction, radius=radius, distance=distance,
                    threshold=threshold, tolerance=tolerance, patience=patience, min_delta=min_delta, budget=budget,
                    seed=seed, sampling=sampling, layout=layout)
    with tqdm(total=budget, desc="shrink", unit="arch", disable=not progress) as bar:
        ev = _Evaluator(space, score, ("acc", "flops"), None, layout, log, {}, bar)

        def evaluate(arch: Arch) -> Candidate:
            if reuse is not None and arch not in ev.log and arch in reuse:
                ev.log.add(reuse.get(arch))
            return ev.evaluate(arch)

        rng = np.random.default_rng(seed)
        drawn: dict[Arch, None] = {}
        while len(drawn) < samples:
            drawn.setdefault(decode(space, rng.integers(0, space.choices_per_layer(), size=len(space.layers))))
        sampled = [evaluate(a) for a in drawn]
        order = {a: i for i, a in enumerate(drawn)}
        ranked = sorted(sampled, key=lambda c: (-c.acc, order[c.arch]))
        seeds = ranked[:max(1, math.ceil(seed_fraction * samples - 1e-9))]
        seed_threshold = seeds[-1].acc

        members = {c.arch: c for c in seeds}
        examined = set(members)
        frontier = list(seeds)
        best_mean = float(np.mean([c.acc for c in seeds]))
        rounds, stale, stop = [], 0, None
        while stop is None:
            cut = (seed_threshold if threshold == "seed" else float(np.mean([c.acc for c in members.values()]))
                   ) - tolerance
            admitted, scored, exhausted = [], 0, False
            for member in frontier:
                for arch in neighbours(space, member.arch, radius, distance):
                    if arch in examined:
                        continue
                    if arch not in ev.seen and len(ev.seen) >= budget:
                        exhausted = True
                        break
                    examined.add(arch)
                    scored += 1
                    c = ev.seen.get(arch) or evaluate(arch)  # a sample costs nothing twice
                    if c.acc >= cut:
                        admitted.append(c)
                if exhausted:
                    break
            members.update((c.arch, c) for c in admitted)
            mean = float(np.mean([c.acc for c in members.values()]))
            improved = mean > best_mean + min_delta
            rounds.append({"round": len(rounds) + 1, "threshold": cut, "examined": scored,
                           "admitted": len(admitted), "members": len(members), "mean": mean,
                           "evaluated": len(ev.seen)})
            if exhausted:
                stop = "budget"
            elif not admitted:
                stop = "converged"
            elif improved:
                best_mean, stale = mean, 0
            else:
                stale += 1
                if stale >= patience:
                    stop = "patience"
            frontier = sorted(admitted, key=lambda c: -c.acc)

    good = list(members.values())
    groups = pockets_of(space, [c.arch for c in good], radius, distance)
    by_arch = {c.arch: c for c in good}
    groups = sorted(([by_arch[a] for a in g] for g in groups), key=lambda g: -max(c.acc for c in g))
    shrunk = space.restrict([Pocket.of(c.arch for c in g) for g in groups], sampling)
    return ShrinkResult(shrunk, sampled, seeds, good, groups, list(ev.seen.values()), rounds, stop, settings)


def _nearest_seed_distances(result: ShrinkResult) -> np.ndarray:
    full, metric = result.space.unrestricted(), result.settings["distance"]
    archs = [c.arch for c in result.evaluated] + [c.arch for c in result.seeds]
    d = pairwise_distances(full, archs, metric)
    return d[:len(result.evaluated), len(result.evaluated):].min(1)


def plot_shrink(result: ShrinkResult, path) -> Path:
    """A PNG: score against distance from the nearest seed (members highlighted), and mean |score difference|
    against pair distance (the locality evidence)."""
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend and global state alone

    dist = _nearest_seed_distances(result)
    acc = np.array([c.acc for c in result.evaluated])
    member = np.array([c.arch in {m.arch for m in result.members} for c in result.evaluated])
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(dist))
    fig = Figure(figsize=(11, 4.5))
    ax = fig.add_subplot(1, 2, 1)
    ax.scatter(dist[~member] + jitter[~member], acc[~member], s=8, c="0.6", label=f"outside the good set "
               f"({(~member).sum()})")
    ax.scatter(dist[member] + jitter[member], acc[member], s=10, c="tab:red", label=f"good set ({member.sum()})")
    ax.axhline(min(c.acc for c in result.seeds), c="tab:blue", lw=0.8, ls="--", label="worst seed")
    ax.set_xlabel(f"{result.settings['distance']} distance from the nearest seed")
    ax.set_ylabel("score (supernet top-1)")
    ax.set_title(f"{len(result.evaluated)} evaluated, {len(result.space.pockets)} pocket(s), stop: {result.stop}")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    loc = locality(result.space.unrestricted(), result.evaluated, result.settings["distance"])
    ax = fig.add_subplot(1, 2, 2)
    ax.plot([b["distance"] for b in loc["by_distance"]], [b["mean_abs_diff"] for b in loc["by_distance"]], "o-")
    rho = "undefined" if loc["spearman"] is None else f"{loc['spearman']:.2f}"
    ax.set_title(f"locality: Spearman(distance, |diff|) = {rho}")
    ax.set_xlabel("distance between two evaluated architectures")
    ax.set_ylabel("mean |score difference|")
    ax.grid(alpha=0.3)
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    return path
