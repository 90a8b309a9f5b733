import csv
import functools
import importlib.util
import inspect
import itertools
import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats

from mixpath.evaluate import accuracy, score_arch
from mixpath.nn import SuperNet
from mixpath.ranking import (bootstrap_tau_ci, collect_truth, kendall_tau, load_ground_truth, plot_rank_scatter,
                             plot_ranking, rank_architectures, rank_report, ranking_report, save_ground_truth,
                             uncalibrated_accuracy)
from mixpath.search import (Candidate, EvaluationLog, decode, encode, layer_choices, non_dominated, nsga2_search,
                            plot_pareto, random_search, save_front, smallest, supernet_scorer)
from mixpath.space import Arch, ArchError, LayerChoice, get_space

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# the GPU machine has no pymoo: NSGA-II is tested where it is installed, everything else everywhere
needs_pymoo = pytest.mark.skipif(importlib.util.find_spec("pymoo") is None, reason="NSGA-II needs pymoo")


@pytest.fixture(scope="module")
def tiny():
    return get_space("tiny")


# -- encoding -----------------------------------------------------------------
def test_gene_order(tiny):
    choices = layer_choices(tiny)
    assert len(choices) == tiny.choices_per_layer() == 30
    assert choices[0] == LayerChoice(3, (3,))
    assert choices[14] == LayerChoice(3, (3, 5, 7, 9))
    assert choices[15] == LayerChoice(6, (3,))
    assert choices[29] == LayerChoice(6, (3, 5, 7, 9))


@pytest.mark.parametrize("name,options", [("tiny", {}), ("tiny", {"max_paths": 1}), ("tiny", {"max_paths": 2}),
                                          ("cifar", {"max_paths": 3}), ("tiny", {"kernel_sizes": (3, 5), "max_paths": 2,
                                                                                  "expansions": (1, 3, 6)})])
def test_layer_choices_are_the_space(name, options):
    space = get_space(name, **options)
    choices = layer_choices(space)
    assert len(choices) == len(set(choices)) == space.choices_per_layer()
    for c in choices:  # every choice is a legal layer of the space
        space.check(Arch((c,) * len(space.layers)))


@pytest.mark.parametrize("name,options", [("tiny", {}), ("tiny", {"max_paths": 2}), ("cifar", {}),
                                          ("imagenet", {"max_paths": 3})])
def test_encode_decode_bijection(name, options):
    space = get_space(name, **options)
    rng = random.Random(0)
    n = space.choices_per_layer()
    for _ in range(200):
        arch = space.sample(rng)
        genes = encode(space, arch)
        assert all(0 <= g < n for g in genes)
        assert decode(space, genes) == arch
        genes = [rng.randrange(n) for _ in space.layers]
        assert encode(space, decode(space, genes)) == genes
    for genes in ([0] * len(space.layers), [n - 1] * len(space.layers)):
        assert encode(space, decode(space, genes)) == genes
    smallest = Arch((LayerChoice(min(space.expansions), (min(space.kernel_sizes),)),) * len(space.layers))
    assert decode(space, [0] * len(space.layers)) == smallest
    assert decode(space, [n - 1] * len(space.layers)) == space.largest()


def test_encode_accepts_strings_and_numpy_genes(tiny):
    assert encode(tiny, "6:3,5|3:7|3:3|6:3,5,7,9") == [19, 2, 0, 29]
    assert str(decode(tiny, np.array([19, 2, 0, 29]))) == "6:3,5|3:7|3:3|6:3,5,7,9"
    # kernels given out of order are the same choice
    assert encode(tiny, Arch((LayerChoice(6, (5, 3)),) + (LayerChoice(3, (3,)),) * 3)) == [19, 0, 0, 0]


@pytest.mark.parametrize("genes,match", [([0, 0, 0], "3 genes"), ([0, 0, 0, 0, 0], "5 genes"),
                                         ([0, 0, 0, -1], "gene 3 is -1"), ([30, 0, 0, 0], "gene 0 is 30"),
                                         ([0, 1.5, 0, 0], "gene 1 is 1.5"), ([0, 0, "3", 0], "gene 2"),
                                         ([True, 0, 0, 0], "gene 0 is True")])
def test_decode_rejects_invalid_genes(tiny, genes, match):
    with pytest.raises(ArchError, match=match):
        decode(tiny, genes)


def test_encode_rejects_foreign_archs(tiny):
    with pytest.raises(ArchError, match="kernel 11"):
        encode(tiny, "6:11|3:3|3:3|3:3")
    with pytest.raises(ArchError, match="exceed"):
        encode(get_space("tiny", max_paths=2), "6:3,5,7|3:3|3:3|3:3")
    with pytest.raises(ArchError, match="layers"):
        encode(tiny, "6:3|3:3")


