"""Locality-based shrinkage (mixpath.shrink), restricted spaces and their files, search inside pockets, `mixpath shrink`."""
from __future__ import annotations

import collections
import importlib.util
import json
import random

import numpy as np
import pytest

from mixpath.search import (EvaluationLog, _pymoo_classes, cheapest, decode, encode, nsga2_search, random_search,
                            smallest)
from mixpath.shrink import arch_distance, neighbours, pockets_of, shrink
from mixpath.space import (Arch, ArchError, Pocket, SpaceFileError, get_space, load_space_file, space_file,
                           space_from_dict)

needs_pymoo = pytest.mark.skipif(importlib.util.find_spec("pymoo") is None, reason="NSGA-II needs pymoo")


@pytest.fixture(scope="module")
def space():
    # 4 layers, 12 choices per layer (genes 0..11), 20736 architectures
    return get_space("tiny", max_paths=2, kernel_sizes=(3, 5, 7))


def genes_arch(space, genes):
    return decode(space, genes)


def two_peaks(space, a=(2, 2, 2, 2), b=(9, 9, 9, 9), width=2.0):
    """A smooth function of the encoding with two separate optima (score 1 at a and at b)."""
    a, b = np.array(a), np.array(b)

    def score(arch):
        g = np.array(encode(space, arch))
        return float(max(np.exp(-((g - a) ** 2).sum() / width), np.exp(-((g - b) ** 2).sum() / width)))
    return score


# -- distances, neighbours, grouping -----------------------------------------
def test_distances_and_neighbours(space):
    arch = space.parse("3:3,5|6:7|3:3|6:5,7")
    assert arch_distance(space, arch, "3:3,7|6:7|3:3|6:5,7") == 1
    assert arch_distance(space, arch, "3:3,7|6:7|3:3|6:5,7", "fine") == 2  # 5 out, 7 in
    assert arch_distance(space, arch, "6:3,5|3:7|3:3|6:5,7", "fine") == 2  # two expansions
    near = neighbours(space, arch)
    assert len(near) == len(set(near)) == 4 * 11 and arch not in near
    assert all(arch_distance(space, arch, n) == 1 for n in near)
    assert len(neighbours(space, arch, 2)) == 4 * 11 + 6 * 11 ** 2
    fine = neighbours(space, arch, 1, "fine")
    assert fine and all(arch_distance(space, arch, n, "fine") == 1 for n in fine)
    assert space.parse("3:3|6:7|3:3|6:5,7") in fine and space.parse("6:3,5|6:7|3:3|6:5,7") in fine


def test_pockets_are_the_connected_components(space):
    a = [space.parse(t) for t in ("3:3|3:3|3:3|3:3", "3:5|3:3|3:3|3:3", "3:5|3:7|3:3|3:3",  # a chain
                                  "6:7|6:7|6:7|6:7", "6:7|6:7|6:7|6:5")]                  # a pair
    groups = pockets_of(space, a)
    assert groups == [a[:3], a[3:]]
    assert len(pockets_of(space, a, radius=3)) == 2  # the groups are 4 layers apart
    assert pockets_of(space, a, radius=4) == [a]
    pocket = Pocket.of(a[:3])
    assert pocket.to_list() == [["3:3", "3:5"], ["3:3", "3:7"], ["3:3"], ["3:3"]] and pocket.size() == 4


# -- the algorithm on synthetic scores with a known answer ---------------------
def test_two_optima_give_two_pockets_holding_them(space):
    score = two_peaks(space)
    result = shrink(space, score, samples=400, seed_fraction=0.01, budget=20000, progress=False)
    a, b = genes_arch(space, [2] * 4), genes_arch(space, [9] * 4)
    shrunk = result.space
    assert len(shrunk.pockets) == 2 and result.stop in ("converged", "patience")
    holders = [[arch in p for p in shrunk.pockets] for arch in (a, b)]
    assert sorted(holders) == [[False, True], [True, False]]  # each optimum in its own pocket
    assert shrunk.size() < shrunk.unrestricted().size() / 4
    report = result.to_dict()
    assert report["scores"]["inside"]["mean"] > 10 * report["scores"]["outside"]["mean"]
    assert report["scores"]["members"]["best"] == 1.0
    assert [p["members"] for p in report["pockets"]] == [len(g) for g in result.groups]
    assert sum(len(g) for g in result.groups) == len(result.members)


