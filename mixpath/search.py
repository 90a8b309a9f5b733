"""Multi-objective architecture search over an integer encoding of a space: NSGA-II (pymoo) or random search.

Each layer is one integer gene in [0, space.choices_per_layer()): the expansion
rate picks a block of `space.kernel_subsets()` indices, and inside the block the
non-empty kernel subsets of at most m kernels are listed by size, then
lexicographically (itertools.combinations order). With expansions (3, 6),
kernels (3, 5, 7, 9) and m = 4, gene 0 is `3:3`, gene 14 is `3:3,5,7,9` and
gene 15 is `6:3`.

A restricted space (pockets, see `mixpath.space`) keeps that encoding, and the
searches never leave its pockets: random search draws uniformly over the
pockets' architectures; NSGA-II starts from such draws, and `PocketRepair`
moves each offspring that crossover or mutation took outside every pocket into
the pocket it misses least, redrawing only the genes that pocket does not allow.

The search maximises a user-supplied `score(arch)` (supernet top-1 after BN
recalibration: see `supernet_scorer`) and minimises FLOPs, parameters and/or a
user-supplied latency (see `mixpath.latency`), optionally under hard bounds on
FLOPs and parameters. Every score goes through an `EvaluationLog`, so a search
killed half-way and started again with the same seed rescoring nothing and
ends where the uninterrupted one would have.

pymoo is imported only by `nsga2_search`: random search and everything else
work where it is not installed.
"""
from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import math
import operator
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from .checkpoint import atomic_write, json_ready, write_json
from .evaluate import score_arch
from .nn import LAYOUTS
from .space import Arch, ArchError, LayerChoice, SearchSpace

OBJECTIVES = ("acc", "flops", "params", "latency")
STRATEGIES = ("nsga2", "random")
FRONT_FILES = ("front.json", "front.csv", "pareto.png")
_COST_LABELS = {"flops": "MFLOPs (multiply-adds)", "params": "parameters (M)", "latency": "latency (s)"}
_STRATEGY_TITLES = {"nsga2": "NSGA-II", "random": "random search"}


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


def gene_masks(space: SearchSpace) -> np.ndarray:
    """allowed[p, layer, gene]: whether pocket p of a restricted space allows `gene` at `layer` (full space: one
    pocket allowing everything)."""
    index = _choice_table(space)[1]
    n_layers, n_choices = len(space.layers), space.choices_per_layer()
    if not space.pockets:
        return np.ones((1, n_layers, n_choices), dtype=bool)
    allowed = np.zeros((len(space.pockets), n_layers, n_choices), dtype=bool)
    for p, pocket in enumerate(space.pockets):
        for i, choices in enumerate(pocket.layers):
            allowed[p, i, [index[(c.expansion, c.kernels)] for c in choices]] = True
    return allowed


def encode(space: SearchSpace, arch: Arch | str) -> list[int]:
    """One gene per layer (see the module docstring); ArchError if arch does not fit the space."""
    arch = space.check(arch)
    index = _choice_table(space)[1]
    return [index[(c.expansion, tuple(sorted(c.kernels)))] for c in arch.layers]


def decode(space: SearchSpace, genes: Sequence[int]) -> Arch:
    """The architecture of `genes`; ArchError for a wrong length, a non-integer or an out-of-range gene, or
    (in a restricted space) genes outside every pocket."""
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
    arch = Arch(tuple(layers))
    return space.check(arch) if space.pockets else arch


def cheapest(space: SearchSpace, cost: Callable[[Arch], float]) -> Arch:
    """The architecture of `space` (of its pockets, if restricted) with the least `cost`, a sum over layers
    (FLOPs, parameters): per pocket, each layer takes its cheapest allowed choice."""
    best = None
    for allowed in gene_masks(space):
        genes = [int(np.flatnonzero(layer)[0]) for layer in allowed]
        for i, layer in enumerate(allowed):
            genes[i] = min(np.flatnonzero(layer), key=lambda g: cost(decode(space, genes[:i] + [g] + genes[i + 1:])))
        arch = decode(space, genes)
        if best is None or cost(arch) < cost(best):
            best = arch
    return best