# -- Kendall tau ----------------------------------------------------------------
def test_kendall_tau_matches_scipy():
    pred = [0.61, 0.72, 0.55, 0.80, 0.79, 0.64, 0.70]
    true = [93.1, 93.9, 92.8, 94.6, 94.0, 93.5, 93.2]
    tau, p = kendall_tau(pred, true)
    ref = stats.kendalltau(pred, true)
    assert tau == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    assert tau == pytest.approx(19 / 21)  # 20 concordant pairs, 1 discordant (0.64/93.5 against 0.70/93.2)


def test_kendall_tau_extremes():
    x = [0.1, 0.4, 0.2, 0.9, 0.5]
    assert kendall_tau(x, [2 * v + 1 for v in x])[0] == pytest.approx(1.0)
    assert kendall_tau(x, [-v for v in x])[0] == pytest.approx(-1.0)
    assert kendall_tau([1, 2], [3, 4])[0] == pytest.approx(1.0)


@pytest.mark.parametrize("pred,true,match", [([1, 2, 3], [1, 2], "differ in length"), ([1], [1], "at least 2"),
                                             ([], [], "at least 2"), ([1, float("nan")], [1, 2], "NaN")])
def test_kendall_tau_rejects_bad_input(pred, true, match):
    with pytest.raises(ValueError, match=match):
        kendall_tau(pred, true)


# -- NSGA-II --------------------------------------------------------------------
def _area(arch):
    """Kernel area weighted towards deep layers: grows with FLOPs, but not in proportion."""
    return sum((i + 1) * c.expansion * sum(k * k for k in c.kernels) for i, c in enumerate(arch.layers))


def _synthetic_score(space):
    top = _area(space.largest())
    return lambda arch: _area(arch) / top


def _dominates(a, b):
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def _assert_non_dominated(result):
    points = [[c.value(o) for o in result.objectives] for c in result.front]
    for a, b in itertools.permutations(points, 2):
        assert not _dominates(a, b)
    # and nothing evaluated dominates a front member
    for c in result.evaluated:
        p = [c.value(o) for o in result.objectives]
        assert not any(_dominates(p, q) for q in points)


def _hypervolume(candidates, space):
    from pymoo.indicators.hv import HV

    flops = space.flops(space.largest())
    return HV(ref_point=np.array([0.0, 1.0]))(np.array([[-c.acc, c.flops / flops] for c in candidates]))


@needs_pymoo
def test_nsga2_front_is_non_dominated_and_beats_random_sampling(tiny):
    score = _synthetic_score(tiny)
    for seed in range(3):
        result = nsga2_search(tiny, score, population=24, generations=20, seed=seed, progress=False)
        assert result.objectives == ("acc", "flops")
        assert len(result.front) >= 5
        _assert_non_dominated(result)
        for c in result.front:
            assert c.acc == score(c.arch) and c.flops == tiny.flops(c.arch) and c.params == tiny.params(c.arch)
        assert [c.flops for c in result.front] == sorted(c.flops for c in result.front)
        # the same budget of architectures drawn by the training sampler covers less hypervolume
        rng = random.Random(seed)
        sampled = [tiny.sample(rng) for _ in range(result.n_evaluations)]
        random_hv = _hypervolume([Candidate(a, score(a), tiny.flops(a), 0) for a in sampled], tiny)
        assert _hypervolume(result.front, tiny) > random_hv


@needs_pymoo
def test_nsga2_scores_each_arch_once():
    space = get_space("tiny", max_paths=1, kernel_sizes=(3, 5))  # 4 choices, 256 archs: repeats are certain
    calls = []

    def score(arch):
        calls.append(arch)
        return _area(arch) / 100

    result = nsga2_search(space, score, population=10, generations=30, seed=0, progress=False)
    assert len(calls) == len(set(calls)) == len(result.evaluated)
    assert result.n_evaluations > len(result.evaluated)
    _assert_non_dominated(result)


@needs_pymoo
def test_nsga2_is_seeded(tiny):
    score = _synthetic_score(tiny)
    runs = [nsga2_search(tiny, score, population=10, generations=5, seed=s, progress=False) for s in (7, 7, 8)]
    assert runs[0].front == runs[1].front
    assert [c.arch for c in runs[0].evaluated] != [c.arch for c in runs[2].evaluated]