def test_patience_stops_after_rounds_that_do_not_raise_the_mean(space):
    # a flat score: every neighbour joins, the mean never rises, so growth stops after exactly `patience` rounds
    result = shrink(space, lambda arch: 0.5, samples=10, seed_fraction=0.1, patience=2, budget=10 ** 5,
                    progress=False)
    assert result.stop == "patience" and [r["round"] for r in result.rounds] == [1, 2]
    assert result.rounds[0]["admitted"] == 4 * 11  # the one seed's neighbours
    assert len(result.members) == 1 + 4 * 11 + 6 * 11 ** 2  # the radius-2 ball around the seed
    assert len(result.space.pockets) == 1


def test_mean_threshold_climbs_and_converges_on_a_single_peak(space):
    peak = np.array([5, 6, 7, 8])
    score = lambda arch: -float(((np.array(encode(space, arch)) - peak) ** 2).sum())  # noqa: E731
    result = shrink(space, score, samples=30, threshold="mean", patience=50, budget=10 ** 5, progress=False)
    means = [r["mean"] for r in result.rounds]
    assert means == sorted(means)  # tolerance 0 and the mean as threshold: the mean never falls
    assert result.stop == "converged"
    assert genes_arch(space, peak) in {c.arch for c in result.members}


def test_budget_counts_distinct_architectures_samples_included(space):
    result = shrink(space, two_peaks(space), samples=20, budget=27, progress=False)
    assert result.stop == "budget" and len(result.evaluated) == 27


@pytest.mark.parametrize("options", [dict(samples=1), dict(seed_fraction=0), dict(seed_fraction=1.5),
                                     dict(radius=0), dict(patience=0), dict(tolerance=-1), dict(budget=5),
                                     dict(distance="euclid"), dict(threshold="median")])
def test_bad_settings_are_refused_before_scoring(space, options):
    def never(arch):
        raise AssertionError("scored")
    with pytest.raises(ValueError):
        shrink(space, never, **{"samples": 10, **options}, progress=False)


def test_resume_after_a_kill_scores_nothing_twice_and_ends_the_same(space, tmp_path):
    score = two_peaks(space)
    settings = dict(samples=30, seed_fraction=0.1, budget=200, progress=False)
    whole = shrink(space, score, **settings)
    calls = []

    def killed_after_50(arch):
        if len(calls) == 50:
            raise KeyboardInterrupt
        calls.append(arch)
        return score(arch)
    path = tmp_path / "evaluated.jsonl"
    with pytest.raises(KeyboardInterrupt):
        shrink(space, killed_after_50, log=EvaluationLog(path, space), **settings)
    again = []
    resumed = shrink(space, lambda a: again.append(a) or score(a), log=EvaluationLog(path, space), **settings)
    assert not set(again) & set(calls) and len(calls) + len(again) == len(whole.evaluated)
    assert resumed.to_dict() == whole.to_dict()


def test_reuse_serves_a_searchs_scores(space):
    score = two_peaks(space)
    first = shrink(space, score, samples=30, budget=100, progress=False)
    search_log = EvaluationLog(None, space)
    for c in first.evaluated[:60]:
        search_log.add(c)
    scored = []
    second = shrink(space, lambda a: scored.append(a) or score(a), samples=30, budget=100, reuse=search_log,
                    progress=False)
    assert len(scored) == 40 and second.to_dict() == first.to_dict()


# -- restricted spaces -------------------------------------------------------
def test_union_size_and_membership(space):
    p = Pocket.from_list([["3:3", "3:5"], ["3:3"], ["3:3", "6:7"], ["3:3"]])  # 4 archs
    q = Pocket.from_list([["3:5", "6:3"], ["3:3"], ["6:7"], ["3:3", "3:5"]])  # 4 archs, 1 shared with p
    shrunk = space.restrict([p, q])
    assert shrunk.size() == 7 and shrunk.restricted and not space.restricted
    assert shrunk != space and hash(shrunk) != hash(space) and shrunk.unrestricted() == space
    assert shrunk.check("3:5|3:3|6:7|3:3") == space.parse("3:5|3:3|6:7|3:3")
    with pytest.raises(ArchError, match="outside the 2 pocket.*layer"):
        shrunk.check("6:7|3:3|3:3|3:3")
    assert space_from_dict(json.loads(json.dumps(shrunk.to_dict()))) == shrunk
    archs = {a for a in (decode(space, g) for g in np.ndindex(12, 1, 12, 12)) if a in p or a in q}
    assert len(archs) == 7