def smallest(space: SearchSpace) -> Arch:
    """Every layer at the smallest expansion with the smallest kernel alone: the least FLOPs and parameters.

    In a restricted space: the pockets' architecture with the least FLOPs.
    """
    return cheapest(space, space.flops) if space.pockets else decode(space, [0] * len(space.layers))


# -- scoring ----------------------------------------------------------------
def supernet_scorer(net, calibration: Callable[[], Iterable], validation: Callable[[], Iterable]
                    ) -> Callable[[Arch], float]:
    """`score(arch)` for the searches: BN recalibration on `calibration()`, then top-1 on `validation()`."""
    return lambda arch: score_arch(net, arch, calibration, validation)


def scoring_meta(run, batch_size: int | None = None, calib_batches: int | None = None) -> dict:
    """What the scores of `run.scorer(batch_size=..., calib_batches=...)` depend on besides the space and
    layout: an `EvaluationLog`'s `meta`, so a log is reused only with the same supernet and batches."""
    return {"run": str(run.checkpoint.resolve()), "epoch": run.epoch,
            "batch_size": batch_size or run.config["batch_size"],
            "calib_batches": calib_batches or run.config["calib_batches"]}


@dataclass(frozen=True)
class Candidate:
    """One evaluated architecture; acc is whatever `score` returned (a fraction for `supernet_scorer`)."""
    arch: Arch
    acc: float
    flops: int
    params: int
    latency: float | None = None

    def value(self, objective: str) -> float:
        """The objective in minimisation form (accuracy negated)."""
        return -self.acc if objective == "acc" else getattr(self, objective)

    def to_dict(self) -> dict:
        return {"arch": str(self.arch), "acc": self.acc, "flops": self.flops, "params": self.params,
                "latency": self.latency}


class EvaluationLog:
    """Every architecture scored, as JSON lines at `path` (None: in memory only); the searches' scoring cache.

    One object a line: arch, acc, flops, params, latency and `context` (the
    space, the layout and the caller's `meta`: whatever else the scores depend
    on, e.g. the supernet checkpoint). Each entry is flushed and fsynced as it
    is added, so a kill loses at most the architecture being scored; a last
    line it cut short is ignored on load (and overwritten by the next entry).
    Entries from another context are refused, naming the line, so one log never
    mixes scores from different supernets or spaces. When an architecture is
    listed twice (its latency added later), the last entry wins. A restricted
    space's scores are its full space's (the pockets change what is searched,
    not a score), so a log is shared by the full space and any shrunk version.
    """

    def __init__(self, path: str | os.PathLike | None, space: SearchSpace, *, layout: str = "mixpath",
                 meta: dict | None = None):
        self.path = None if path is None else Path(path)
        self.space = space.unrestricted()
        # through JSON, so tuples and lists compare equal to what a load reads back
        self.context = json_ready({"space": self.space.to_dict(), "layout": layout, **(meta or {})})
        self._entries: dict[Arch, Candidate] = {}
        self._tail_fix: tuple[int, bytes] | None = None  # (offset, bytes) to mend a last line without newline
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # the bytes after the last newline: empty, or the line a kill cut short
        for line_no, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ValueError(f"{self.path}:{line_no}: not valid JSON; the evaluation log is damaged before its "
                                 "last line (remove that line, or start a new --out folder)") from None
            self._add_loaded(entry, f"{self.path}:{line_no}")
        if tail.strip():
            try:
                entry = json.loads(tail)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self._tail_fix = (len(data) - len(tail), b"")  # cut short: the next entry overwrites it
                return
            self._add_loaded(entry, f"{self.path}:{len(lines) + 1}")
            self._tail_fix = (len(data), b"\n")  # complete but for its newline

    def _add_loaded(self, entry, where: str) -> None:
        if not isinstance(entry, dict) or not {"arch", "acc", "flops", "params", "context"} <= entry.keys():
            raise ValueError(f"{where}: expected an object with arch, acc, flops, params and context; "
                             "is this a mixpath evaluation log?")
        context = entry["context"]
        if context != self.context:
            keys = sorted(set(self.context) | set(context if isinstance(context, dict) else {}))
            key = next((k for k in keys if not isinstance(context, dict) or context.get(k) != self.context.get(k)),
                       "context")
            saved = context.get(key) if isinstance(context, dict) else context
            raise ValueError(f"{where}: scored with {key} = {saved!r}, but this search has {self.context.get(key)!r};"
                             " use a new --out folder (or the settings of the run that wrote it)")
        try:
            arch = self.space.parse(entry["arch"])
        except ArchError as e:
            raise ValueError(f"{where}: {e}") from None
        latency = entry.get("latency")
        self._entries[arch] = Candidate(arch, float(entry["acc"]), int(entry["flops"]), int(entry["params"]),
                                        None if latency is None else float(latency))

    def get(self, arch: Arch) -> Candidate | None:
        return self._entries.get(arch)

    def add(self, candidate: Candidate) -> None:
        """Keep `candidate` and append it to the file, flushed and fsynced before returning."""
        self._entries[candidate.arch] = candidate
        if self.path is None:
            return
        line = json.dumps({**candidate.to_dict(), "context": self.context}) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            prefix = b""
            if self._tail_fix is not None:
                offset, prefix = self._tail_fix
                f.truncate(offset)
                self._tail_fix = None
            f.write(prefix + line.encode())
            f.flush()
            os.fsync(f.fileno())

    def candidates(self) -> list[Candidate]:
        """Every logged candidate, in order of first entry."""
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, arch) -> bool:
        return arch in self._entries


