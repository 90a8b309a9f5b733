import inspect
import itertools
import json
import random

import numpy as np
import pytest
import torch
from pymoo.indicators.hv import HV
from scipy import stats

from mixpath.evaluate import score_arch
from mixpath.nn import SuperNet
from mixpath.ranking import (kendall_tau, load_ground_truth, plot_ranking, rank_architectures, ranking_report,
                             save_ground_truth)
from mixpath.search import (Candidate, decode, encode, layer_choices, nsga2_search, plot_pareto,
                            supernet_scorer)
from mixpath.space import Arch, ArchError, LayerChoice, get_space

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    flops = space.flops(space.largest())
    return HV(ref_point=np.array([0.0, 1.0]))(np.array([[-c.acc, c.flops / flops] for c in candidates]))


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


def test_nsga2_is_seeded(tiny):
    score = _synthetic_score(tiny)
    runs = [nsga2_search(tiny, score, population=10, generations=5, seed=s, progress=False) for s in (7, 7, 8)]
    assert runs[0].front == runs[1].front
    assert [c.arch for c in runs[0].evaluated] != [c.arch for c in runs[2].evaluated]


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


def test_nsga2_rejects_non_finite_scores(tiny):
    with pytest.raises(ValueError, match="finite"):
        nsga2_search(tiny, lambda arch: float("nan"), population=4, generations=1, progress=False)


def test_nsga2_defaults_follow_the_public_fork():
    params = inspect.signature(nsga2_search).parameters
    assert params["population"].default == 40 and params["generations"].default == 40
    assert params["objectives"].default == ("acc", "flops")


def test_plot_pareto(tiny, tmp_path):
    result = nsga2_search(tiny, _synthetic_score(tiny), ("acc", "flops", "params"), population=8, generations=3,
                          progress=False)
    for x in (None, "params"):
        path = plot_pareto(result, tmp_path / "plots" / f"pareto_{x}.png", x=x)
        assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="latency"):
        plot_pareto(result, tmp_path / "bad.png", x="latency")


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
    assert report["spearman_rho"] == pytest.approx(stats.spearmanr(supernet, standalone).statistic)
    assert report["top_k_overlap"] == {1: 1.0, 3: pytest.approx(2 / 3)}  # k = n is left out
    assert report["best_predicted"] == "6:3|6:3" and report["best_predicted_true_rank"] == 1
    json.dumps(report)
    with pytest.raises(ValueError, match="paired"):
        ranking_report(archs[:-1], supernet, standalone)


def test_plot_ranking(tmp_path):
    path = plot_ranking([0.5, 0.6, 0.55, 0.7], [90, 92, 91, 93], tmp_path / "ranking.png", title="SBN")
    assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 1000


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