@pytest.mark.parametrize("sampling", ["arch", "pocket"])
def test_sampling_stays_in_the_pockets_with_the_documented_distribution(space, sampling):
    big = Pocket.from_list([["3:3", "3:5", "3:7"], ["3:3"], ["3:3"], ["3:3"]])  # 3 archs
    small = Pocket.from_list([["6:7"], ["6:7"], ["6:7"], ["6:7"]])                # 1 arch
    shrunk = space.restrict([big, small], sampling)
    rng = random.Random(0)
    counts = collections.Counter(shrunk.sample(rng) for _ in range(4000))
    assert len(counts) == 4 and all(shrunk.check(a) for a in counts)
    share = counts[Arch.parse("6:7|6:7|6:7|6:7")] / 4000
    assert share == pytest.approx(0.25 if sampling == "arch" else 0.5, abs=0.03)


def test_uniform_sampling_counts_an_overlap_once(space):
    p = Pocket.from_list([["3:3", "3:5"], ["3:3"], ["3:3"], ["3:3"]])
    q = Pocket.from_list([["3:5", "3:7"], ["3:3"], ["3:3"], ["3:3"]])  # 3:5|... is in both
    shrunk, rng = space.restrict([p, q]), random.Random(1)
    counts = collections.Counter(shrunk.sample(rng) for _ in range(6000))
    assert len(counts) == 3 and all(c / 6000 == pytest.approx(1 / 3, abs=0.03) for c in counts.values())


def test_empty_and_malformed_restrictions_are_refused_in_one_line(space):
    with pytest.raises(ArchError, match="at least one pocket"):
        space.restrict([])
    with pytest.raises(ArchError, match="pocket 0.*kernel 9"):
        space.restrict([Pocket.from_list([["3:9"], ["3:3"], ["3:3"], ["3:3"]])])
    with pytest.raises(ArchError, match="layers"):
        space.restrict([Pocket.from_list([["3:3"]])])


def test_space_file_round_trip_and_refusals(space, tmp_path):
    shrunk = space.restrict([Pocket.from_list([["3:3", "6:5"], ["3:3"], ["3:7"], ["3:3,5"]])])
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space_file(shrunk)))
    loaded = load_space_file(path, space)
    assert loaded == shrunk and loaded.pocket_sampling == "arch"
    assert load_space_file(path, space, sampling="pocket").pocket_sampling == "pocket"
    assert load_space_file(path, shrunk) == shrunk  # a run trained in the shrunk space takes its own file
    with pytest.raises(SpaceFileError, match="another space .*max_paths"):
        load_space_file(path, get_space("tiny", max_paths=3, kernel_sizes=(3, 5, 7)))
    data = json.loads(path.read_text())
    for broken, message in ((dict(data, pockets=[]), "at least one pocket"), (dict(data, format="x"), "not a mixpath"),
                            (dict(data, pockets=[{"layers": [["3:3"]]}]), "layers")):
        path.write_text(json.dumps(broken))
        with pytest.raises(SpaceFileError, match=message):
            load_space_file(path, space)
    path.write_text("{")
    with pytest.raises(SpaceFileError, match="not valid JSON"):
        load_space_file(path, space)
    with pytest.raises(SpaceFileError, match="does not exist"):
        load_space_file(tmp_path / "nope.json", space)


# -- search inside pockets --------------------------------------------------
@pytest.fixture(scope="module")
def pocketed(space):
    return space.restrict([Pocket.from_list([["3:3", "3:5", "6:3"], ["3:3", "6:7"], ["3:7", "3:5,7"], ["6:3,5"]]),
                           Pocket.from_list([["6:5,7"], ["6:3", "6:5", "6:7"], ["6:3,7", "3:3"], ["3:3", "6:7"]])])