@dataclass
class SearchResult:
    """`front`: the non-dominated candidates among all evaluated ones, by increasing first cost objective.

    The front is taken over every architecture the search scored, not only the
    final population, because NSGA-II's crowding may drop non-dominated points
    once the first front outgrows the population; they cost nothing to keep.
    Architectures outside the bounds are never scored, so never on the front.
    """
    front: list[Candidate]
    evaluated: list[Candidate]  # every distinct feasible architecture, in order of first evaluation
    objectives: tuple[str, ...]
    n_evaluations: int  # feasible individuals evaluated, repeats served from the cache included
    population: int | None  # None for random search
    generations: int | None
    seed: int
    strategy: str = "nsga2"
    n_rejected: int = 0  # individuals outside max_flops / max_params (never scored)
    constraints: dict | None = None  # {"max_flops": ..., "max_params": ...}, the bounds given

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "objectives": list(self.objectives), "population": self.population,
                "generations": self.generations, "seed": self.seed, "n_evaluations": self.n_evaluations,
                "n_scored": len(self.evaluated), "n_rejected": self.n_rejected,
                "constraints": self.constraints or {}, "front": [c.to_dict() for c in self.front]}


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


def _check_limits(space: SearchSpace, layout: str, max_flops, max_params) -> dict:
    """The bounds given, after checking that the cheapest architecture of the space meets them."""
    limits = {}
    for name, bound, cost in (("max_flops", max_flops, space.flops),
                              ("max_params", max_params, lambda a: space.params(a, layout))):
        if bound is None:
            continue
        least = cheapest(space, cost)
        lowest = cost(least)
        if bound < lowest:
            raise ValueError(f"{name} = {bound} is below what any architecture of space {space.name!r} needs: "
                             f"the smallest ({least}) has {lowest}; raise {name} to at least {lowest}")
        limits[name] = bound
    return limits


def non_dominated(candidates: Sequence[Candidate], objectives: Sequence[str]) -> list[Candidate]:
    """The candidates no other candidate dominates (ties in every objective all stay), in input order."""
    if not candidates:
        return []
    F = np.array([[c.value(o) for o in objectives] for c in candidates], dtype=float)
    # dominated[i, j]: j is at least as good as i everywhere and better somewhere
    dominated = (F[None, :, :] <= F[:, None, :]).all(-1) & (F[None, :, :] < F[:, None, :]).any(-1)
    return [c for c, d in zip(candidates, dominated.any(1)) if not d]