@needs_pymoo
def test_nsga2_three_objectives_and_latency(tiny):
    score = _synthetic_score(tiny)
    latency = lambda arch: sum(len(c.kernels) for c in arch.layers) * 0.5  # noqa: E731
    result = nsga2_search(tiny, score, ("acc", "params", "latency"), population=12, generations=5, seed=1,
                          latency=latency, layout="official", progress=False)
    _assert_non_dominated(result)
    for c in result.evaluated:
        assert c.latency == latency(c.arch) and c.params == tiny.params(c.arch, "official")
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["objectives"] == ["acc", "params", "latency"] and len(summary["front"]) == len(result.front)


@pytest.mark.parametrize("objectives,kw,match", [(("acc", "speed"), {}, "unknown objective 'speed'"),
                                                  (("flops", "params"), {}, "'acc'"), (("acc",), {}, "at least one"),
                                                  (("acc", "flops", "flops"), {}, "repeat"),
                                                  (("acc", "latency"), {}, "latency"),
                                                  (("acc", "flops"), {"population": 1}, "population"),
                                                  (("acc", "params"), {"layout": "fused"}, "layout")])
def test_nsga2_rejects_bad_settings(tiny, objectives, kw, match):
    with pytest.raises(ValueError, match=match):
        nsga2_search(tiny, _synthetic_score(tiny), objectives, progress=False, **kw)


@needs_pymoo
def test_nsga2_rejects_non_finite_scores(tiny):
    with pytest.raises(ValueError, match="finite"):
        nsga2_search(tiny, lambda arch: float("nan"), population=4, generations=1, progress=False)


def test_nsga2_defaults_follow_the_public_fork():
    params = inspect.signature(nsga2_search).parameters
    assert params["population"].default == 40 and params["generations"].default == 40
    assert params["objectives"].default == ("acc", "flops")


@needs_pymoo
def test_plot_pareto(tiny, tmp_path):
    result = nsga2_search(tiny, _synthetic_score(tiny), ("acc", "flops", "params"), population=8, generations=3,
                          progress=False)
    for x in (None, "params"):
        path = plot_pareto(result, tmp_path / "plots" / f"pareto_{x}.png", x=x)
        assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="latency"):
        plot_pareto(result, tmp_path / "bad.png", x="latency")


# -- random search, the evaluation log, bounds, outputs -------------------------
SMALL = dict(max_paths=1, kernel_sizes=(3, 5))  # 4 choices a layer, 256 architectures: the true front is known


def _true_front(space, score, objectives=("acc", "flops")):
    """The front by brute force over every architecture, as a set of objective vectors."""
    n = space.choices_per_layer()
    points = set()
    for genes in itertools.product(range(n), repeat=len(space.layers)):
        a = decode(space, genes)
        points.add(tuple(-score(a) if o == "acc" else getattr(space, o)(a) for o in objectives))
    return {p for p in points if not any(_dominates(q, p) for q in points)}


def _vectors(candidates, objectives=("acc", "flops")):
    return {tuple(c.value(o) for o in objectives) for c in candidates}


def test_non_dominated_known_answer():
    arch = Arch.parse("3:3")
    cands = [Candidate(arch, acc, flops, 0) for acc, flops in ((0.5, 10), (0.6, 20), (0.55, 25), (0.6, 20), (0.4, 5),
                                                               (0.3, 5))]
    front = non_dominated(cands, ("acc", "flops"))
    # (0.55, 25) loses to (0.6, 20) and (0.3, 5) to (0.4, 5); the tied pair both stay
    assert [(c.acc, c.flops) for c in front] == [(0.5, 10), (0.6, 20), (0.6, 20), (0.4, 5)]
    assert non_dominated([], ("acc", "flops")) == []


def test_random_search_finds_the_true_front_of_a_small_space():
    space = get_space("tiny", **SMALL)
    score = _synthetic_score(space)
    calls = []
    result = random_search(space, lambda a: calls.append(a) or score(a), budget=3000, seed=0, progress=False)
    assert result.strategy == "random" and result.n_evaluations == 3000 and result.n_rejected == 0
    assert len(calls) == len(set(calls)) == len(result.evaluated) == 256  # every arch drawn, each scored once
    assert _vectors(result.front) == _true_front(space, score)
    assert [c.flops for c in result.front] == sorted(c.flops for c in result.front)


@needs_pymoo
def test_nsga2_finds_most_of_the_true_front_of_a_small_space():
    space = get_space("tiny", **SMALL)
    score = _synthetic_score(space)
    true = _true_front(space, score)
    found = _vectors(nsga2_search(space, score, population=16, generations=20, seed=0, progress=False).front)
    assert found <= true and len(found) >= len(true) // 2