def test_cheapest_and_smallest_are_inside_the_pockets(pocketed):
    inside = [a for a in (decode(pocketed.unrestricted(), g) for g in np.ndindex(12, 12, 12, 12))
              if any(a in p for p in pocketed.pockets)]
    assert len(inside) == pocketed.size() == 12 + 12
    assert smallest(pocketed) == min(inside, key=pocketed.flops)
    params = lambda a: pocketed.params(a, "official")  # noqa: E731
    assert params(cheapest(pocketed, params)) == min(map(params, inside))
    assert pocketed.largest() == max(inside, key=pocketed.flops)


def test_random_search_never_leaves_the_pockets(pocketed):
    score = two_peaks(pocketed.unrestricted())
    result = random_search(pocketed, score, budget=40, seed=0, progress=False)
    assert all(any(c.arch in p for p in pocketed.pockets) for c in result.evaluated)
    with pytest.raises(ArchError, match="outside"):
        decode(pocketed, [11, 11, 11, 11])


@needs_pymoo
def test_nsga2_never_leaves_the_pockets_and_the_repair_moves_into_the_nearest(pocketed):
    score = two_peaks(pocketed.unrestricted())
    result = nsga2_search(pocketed, score, population=6, generations=6, seed=1, progress=False)
    assert len(result.evaluated) >= 10
    assert all(any(c.arch in p for p in pocketed.pockets) for c in result.evaluated)
    _, ArchProblem, _, PocketRepair = _pymoo_classes()

    class Problem:  # what PocketRepair reads of pymoo's problem
        evaluator = type("E", (), {"space": pocketed})

    X = np.random.default_rng(0).integers(0, 12, size=(200, 4))
    repaired = PocketRepair()._do(Problem, X, random_state=np.random.default_rng(1))
    for before, after in zip(X, repaired):
        arch = decode(pocketed, after)  # raises if outside
        if any(decode(pocketed.unrestricted(), before) in p for p in pocketed.pockets):
            assert (before == after).all()
        # only genes the chosen pocket does not allow change: at most the fewest misses over pockets
        misses = min(sum(c not in allowed for c, allowed in zip(decode(pocketed.unrestricted(), before).layers,
                                                                 p.layers)) for p in pocketed.pockets)
        assert (before != after).sum() <= misses and arch is not None


def test_a_log_is_shared_by_the_full_and_the_shrunk_space(space, pocketed, tmp_path):
    path = tmp_path / "evaluated.jsonl"
    random_search(space, two_peaks(space), budget=5, log=EvaluationLog(path, space), progress=False)
    assert len(EvaluationLog(path, pocketed)) == 5  # same context: scores do not depend on the pockets


# -- the command ---------------------------------------------------------------
@pytest.fixture(scope="module")
def shrunk_run(tmp_path_factory):
    """A one-epoch supernet on digits and a small `mixpath shrink` of it."""
    from mixpath.cli import main
    from mixpath.training import TrainConfig, train

    root = tmp_path_factory.mktemp("shrink")
    train(TrainConfig(epochs=1, max_paths=2, kernels=[3, 5], width_mult=0.5, batch_size=64, eval_archs=1,
                      calib_batches=1, out=str(root / "supernet")), log=lambda line: None)
    status = main(["shrink", str(root / "supernet"), "--out", str(root / "shrink"), "--samples", "6",
                   "--budget", "12", "--seed-fraction", "0.34"])
    return root, status