class _Evaluator:
    """Scores architectures through the log, once each, and checks the bounds before scoring anything."""

    def __init__(self, space, score, objectives, latency, layout, log, limits, bar):
        self.space, self.score, self.objectives, self.latency = space, score, objectives, latency
        self.layout, self.limits, self.bar = layout, limits, bar
        self.log = log if log is not None else EvaluationLog(None, space, layout=layout)
        if self.log.space != space.unrestricted() or self.log.context["layout"] != layout:
            raise ValueError("the evaluation log was opened for another space or layout than this search's")
        self.seen: dict[Arch, Candidate] = {}  # this search's architectures, in order of first evaluation
        self.n_evaluations = 0
        self.n_rejected = 0

    def violations(self, arch: Arch) -> list[float]:
        """Per bound, (value - bound) / bound: feasible where all are <= 0 (pymoo's G)."""
        values = {"max_flops": self.space.flops(arch), "max_params": self.space.params(arch, self.layout)}
        return [(values[name] - bound) / bound for name, bound in self.limits.items()]

    def evaluate(self, arch: Arch) -> Candidate:
        """The candidate of a feasible `arch`: from the log, or scored (and its latency taken) and logged."""
        cached = self.log.get(arch)
        if cached is None:
            acc = float(self.score(arch))
            if not math.isfinite(acc):
                raise ValueError(f"score({arch}) returned {acc}; it must be a finite number")
            cached = Candidate(arch, acc, self.space.flops(arch), self.space.params(arch, self.layout),
                               None if self.latency is None else float(self.latency(arch)))
            self.log.add(cached)
        elif cached.latency is None and self.latency is not None:  # logged by a search without latency
            cached = Candidate(arch, cached.acc, cached.flops, cached.params, float(self.latency(arch)))
            self.log.add(cached)
        self.seen.setdefault(arch, cached)
        self.n_evaluations += 1
        self.bar.update(1)
        self.bar.set_postfix(scored=len(self.seen), rejected=self.n_rejected, refresh=False)
        return cached

    def result(self, strategy, population, generations, seed) -> SearchResult:
        evaluated = list(self.seen.values())
        front = non_dominated(evaluated, self.objectives)
        cost = next(o for o in self.objectives if o != "acc")
        front.sort(key=lambda c: (c.value(cost), -c.acc))
        return SearchResult(front, evaluated, self.objectives, self.n_evaluations, population, generations, seed,
                            strategy, self.n_rejected, dict(self.limits))


def _check_settings(objectives, latency, layout) -> tuple[str, ...]:
    objectives = _check_objectives(objectives, latency)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return objectives


# -- NSGA-II ------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _pymoo_classes():
    """ResetMutation, the pocket operators and the encoding as a pymoo Problem, defined on first use (the GPU
    machine has no pymoo)."""
    try:
        from pymoo.core.mutation import Mutation
        from pymoo.core.problem import Problem
        from pymoo.core.repair import Repair
        from pymoo.core.sampling import Sampling
    except ModuleNotFoundError:
        raise ModuleNotFoundError("NSGA-II needs pymoo: `pip install pymoo`, or use random search "
                                  "(--strategy random), which runs without it") from None

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

    class PocketSampling(Sampling):
        """The first population of a restricted space: uniform over the pockets' architectures."""

        def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
            space = problem.evaluator.space
            rng = random.Random(int(random_state.integers(2 ** 63)))
            return np.array([encode(space, space.sample_uniform(rng)) for _ in range(n_samples)], dtype=int)

    class PocketRepair(Repair):
        """Moves an individual outside every pocket into the pocket it misses least (ties: a random one),
        redrawing each gene that pocket does not allow uniformly among those it does."""

        def _do(self, problem, X, random_state=None, **kwargs):
            allowed = gene_masks(problem.evaluator.space)
            X = np.array(X, dtype=int)
            layers = np.arange(X.shape[1])
            for row in X:
                misses = (~allowed[:, layers, row]).sum(1)
                if misses.min() == 0:
                    continue
                pocket = allowed[random_state.choice(np.flatnonzero(misses == misses.min()))]
                for i in np.flatnonzero(~pocket[layers, row]):
                    row[i] = random_state.choice(np.flatnonzero(pocket[i]))
            return X

    class ArchProblem(Problem):
        """The encoding as a pymoo problem; bounds as inequality constraints G <= 0."""

        def __init__(self, evaluator: _Evaluator):
            space = evaluator.space
            super().__init__(n_var=len(space.layers), n_obj=len(evaluator.objectives),
                             n_ieq_constr=len(evaluator.limits), xl=0, xu=space.choices_per_layer() - 1, vtype=int)
            self.evaluator = evaluator

        def _evaluate(self, X, out, *args, **kwargs):
            ev = self.evaluator
            F, G = [], []
            for genes in np.asarray(X, dtype=int):
                arch = decode(ev.space, genes)
                g = ev.violations(arch)
                if any(v > 0 for v in g):
                    # never scored: pymoo ranks infeasible individuals by violation alone, so F is not read
                    ev.n_rejected += 1
                    F.append([np.inf] * len(ev.objectives))
                else:
                    c = ev.evaluate(arch)
                    F.append([c.value(o) for o in ev.objectives])
                G.append(g)
            out["F"] = np.asarray(F, dtype=float)
            if ev.limits:
                out["G"] = np.asarray(G, dtype=float)

    return ResetMutation, ArchProblem, PocketSampling, PocketRepair