def test_random_search_is_seeded_and_checks_its_settings(tiny):
    score = _synthetic_score(tiny)
    runs = [random_search(tiny, score, budget=30, seed=s, progress=False) for s in (3, 3, 4)]
    assert runs[0].evaluated == runs[1].evaluated and runs[0].evaluated != runs[2].evaluated
    with pytest.raises(ValueError, match="budget"):
        random_search(tiny, score, budget=0, progress=False)
    with pytest.raises(ValueError, match="latency"):
        random_search(tiny, score, ("acc", "latency"), budget=5, progress=False)


class _Killed(Exception):
    pass


class _KillingScorer:
    """The synthetic score, recording calls, raising (a kill) instead of the (after+1)-th score."""

    def __init__(self, score, after=None):
        self.score, self.after, self.calls = score, after, []

    def __call__(self, arch):
        if self.after is not None and len(self.calls) == self.after:
            raise _Killed
        self.calls.append(arch)
        return self.score(arch)


@pytest.mark.parametrize("strategy", [pytest.param("nsga2", marks=needs_pymoo), "random"])
def test_search_resumes_after_a_kill_without_rescoring(tiny, tmp_path, strategy):
    search = (functools.partial(nsga2_search, population=10, generations=6) if strategy == "nsga2"
              else functools.partial(random_search, budget=60))
    score = _synthetic_score(tiny)
    full_scorer = _KillingScorer(score)
    full = search(tiny, full_scorer, seed=5, progress=False)
    path = tmp_path / "evaluated.jsonl"
    killed = _KillingScorer(score, after=17)
    with pytest.raises(_Killed):
        search(tiny, killed, seed=5, log=EvaluationLog(path, tiny), progress=False)
    assert len(path.read_text().splitlines()) == 17  # every score was on disk before the kill
    with path.open("a") as f:  # and the kill came in the middle of writing an 18th
        f.write('{"arch": "3:3|3:3|3:3|3:3", "acc": 0.')
    resumed_scorer = _KillingScorer(score)
    resumed = search(tiny, resumed_scorer, seed=5, log=EvaluationLog(path, tiny), progress=False)
    assert not set(killed.calls) & set(resumed_scorer.calls)  # nothing scored twice
    assert killed.calls + resumed_scorer.calls == full_scorer.calls
    assert resumed.evaluated == full.evaluated and resumed.front == full.front
    assert resumed.n_evaluations == full.n_evaluations
    # the cut-short line was overwritten: the log reads back whole, one line per arch
    assert [c.arch for c in EvaluationLog(path, tiny).candidates()] == full_scorer.calls
    assert len(path.read_text().splitlines()) == len(full_scorer.calls)


def test_evaluation_log_round_trip_and_latency_added_later(tiny, tmp_path):
    path = tmp_path / "evaluated.jsonl"
    score = _synthetic_score(tiny)
    first = random_search(tiny, score, budget=8, seed=1, log=EvaluationLog(path, tiny), progress=False)
    log = EvaluationLog(path, tiny)
    assert log.candidates() == first.evaluated
    entry = json.loads(path.read_text().splitlines()[0])
    assert set(entry) == {"arch", "acc", "flops", "params", "latency", "context"} and entry["latency"] is None
    # a later search with a latency objective reuses the scores and measures only the latency
    latency = lambda arch: 0.001 * sum(len(c.kernels) for c in arch.layers)  # noqa: E731
    again = random_search(tiny, lambda a: pytest.fail("rescored"), ("acc", "latency"), budget=8, seed=1,
                          latency=latency, log=log, progress=False)
    assert [c.latency for c in again.evaluated] == [latency(c.arch) for c in first.evaluated]
    assert [c.latency for c in EvaluationLog(path, tiny).candidates()] == [latency(c.arch) for c in first.evaluated]


def test_evaluation_log_keeps_a_complete_last_line_without_newline(tiny, tmp_path):
    path = tmp_path / "evaluated.jsonl"
    log = EvaluationLog(path, tiny)
    a, b = Arch.parse("3:3|3:3|3:3|3:3"), Arch.parse("6:5|3:3|3:3|3:3")
    log.add(Candidate(a, 0.5, tiny.flops(a), tiny.params(a)))
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # killed between the object and its newline
    log = EvaluationLog(path, tiny)
    assert a in log
    log.add(Candidate(b, 0.6, tiny.flops(b), tiny.params(b)))
    assert [c.arch for c in EvaluationLog(path, tiny).candidates()] == [a, b]


