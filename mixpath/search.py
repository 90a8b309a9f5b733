"""Multi-objective architecture search: NSGA-II (pymoo) over an integer encoding of a space.

Each layer is one integer gene in [0, space.choices_per_layer()): the expansion
rate picks a block of `space.kernel_subsets()` indices, and inside the block the
non-empty kernel subsets of at most m kernels are listed by size, then
lexicographically (itertools.combinations order). With expansions (3, 6),
kernels (3, 5, 7, 9) and m = 4, gene 0 is `3:3`, gene 14 is `3:3,5,7,9` and
gene 15 is `6:3`.

The search maximises a user-supplied `score(arch)` (supernet top-1 after BN
recalibration: see `supernet_scorer`) and minimises FLOPs, parameters and/or a
user-supplied latency.
"""
from __future__ import annotations

import functools
import itertools
import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.mutation import Mutation
from pymoo.core.problem import Problem
from pymoo.operators.crossover.ux import UniformCrossover
from pymoo.operators.sampling.rnd import IntegerRandomSampling
from pymoo.optimize import minimize
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
from tqdm.auto import tqdm

from .evaluate import score_arch
from .nn import LAYOUTS
from .space import Arch, ArchError, LayerChoice, SearchSpace

OBJECTIVES = ("acc", "flops", "params", "latency")
_COST_LABELS = {"flops": "MFLOPs (multiply-adds)", "params": "parameters (M)", "latency": "latency"}


# -- encoding ---------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _choice_table(space: SearchSpace) -> tuple[tuple[LayerChoice, ...], dict]:
    """Every per-layer choice in gene order, and the inverse map (expansion, kernels) -> gene."""
    subsets = [combo for j in range(1, space.max_paths + 1)
               for combo in itertools.combinations(sorted(space.kernel_sizes), j)]
    choices = tuple(LayerChoice(t, combo) for t in sorted(space.expansions) for combo in subsets)
    return choices, {(c.expansion, c.kernels): i for i, c in enumerate(choices)}


def layer_choices(space: SearchSpace) -> tuple[LayerChoice, ...]:
    """The per-layer choices of `space`, indexed by gene value."""
    return _choice_table(space)[0]


def encode(space: SearchSpace, arch: Arch | str) -> list[int]:
    """One gene per layer (see the module docstring); ArchError if arch does not fit the space."""
    arch = space.check(arch)
    index = _choice_table(space)[1]
    return [index[(c.expansion, tuple(sorted(c.kernels)))] for c in arch.layers]


def decode(space: SearchSpace, genes: Sequence[int]) -> Arch:
    """The architecture of `genes`; ArchError for a wrong length, a non-integer or an out-of-range gene."""
    choices = layer_choices(space)
    genes = list(genes)
    if len(genes) != len(space.layers):
        raise ArchError(f"got {len(genes)} genes; space {space.name!r} has {len(space.layers)} layers")
    layers = []
    for i, g in enumerate(genes):
        try:
            if isinstance(g, (bool, np.bool_)):
                raise TypeError
            g = operator.index(g)
        except TypeError:
            raise ArchError(f"gene {i} is {g!r}; genes are integers in [0, {len(choices)})") from None
        if not 0 <= g < len(choices):
            raise ArchError(f"gene {i} is {g}; space {space.name!r} has {len(choices)} choices per layer "
                            f"(valid genes 0..{len(choices) - 1})")
        layers.append(choices[g])
    return Arch(tuple(layers))


# -- scoring ----------------------------------------------------------------
def supernet_scorer(net, calibration: Callable[[], Iterable], validation: Callable[[], Iterable]
                    ) -> Callable[[Arch], float]:
    """`score(arch)` for `nsga2_search`: BN recalibration on `calibration()`, then top-1 on `validation()`."""
    return lambda arch: score_arch(net, arch, calibration, validation)


@dataclass(frozen=True)
class Candidate:
    """One evaluated architecture; acc is whatever `score` returned (a fraction for `supernet_scorer`)."""
    arch: Arch
    acc: float
    flops: int
    params: int
    latency: float | None = None

    def value(self, objective: str) -> float:
        """The objective in pymoo's minimisation form (accuracy negated)."""
        return -self.acc if objective == "acc" else getattr(self, objective)

    def to_dict(self) -> dict:
        return {"arch": str(self.arch), "acc": self.acc, "flops": self.flops, "params": self.params,
                "latency": self.latency}


@dataclass
class SearchResult:
    """`front`: the non-dominated candidates among all evaluated ones, by increasing first cost objective.

    The front is taken over every architecture the search scored, not only the
    final population, because NSGA-II's crowding may drop non-dominated points
    once the first front outgrows the population; they cost nothing to keep.
    """
    front: list[Candidate]
    evaluated: list[Candidate]  # every distinct architecture, in order of first evaluation
    objectives: tuple[str, ...]
    n_evaluations: int  # individuals evaluated, repeats served from the cache included
    population: int
    generations: int
    seed: int

    def to_dict(self) -> dict:
        return {"objectives": list(self.objectives), "population": self.population,
                "generations": self.generations, "seed": self.seed, "n_evaluations": self.n_evaluations,
                "n_scored": len(self.evaluated), "front": [c.to_dict() for c in self.front]}


def _check_objectives(objectives, latency) -> tuple[str, ...]:
    objectives = tuple(objectives)
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise ValueError(f"unknown objective {unknown[0]!r}; choose from {', '.join(OBJECTIVES)}")
    if len(set(objectives)) != len(objectives):
        raise ValueError(f"objectives {objectives} repeat one")
    if "acc" not in objectives or len(objectives) < 2:
        raise ValueError(f"objectives must be 'acc' and at least one cost ({', '.join(OBJECTIVES[1:])}); "
                         f"got {objectives}")
    if "latency" in objectives and latency is None:
        raise ValueError("objective 'latency' needs a latency(arch) -> float callable")
    return objectives