def __getattr__(name):
    # `from mixpath.search import ResetMutation` keeps working wherever pymoo is installed
    if name == "ResetMutation":
        return _pymoo_classes()[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def nsga2_search(space: SearchSpace, score: Callable[[Arch], float], objectives: Sequence[str] = ("acc", "flops"),
                 *, population: int = 40, generations: int = 40, seed: int = 0,
                 latency: Callable[[Arch], float] | None = None, layout: str = "mixpath",
                 max_flops: int | None = None, max_params: int | None = None, log: EvaluationLog | None = None,
                 progress: bool = True) -> SearchResult:
    """NSGA-II over `space`: maximise `score(arch)`, minimise the cost objectives.

    objectives: 'acc' plus any of 'flops', 'params' (of the stand-alone subnet in
    `layout`) and 'latency' (needs `latency(arch)`). Defaults follow the public
    fork: population 40, 40 generations, so population * generations
    individuals are evaluated. The genes are categorical, so the operators are
    IntegerRandomSampling, uniform crossover and `ResetMutation` (on the tiny and
    CIFAR spaces they matched or beat SBX/PM with rounding and were steadier
    across seeds). Duplicate individuals are eliminated and every distinct
    architecture is scored once, through `log` when given (a resumed search
    rescoring nothing it logged). max_flops / max_params are pymoo inequality
    constraints; individuals outside them are counted in `n_rejected` and never
    scored. ValueError for a bound no architecture of the space can meet. In a
    restricted space, PocketSampling and PocketRepair keep every individual in
    the pockets (see the module docstring).
    """
    objectives = _check_settings(objectives, latency, layout)
    if population < 2 or generations < 1:
        raise ValueError(f"need population >= 2 and generations >= 1; got {population}, {generations}")
    limits = _check_limits(space, layout, max_flops, max_params)
    ResetMutation, ArchProblem, PocketSampling, PocketRepair = _pymoo_classes()
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.operators.crossover.ux import UniformCrossover
    from pymoo.operators.sampling.rnd import IntegerRandomSampling
    from pymoo.optimize import minimize

    pockets = dict(sampling=PocketSampling(), repair=PocketRepair()) if space.pockets else {}
    algorithm = NSGA2(pop_size=population, **{"sampling": IntegerRandomSampling(), **pockets},
                      crossover=UniformCrossover(prob=0.9), mutation=ResetMutation(),
                      eliminate_duplicates=True)
    with tqdm(total=population * generations, desc="NSGA-II", unit="arch", disable=not progress) as bar:
        evaluator = _Evaluator(space, score, objectives, latency, layout, log, limits, bar)
        minimize(ArchProblem(evaluator), algorithm, ("n_gen", generations), seed=seed, verbose=False)
    return evaluator.result("nsga2", population, generations, seed)


# -- random search ------------------------------------------------------------
def random_search(space: SearchSpace, score: Callable[[Arch], float], objectives: Sequence[str] = ("acc", "flops"),
                  *, budget: int, seed: int = 0, latency: Callable[[Arch], float] | None = None,
                  layout: str = "mixpath", max_flops: int | None = None, max_params: int | None = None,
                  log: EvaluationLog | None = None, progress: bool = True) -> SearchResult:
    """The baseline: `budget` architectures drawn uniformly over the encoding, front of the feasible ones.

    Budget semantics are NSGA-II's (pass population * generations): `budget`
    individuals are evaluated, repeats served from the cache and counted, like
    NSGA-II's re-visits. Draws outside max_flops / max_params are rejected
    before scoring and redrawn (counted in `n_rejected`), so the baseline gets
    `budget` feasible evaluations. Uniform over genes, not the training
    sampler: every architecture is equally likely, as for NSGA-II's first
    population. Seeded with numpy's default_rng(seed) (a restricted space: with
    random.Random(seed), through `space.sample_uniform`); runs without pymoo.
    """
    objectives = _check_settings(objectives, latency, layout)
    if budget < 1:
        raise ValueError(f"budget must be at least 1 evaluation; got {budget}")
    limits = _check_limits(space, layout, max_flops, max_params)
    rng = np.random.default_rng(seed)
    n_choices, n_layers = space.choices_per_layer(), len(space.layers)
    if space.pockets:
        pocket_rng = random.Random(seed)
        draw = lambda: space.sample_uniform(pocket_rng)  # noqa: E731
    else:
        draw = lambda: decode(space, rng.integers(0, n_choices, size=n_layers))  # noqa: E731
    max_rejected = 1000 * budget  # a bound that admits almost nothing would otherwise draw forever
    with tqdm(total=budget, desc="random search", unit="arch", disable=not progress) as bar:
        evaluator = _Evaluator(space, score, objectives, latency, layout, log, limits, bar)
        while evaluator.n_evaluations < budget:
            arch = draw()
            if any(v > 0 for v in evaluator.violations(arch)):
                evaluator.n_rejected += 1
                if evaluator.n_rejected > max_rejected:
                    raise ValueError(f"random search rejected {evaluator.n_rejected} draws outside {limits} for "
                                     f"{evaluator.n_evaluations} inside; loosen the bounds or use NSGA-II")
                continue
            evaluator.evaluate(arch)
    return evaluator.result("random", None, None, seed)


# -- outputs ------------------------------------------------------------------
def _pareto_figure(result: SearchResult, x: str | None):
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
    budget = (f"pop {result.population}, {result.generations} gen" if result.strategy == "nsga2"
              else f"{result.n_evaluations} evaluations")
    ax.set_title(f"{_STRATEGY_TITLES[result.strategy]}: {' vs '.join(result.objectives)}, {budget}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def plot_pareto(result: SearchResult, path, x: str | None = None) -> Path:
    """Accuracy against a cost (default: the first cost objective) as a PNG: all evaluated, front highlighted."""
    fig = _pareto_figure(result, x)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    return path


def save_front(result: SearchResult, out_dir) -> dict[str, Path]:
    """Write the front as front.json (a list of candidate objects), front.csv and pareto.png, each atomically.

    The CSV has the columns arch, acc, flops, params, latency; the arch is always
    quoted (csv.QUOTE_NONNUMERIC) and a missing latency is an empty field.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [c.to_dict() for c in result.front]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(Candidate.__dataclass_fields__), quoting=csv.QUOTE_NONNUMERIC)
    writer.writeheader()
    writer.writerows(rows)
    paths = {name: out / name for name in FRONT_FILES}
    write_json(paths["front.json"], rows, indent=1)
    atomic_write(paths["front.csv"], lambda f: f.write(text.getvalue()), binary=False)
    plot_pareto(result, paths["pareto.png"])
    return paths


# ResetMutation is left out: `import *` must work without pymoo
__all__ = ["Candidate", "EvaluationLog", "FRONT_FILES", "OBJECTIVES", "STRATEGIES", "SearchResult", "cheapest",
           "decode", "encode", "gene_masks", "layer_choices", "non_dominated", "nsga2_search", "plot_pareto",
           "random_search", "save_front", "scoring_meta", "smallest", "supernet_scorer"]