def test_evaluation_log_refuses_other_settings_and_damage(tiny, tmp_path):
    path = tmp_path / "evaluated.jsonl"
    random_search(tiny, _synthetic_score(tiny), budget=3, log=EvaluationLog(path, tiny, meta={"checkpoint": "a.pt"}),
                  progress=False)
    with pytest.raises(ValueError, match=r"evaluated\.jsonl:1: scored with space = .*new --out"):
        EvaluationLog(path, get_space("tiny", max_paths=2), meta={"checkpoint": "a.pt"})
    with pytest.raises(ValueError, match=r"evaluated\.jsonl:1: scored with layout = 'mixpath'"):
        EvaluationLog(path, tiny, layout="official", meta={"checkpoint": "a.pt"})
    with pytest.raises(ValueError, match=r"scored with checkpoint = 'a\.pt', but this search has 'b\.pt'"):
        EvaluationLog(path, tiny, meta={"checkpoint": "b.pt"})
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"evaluated\.jsonl:2: not valid JSON"):
        EvaluationLog(path, tiny, meta={"checkpoint": "a.pt"})
    with pytest.raises(ValueError, match="another space or layout"):
        random_search(tiny, _synthetic_score(tiny), budget=3, log=EvaluationLog(None, tiny), layout="official",
                      progress=False)


@pytest.mark.parametrize("strategy", [pytest.param("nsga2", marks=needs_pymoo), "random"])
@pytest.mark.parametrize("bound", ["max_flops", "max_params"])
def test_bounds_keep_infeasible_archs_unscored(tiny, strategy, bound):
    measure = tiny.flops if bound == "max_flops" else tiny.params
    rng = random.Random(0)
    limit = int(np.median([measure(tiny.sample(rng)) for _ in range(200)]))
    score = _synthetic_score(tiny)
    scored = []

    def checked_score(arch):
        assert measure(arch) <= limit, "an infeasible architecture was scored"
        scored.append(arch)
        return score(arch)

    kw = {bound: limit, "seed": 2, "progress": False}
    result = (nsga2_search(tiny, checked_score, population=12, generations=5, **kw) if strategy == "nsga2"
              else random_search(tiny, checked_score, budget=60, **kw))
    assert result.n_rejected > 0 and result.constraints == {bound: limit}
    assert len(scored) == len(result.evaluated) and result.front
    assert all(measure(c.arch) <= limit for c in result.evaluated)
    _assert_non_dominated(result)
    if strategy == "random":
        assert result.n_evaluations == 60
    assert json.loads(json.dumps(result.to_dict()))["n_rejected"] == result.n_rejected


@pytest.mark.parametrize("search", [pytest.param(functools.partial(nsga2_search, population=4, generations=1),
                                                 marks=needs_pymoo),
                                    functools.partial(random_search, budget=4)])
def test_bounds_no_architecture_meets_are_refused(tiny, search):
    least = smallest(tiny)
    assert least == Arch.parse("3:3|3:3|3:3|3:3")
    flops, params = tiny.flops(least), tiny.params(least)
    with pytest.raises(ValueError, match=rf"max_flops = {flops - 1} .* raise max_flops to at least {flops}$"):
        search(tiny, _synthetic_score(tiny), max_flops=flops - 1, progress=False)
    with pytest.raises(ValueError, match=rf"max_params = 10 .* at least {params}$"):
        search(tiny, _synthetic_score(tiny), max_params=10, progress=False)


@needs_pymoo
def test_a_bound_only_the_smallest_arch_meets(tiny):
    least = smallest(tiny)
    flops = tiny.flops(least)  # inclusive: this arch alone, of 30**4, is feasible
    result = nsga2_search(tiny, _synthetic_score(tiny), population=4, generations=2, max_flops=flops, seed=0,
                          progress=False)
    assert all(c.arch == least for c in result.evaluated) and result.n_rejected == 8 - result.n_evaluations
    with pytest.raises(ValueError, match=r"rejected 4001 draws outside \{'max_flops': \d+\} for 0 inside; loosen"):
        random_search(tiny, _synthetic_score(tiny), budget=4, max_flops=flops, progress=False)