def test_shrink_command_writes_a_space_every_command_takes(shrunk_run, capsys):
    from mixpath.cli import main
    from mixpath.runs import open_run

    root, status = shrunk_run
    assert status == 0
    out = root / "shrink"
    report = json.loads((out / "shrink.json").read_text())
    assert report["n_evaluated"] == 12 and report["stop"] == "budget"
    assert len((out / "evaluated.jsonl").read_text().splitlines()) == 12
    assert (out / "shrink.png").read_bytes()[:4] == b"\x89PNG"
    run = open_run(root / "supernet")
    shrunk = load_space_file(out / "space.json", run.space)
    assert len(shrunk.pockets) == len(report["pockets"]) and shrunk.size() == report["size"]["shrunk"]
    # search inside: every architecture scored lies in the pockets
    assert main(["search", str(root / "supernet"), "--out", str(root / "search"), "--strategy", "random",
                 "--population", "2", "--generations", "3", "--space-file", str(out / "space.json")]) == 0
    scored = [json.loads(line)["arch"] for line in (root / "search" / "evaluated.jsonl").read_text().splitlines()]
    assert scored and all(shrunk.check(a) for a in scored)
    # export and rank refuse an architecture outside the pockets, in one line
    outside = next(a for a in (run.space.sample(random.Random(i)) for i in range(1000))
                   if not any(a in p for p in shrunk.pockets))
    capsys.readouterr()
    assert main(["export", str(outside), "--from", str(root / "supernet"), "--out", str(root / "m.pt2"),
                 "--space-file", str(out / "space.json")]) == 2
    err = capsys.readouterr().err
    assert "outside the" in err and len(err.strip().splitlines()) == 1
    truth = root / "truth.csv"
    truth.write_text("arch,accuracy\n" + "".join(f'"{a}",0.{i + 1}\n' for i, a in enumerate(scored[:2] + [outside])))
    assert main(["rank", str(root / "supernet"), "--truth", str(truth), "--out", str(root / "rank"),
                 "--space-file", str(out / "space.json")]) == 2
    assert "outside the" in capsys.readouterr().err


def test_shrink_command_refuses_overwrite_resumes_for_free_and_rejects_a_foreign_space_file(shrunk_run, capsys):
    from mixpath.cli import main

    root, _ = shrunk_run
    out = root / "shrink"
    args = ["shrink", str(root / "supernet"), "--out", str(out), "--samples", "6", "--budget", "12",
            "--seed-fraction", "0.34"]
    before = (out / "shrink.json").read_text()
    capsys.readouterr()
    assert main(args) == 2 and "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert len((out / "evaluated.jsonl").read_text().splitlines()) == 12  # nothing scored again
    assert json.loads((out / "shrink.json").read_text())["pockets"] == json.loads(before)["pockets"]
    foreign = root / "foreign.json"
    other = get_space("tiny", max_paths=3).restrict([Pocket.from_list([["3:3"]] * 4)])
    foreign.write_text(json.dumps(space_file(other)))
    capsys.readouterr()
    assert main(["search", str(root / "supernet"), "--out", str(root / "s2"), "--space-file", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert "shrinks another space" in err and len(err.strip().splitlines()) == 1
    assert main(args[:4] + ["--out", str(root / "bad"), "--samples", "1"]) == 2
    assert "samples = 1 is out of range" in capsys.readouterr().err


# ---------------------------------------------------------------- training and retraining inside a shrunk space

def test_train_and_retrain_stay_inside_a_space_file(tmp_path):
    from mixpath.cli import main
    from mixpath.runs import open_run
    from mixpath.space import Pocket, get_space, space_file
    from mixpath.training import TrainConfig, train

    small = dict(max_paths=2, kernels=[3, 5], width_mult=0.5, batch_size=64, calib_batches=2)
    full = get_space("tiny", max_paths=2, kernel_sizes=(3, 5), width_mult=0.5, num_classes=10, input_size=16)
    inside = [full.parse("3:3|3:3|6:5|6:3,5"), full.parse("3:5|3:3|6:5|6:3,5")]
    shrunk = full.restrict([Pocket.of(inside)])
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space_file(shrunk)))
    summary = train(TrainConfig(epochs=1, eval_archs=4, space_file=str(path), out=str(tmp_path / "sup"), **small),
                    log=lambda line: None)
    assert {a["arch"] for a in summary["archs"]} <= {str(a) for a in inside}
    assert all(row["val_arch"] in {str(a) for a in inside}
               for row in map(json.loads, (tmp_path / "sup" / "metrics.jsonl").read_text().splitlines()))
    assert open_run(tmp_path / "sup").space == shrunk  # search, rank and export see the same pockets
    outside = "6:3|6:3|3:3|3:3"
    status = main(["retrain", outside, "--from", str(tmp_path / "sup"), "--epochs", "1", "--out",
                   str(tmp_path / "re")])
    assert status == 2 and not (tmp_path / "re").exists()