class ResetMutation(Mutation):
    """Integer random-reset mutation: each gene, with probability prob_var (default 1/layers), is redrawn.

    Genes are categorical (neighbouring indices are not similar blocks), so a
    uniform redraw suits them better than polynomial mutation on rounded reals.
    """

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        X = np.array(X, dtype=int)
        redraw = random_state.random(X.shape) < self.get_prob_var(problem, size=(len(X), 1))
        X[redraw] = random_state.integers(problem.xl, problem.xu + 1, size=X.shape)[redraw]
        return X


class _ArchProblem(Problem):
    """The encoding as a pymoo problem; scores each distinct architecture once."""

    def __init__(self, space, score, objectives, latency, layout, bar):
        n = space.choices_per_layer()
        super().__init__(n_var=len(space.layers), n_obj=len(objectives), xl=0, xu=n - 1, vtype=int)
        self.space, self.score, self.objectives = space, score, objectives
        self.latency, self.layout, self.bar = latency, layout, bar
        self.cache: dict[Arch, Candidate] = {}
        self.n_evaluations = 0

    def candidate(self, arch: Arch) -> Candidate:
        if arch not in self.cache:
            acc = float(self.score(arch))
            if not math.isfinite(acc):
                raise ValueError(f"score({arch}) returned {acc}; it must be a finite number")
            lat = None if self.latency is None else float(self.latency(arch))
            self.cache[arch] = Candidate(arch, acc, self.space.flops(arch), self.space.params(arch, self.layout), lat)
        return self.cache[arch]

    def _evaluate(self, X, out, *args, **kwargs):
        rows = []
        for genes in np.asarray(X, dtype=int):
            c = self.candidate(decode(self.space, genes))
            rows.append([c.value(o) for o in self.objectives])
            self.n_evaluations += 1
            self.bar.update(1)
            self.bar.set_postfix(scored=len(self.cache), refresh=False)
        out["F"] = np.asarray(rows, dtype=float)


def nsga2_search(space: SearchSpace, score: Callable[[Arch], float], objectives: Sequence[str] = ("acc", "flops"),
                 *, population: int = 40, generations: int = 40, seed: int = 0,
                 latency: Callable[[Arch], float] | None = None, layout: str = "mixpath",
                 progress: bool = True) -> SearchResult:
    """NSGA-II over `space`: maximise `score(arch)`, minimise the cost objectives.

    objectives: 'acc' plus any of 'flops', 'params' (of the stand-alone subnet in
    `layout`) and 'latency' (needs `latency(arch)`). Defaults follow the public
    fork: population 40, 40 generations. The genes are categorical, so the
    operators are IntegerRandomSampling, uniform crossover and `ResetMutation`
    (on the tiny and CIFAR spaces they matched or beat SBX/PM with rounding and
    were steadier across seeds). Duplicate individuals are eliminated and every
    distinct architecture is scored once.
    """
    objectives = _check_objectives(objectives, latency)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if population < 2 or generations < 1:
        raise ValueError(f"need population >= 2 and generations >= 1; got {population}, {generations}")
    algorithm = NSGA2(pop_size=population, sampling=IntegerRandomSampling(),
                      crossover=UniformCrossover(prob=0.9), mutation=ResetMutation(),
                      eliminate_duplicates=True)
    with tqdm(total=population * generations, desc="NSGA-II", unit="arch", disable=not progress) as bar:
        problem = _ArchProblem(space, score, objectives, latency, layout, bar)
        minimize(problem, algorithm, ("n_gen", generations), seed=seed, verbose=False)
    evaluated = list(problem.cache.values())
    F = np.array([[c.value(o) for o in objectives] for c in evaluated])
    front = [evaluated[i] for i in NonDominatedSorting().do(F, only_non_dominated_front=True)]
    cost = next(o for o in objectives if o != "acc")
    front.sort(key=lambda c: (c.value(cost), -c.acc))
    return SearchResult(front, evaluated, objectives, problem.n_evaluations, population, generations, seed)


def plot_pareto(result: SearchResult, path, x: str | None = None) -> Path:
    """Accuracy against a cost (default: the first cost objective) as a PNG: all evaluated, front highlighted."""
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend and global state alone

    x = x or next(o for o in result.objectives if o != "acc")
    if x not in OBJECTIVES[1:]:
        raise ValueError(f"x must be one of {', '.join(OBJECTIVES[1:])}; got {x!r}")
    if x == "latency" and any(c.latency is None for c in result.evaluated):
        raise ValueError("x='latency' needs a search run with a latency callable")
    scale = 1e-6 if x in ("flops", "params") else 1.0
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    ax.scatter([getattr(c, x) * scale for c in result.evaluated], [c.acc for c in result.evaluated],
               s=8, c="0.7", label=f"evaluated ({len(result.evaluated)})")
    front = sorted(result.front, key=lambda c: getattr(c, x))
    ax.plot([getattr(c, x) * scale for c in front], [c.acc for c in front], "o-", c="tab:red", ms=4,
            label=f"Pareto front ({len(front)})")
    ax.set_xlabel(_COST_LABELS[x])
    ax.set_ylabel("supernet top-1")
    ax.set_title(f"NSGA-II: {' vs '.join(result.objectives)}, pop {result.population}, "
                 f"{result.generations} gen")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


__all__ = ["Candidate", "OBJECTIVES", "ResetMutation", "SearchResult", "decode", "encode", "layer_choices",
           "nsga2_search", "plot_pareto", "supernet_scorer"]