def test_save_front(tiny, tmp_path):
    result = random_search(tiny, _synthetic_score(tiny), ("acc", "flops", "params"), budget=40, seed=0,
                           progress=False)
    out = tmp_path / "search"
    paths = save_front(result, out)
    assert sorted(p.name for p in out.iterdir()) == ["front.csv", "front.json", "pareto.png"]  # no temporary files
    front = json.loads(paths["front.json"].read_text())
    assert front == [c.to_dict() for c in result.front]
    assert set(front[0]) == {"arch", "acc", "flops", "params", "latency"}
    with paths["front.csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["arch"] for r in rows] == [c["arch"] for c in front]
    assert [float(r["acc"]) for r in rows] == [c["acc"] for c in front]
    assert [int(float(r["flops"])) for r in rows] == [c["flops"] for c in front]
    assert all(r["latency"] == "" for r in rows)
    assert all(line.startswith('"') for line in paths["front.csv"].read_text().splitlines()[1:])  # arch quoted
    assert paths["pareto.png"].read_bytes().startswith(PNG_MAGIC)


def test_search_imports_and_random_search_runs_without_pymoo():
    code = (
        "import sys; sys.modules['pymoo'] = None\n"
        "from mixpath.search import random_search, nsga2_search\n"
        "from mixpath.space import get_space\n"
        "space = get_space('tiny')\n"
        "r = random_search(space, lambda a: space.flops(a) / 1e7, budget=5, progress=False)\n"
        "assert r.n_evaluations == 5 and r.front\n"
        "try:\n"
        "    nsga2_search(space, lambda a: 0.5, progress=False)\n"
        "except ModuleNotFoundError as e:\n"
        "    print('refused:', e)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused: NSGA-II needs pymoo" in done.stdout and "--strategy random" in done.stdout


# -- scoring with a supernet and ranking reports --------------------------------------
@pytest.fixture
def one_thread():
    """Tiny convolutions gain nothing from threads, and on a busy machine their sync costs seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_rank_architectures_on_a_tiny_supernet(tiny, one_thread):
    torch.manual_seed(0)
    net = SuperNet(tiny)
    gen = torch.Generator().manual_seed(1)
    train = [torch.randn(8, 3, 16, 16, generator=gen) for _ in range(2)]
    val = [(torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(2)]
    rng = random.Random(0)
    archs = [tiny.sample(rng) for _ in range(3)] + ["6:3,5,7,9|3:3|6:5,7|3:9"]
    ranked = rank_architectures(net, archs, lambda: train, lambda: val, progress=False)
    assert [a for a, _ in ranked] == [tiny.check(a) for a in archs]
    assert all(isinstance(acc, float) and 0.0 <= acc <= 1.0 for _, acc in ranked)
    # the same number as scoring by hand or through the search's scorer: recalibration makes it repeatable
    arch, acc = ranked[1]
    assert score_arch(net, arch, lambda: train, lambda: val) == acc
    assert supernet_scorer(net, lambda: train, lambda: val)(arch) == acc
    with pytest.raises(ArchError):
        rank_architectures(net, ["6:3|3:3"], lambda: train, lambda: val, progress=False)


def test_ranking_report():
    archs = [f"3:{k}|6:3" for k in (3, 5, 7, 9)] + ["6:3|6:3", "6:5|6:3"]
    supernet = [0.50, 0.55, 0.60, 0.52, 0.70, 0.65]
    standalone = [90.0, 91.0, 93.0, 93.5, 94.0, 92.5]
    report = ranking_report(archs, supernet, standalone, top_k=(1, 3, 6))
    tau = stats.kendalltau(supernet, standalone).statistic
    assert report["n"] == 6
    assert report["kendall_tau"] == pytest.approx(tau)
    assert report["spearman"] == pytest.approx(stats.spearmanr(supernet, standalone).statistic)
    assert report["top_k_overlap"] == {1: 1.0, 3: pytest.approx(2 / 3)}  # k = n is left out
    assert report["best_predicted"] == "6:3|6:3" and report["best_predicted_true_rank"] == 1
    json.dumps(report)
    with pytest.raises(ValueError, match="paired"):
        ranking_report(archs[:-1], supernet, standalone)


def test_plot_ranking(tmp_path):
    path = plot_ranking([0.5, 0.6, 0.55, 0.7], [90, 92, 91, 93], tmp_path / "ranking.png", title="SBN")
    assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 1000


def _correlated(n, seed, noise=0.5):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=n)
    return truth + noise * rng.normal(size=n), truth


def test_bootstrap_tau_ci_contains_the_estimate_and_shrinks_with_n():
    widths = []
    for n in (20, 200):
        pred, truth = _correlated(n, seed=n)
        low, high = bootstrap_tau_ci(pred, truth, n_resamples=250, seed=0)
        tau = stats.kendalltau(pred, truth).statistic
        assert -1 <= low < tau < high <= 1
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # about 1/sqrt(n): sqrt(10) narrower
    pred, truth = _correlated(30, seed=1)
    assert bootstrap_tau_ci(pred, truth, n_resamples=300, seed=4) == bootstrap_tau_ci(pred, truth, n_resamples=300,
                                                                                     seed=4)
    narrow = bootstrap_tau_ci(pred, truth, confidence=0.5, n_resamples=300, seed=4)
    wide = bootstrap_tau_ci(pred, truth, confidence=0.99, n_resamples=300, seed=4)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


@pytest.mark.parametrize("pred,true,kw,match", [([1, 2, 3], [1, 2], {}, "differ in length"),
                                                ([1, 1, 1], [1, 2, 3], {}, "undefined"),
                                                ([1, 2, 3], [1, 2, 3], {"confidence": 95}, "confidence")])
def test_bootstrap_tau_ci_rejects_bad_input(pred, true, kw, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_tau_ci(pred, true, **kw)


def test_rank_report_before_and_after_recalibration(tmp_path):
    truth, after = _correlated(12, seed=3, noise=0.3)
    before = _correlated(12, seed=3, noise=3.0)[0]
    archs = [f"3:{k}|6:{j}" for k in (3, 5, 7) for j in (3, 5, 7, 9)]
    report = rank_report(archs, truth, after, before, top_k=(1, 3), n_resamples=300)
    for section, scores in ((report, after), (report["before_recalibration"], before)):
        tau = stats.kendalltau(scores, truth).statistic
        assert section["kendall_tau"] == pytest.approx(tau)
        assert section["spearman"] == pytest.approx(stats.spearmanr(scores, truth).statistic)
        low, high = section["tau_ci95"]
        assert low < tau < high
        assert set(section["top_k_overlap"]) == {1, 3}
    assert report["n"] == 12 and "n" not in report["before_recalibration"]
    assert report["kendall_tau"] > report["before_recalibration"]["kendall_tau"]
    assert report["archs"][4] == {"arch": archs[4], "standalone": truth[4], "supernet": after[4],
                                  "supernet_uncalibrated": before[4]}
    json.loads(json.dumps(report))
    with pytest.raises(ValueError, match="11 uncalibrated scores"):
        rank_report(archs, truth, after, before[:-1])
    path = plot_rank_scatter(truth, after, before, tmp_path / "scatter.png", title="SBN")
    assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 1000


def test_scores_without_recalibration_use_the_supernet_statistics(tiny, one_thread):
    torch.manual_seed(0)
    net = SuperNet(tiny)
    gen = torch.Generator().manual_seed(1)
    train = [torch.randn(8, 3, 16, 16, generator=gen) + 1.0 for _ in range(2)]
    val = [(torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(2)]
    net.train()
    for x in train:  # give the running statistics something to hold
        net(x, tiny.largest())
    arch = tiny.parse("6:3,5,7,9|3:3|6:5,7|3:9")
    state = {k: v.clone() for k, v in net.state_dict().items()}
    direct = accuracy(net, arch, val)
    assert uncalibrated_accuracy(net, arch, val_fn := (lambda: val)) == direct
    assert rank_architectures(net, [arch], None, val_fn, progress=False, recalibrate=False) == [(arch, direct)]
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # the supernet is untouched
    assert net.training
    with pytest.raises(ValueError, match="calibration"):
        rank_architectures(net, [arch], None, val_fn, progress=False)


# -- ground truth files ------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_ground_truth_round_trip(tiny, tmp_path, suffix):
    rng = random.Random(3)
    entries = [(tiny.sample(rng), round(rng.uniform(85, 95), 2)) for _ in range(5)]
    path = save_ground_truth(tmp_path / f"truth{suffix}", entries)
    assert load_ground_truth(path, tiny) == entries
    assert load_ground_truth(path) == entries


@pytest.mark.parametrize("suffix,body,match", [
    (".csv", 'arch,accuracy\n"3:3|3:5",91.0\n"3:3|3:x",92\n', r"truth\.csv:3: layer 1"),
    (".csv", 'arch,accuracy\n"3:3|3:5",ninety\n', r"truth\.csv:2: accuracy 'ninety' is not a number"),
    (".csv", 'arch,accuracy\n"3:3|3:5",91\n\n"3:5|3:3",90\n"3:3|3:5",92\n',
     r"truth\.csv:5: .*already listed on line 2"),
    (".csv", "arch,accuracy\n3:3,5|3:7,91\n", r"truth\.csv:2: expected 2 fields .*quote"),
    (".csv", "name,acc\n", r"truth\.csv:1: expected the header"),
    (".csv", "arch,accuracy\n", r"truth\.csv: no entries"),
    (".jsonl", '{"arch": "3:3|3:5", "accuracy": 91}\n{"arch": "3:3|3:5" "accuracy": 9}\n',
     r"truth\.jsonl:2: not valid JSON"),
    (".jsonl", '{"arch": "3:3|3:5", "acc": 91}\n', r"truth\.jsonl:1: expected an object"),
    (".jsonl", '\n{"arch": 7, "accuracy": 91}\n', r"truth\.jsonl:2: arch must be a string"),
    (".jsonl", '{"arch": "3:3|3:5", "accuracy": NaN}\n', r"truth\.jsonl:1: accuracy .* not finite"),
    (".txt", "", r"unknown ground-truth format '\.txt'"),
])
def test_ground_truth_errors_name_the_line(tmp_path, suffix, body, match):
    path = tmp_path / f"truth{suffix}"
    path.write_text(body)
    with pytest.raises(ValueError, match=match):
        load_ground_truth(path)


def test_ground_truth_checks_the_space(tiny, tmp_path):
    path = tmp_path / "truth.jsonl"
    path.write_text('{"arch": "6:3|3:3|3:3|3:3", "accuracy": 91}\n{"arch": "6:3|3:3", "accuracy": 90}\n')
    with pytest.raises(ValueError, match=r"truth\.jsonl:2: architecture has 2 layers"):
        load_ground_truth(path, tiny)


# -- collecting retrain summaries into ground truth -------------------------------------------
def _retrain(root, name, arch, val_acc, seed, space=None, test_acc=0.5):
    d = root / name
    d.mkdir()
    summary = {"arch": arch, "val_acc": val_acc, "test_acc": test_acc, "seed": seed, "epochs": 3}
    if space is not None:
        summary["space"] = space.to_dict()
    (d / "summary.json").write_text(json.dumps(summary))
    return d


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_collect_truth_means_counts_and_stds(tiny, tmp_path, suffix):
    a, b = "6:3,5|3:7|3:3|3:9", "3:3|3:3|6:5,7,9|3:3"
    dirs = [_retrain(tmp_path, "r0", a, 0.90, 0, tiny), _retrain(tmp_path, "r1", b, 0.70, 0, tiny),
            _retrain(tmp_path, "r2", a, 0.80, 1, tiny), _retrain(tmp_path, "r3", a, 0.85, 2, tiny, test_acc=0.99)]
    rows = collect_truth(dirs, tmp_path / f"truth{suffix}")
    assert [r["arch"] for r in rows] == [a, b]
    assert rows[0]["accuracy"] == pytest.approx(0.85) and rows[0]["n"] == 3 and rows[0]["seeds"] == [0, 1, 2]
    assert rows[0]["accuracy_std"] == pytest.approx(0.05)  # sample std of 0.90, 0.80, 0.85
    assert rows[1] == {"arch": b, "accuracy": 0.70, "accuracy_std": None, "n": 1, "seeds": [0]}
    # the file reads back as ground truth; test accuracy is nowhere in it
    assert load_ground_truth(tmp_path / f"truth{suffix}", tiny) == [(tiny.parse(a), pytest.approx(0.85)),
                                                                    (tiny.parse(b), 0.70)]
    text = (tmp_path / f"truth{suffix}").read_text()
    assert "test" not in text and "0.99" not in text
    if suffix == ".csv":
        assert text.splitlines()[0] == "arch,accuracy,accuracy_std,n,seeds"


def test_collect_truth_refusals(tiny, tmp_path):
    a = "6:3,5|3:7|3:3|3:9"
    good = _retrain(tmp_path, "good", a, 0.9, 0, tiny)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no summary\.json in .*empty: pass finished retrain folders"):
        collect_truth([good, tmp_path / "empty"], tmp_path / "truth.csv")
    other = _retrain(tmp_path, "other", "6:3,5|3:7|3:3|3:9", 0.8, 1, get_space("tiny", max_paths=2))
    with pytest.raises(ValueError, match="other retrained with space .* collect one space per truth file"):
        collect_truth([good, other], tmp_path / "truth.csv")
    official = _retrain(tmp_path, "official", a, 0.8, 1, tiny)
    summary = json.loads((official / "summary.json").read_text())
    (official / "summary.json").write_text(json.dumps({**summary, "layout": "official"}))
    with pytest.raises(ValueError, match="official retrained with layout official but .*good with None"):
        collect_truth([good, official], tmp_path / "truth.csv")
    twin = _retrain(tmp_path, "twin", a, 0.8, 0, tiny)
    with pytest.raises(ValueError, match=f"good and .*twin both retrained {re.escape(a)} with seed 0"):
        collect_truth([good, twin], tmp_path / "truth.csv")
    bad = _retrain(tmp_path, "bad", "6:3,5|3:7", 0.8, 3, tiny)
    with pytest.raises(ValueError, match=r"bad/summary\.json: architecture has 2 layers"):
        collect_truth([good, bad], tmp_path / "truth.csv")
    assert not (tmp_path / "truth.csv").exists()
