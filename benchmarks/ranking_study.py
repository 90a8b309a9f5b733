"""`python -m benchmarks.ranking_study`: does MixPath work here? Shadow BN vs single BN, both layouts.

One resumable command:
1. trains four supernets on the same data, seed and budget: {Shadow BN, single BN} x {mixpath, official},
   and a fifth, mixpath + Shadow BN with FairNAS-style strict-fairness sampling (`--sampling fair`) on the
   same images (the same epochs: each step trains a fair group, so it costs the group's size in passes);
2. retrains a seeded sample of architectures from scratch (stratified: in every layer each path count
   appears equally often), a subset of them with extra seeds, for the ground truth and its seed noise;
3. ranks the sample with each supernet before and after BN recalibration (`mixpath rank`'s own function),
   and measures each supernet's j-path features (`mixpath stats`'s library function);
4. writes the results folder (truth.csv, scores.csv, study.json, PNGs) and STUDY.md.

Every training is its own run folder under --out (checkpoints stay there, out of git): a killed study,
started again with the same options, skips what is finished and resumes what was running from its last
epoch. Trainings run in --workers processes of one thread each; a progress bar counts epochs and gives
the time left. `--smoke` is the CI version: a tiny budget that checks the pipeline, not the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from argparse import Namespace
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from mixpath.space import Arch, LayerChoice, SearchSpace

HERE = Path(__file__).resolve().parent
SUPERNETS = {  # name: (layout, shadow_bn, sampling)
    "mixpath-shadow": ("mixpath", True, "uniform"), "mixpath-single": ("mixpath", False, "uniform"),
    "official-shadow": ("official", True, "uniform"), "official-single": ("official", False, "uniform"),
    "mixpath-shadow-fair": ("mixpath", True, "fair"),
}
# The default study: sized on pilots (study/PILOTS.md) to finish within an hour on the 2-core development CPU
# with a ground truth whose spread across architectures is as large against its spread across seeds as the
# pilots found.
DEFAULTS = dict(data="cluttered-digits", image_size=20, width_mult=0.5, kernels="3,5,7", max_paths=3,
                supernet_epochs=30, retrain_epochs=20, archs=40, seed_archs=10, seeds=3, seed=2020, workers=2,
                backend="cpp", bootstrap=2000)
SMOKE = dict(data="digits", image_size=16, width_mult=0.25, kernels="3,5", max_paths=2, supernet_epochs=1,
             retrain_epochs=1, archs=4, seed_archs=1, seeds=2, workers=1, bootstrap=100)


@dataclass
class Job:
    """One training: a supernet or a stand-alone retraining, in its own run folder."""

    name: str
    folder: Path
    config: dict
    epochs: int
    kind: str = "retrain"
    meta: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return (self.folder / "summary.json").is_file()


def stratified_archs(space: SearchSpace, n: int, seed: int) -> list[Arch]:
    """`n` distinct architectures: in every layer each path count 1..m is used by n/m of them (as near as n
    allows), in a seeded order; the kernels of a j-path layer and its expansion rate are uniform."""
    rng = random.Random(f"ranking-study-{seed}")
    m = space.max_paths
    counts = []
    for _ in space.layers:
        column = [1 + i % m for i in range(n)]
        rng.shuffle(column)
        counts.append(column)
    archs, seen = [], set()
    for i in range(n):
        for _ in range(1000):  # redraw kernels and expansions until the arch is new (its path counts stay)
            arch = Arch(tuple(LayerChoice(rng.choice(space.expansions),
                                          tuple(sorted(rng.sample(space.kernel_sizes, counts[layer][i]))))
                              for layer in range(len(space.layers))))
            if arch not in seen:
                break
        else:
            raise ValueError(f"the space has too few architectures for {n} distinct ones with these path counts")
        seen.add(arch)
        archs.append(arch)
    return archs


def base_config(o: Namespace) -> dict:
    """The TrainConfig options every training of the study shares."""
    return dict(data=o.data, data_dir=o.data_dir, image_size=o.image_size, val_size=o.val_size,
                space="tiny" if o.data != "cifar10" else "cifar", max_paths=o.max_paths, kernels=o.kernels,
                expansions=[3, 6], width_mult=o.width_mult, seed=o.seed, device=o.device, backend=o.backend,
                threads=1 if o.device == "cpu" else None)


def plan_jobs(o: Namespace, space: SearchSpace) -> tuple[list[Job], list[Arch]]:
    base = base_config(o)
    jobs = [Job(name, o.out / "supernets" / name, {**base, "layout": layout, "shadow_bn": shadow,
                                                  "sampling": sampling, "epochs": o.supernet_epochs,
                                                  "eval_archs": 1},
                o.supernet_epochs, "supernet") for name, (layout, shadow, sampling) in SUPERNETS.items()]
    archs = stratified_archs(space, o.archs, o.seed)
    for i, arch in enumerate(archs):
        seeds = [o.seed + s for s in range(o.seeds if i < o.seed_archs else 1)]
        for seed in seeds:
            jobs.append(Job(f"arch {i:02d} seed {seed}", o.out / "retrain" / f"{i:02d}-seed{seed}",
                            {**base, "arch": str(arch), "seed": seed, "layout": "mixpath",
                             "epochs": o.retrain_epochs}, o.retrain_epochs, meta={"index": i}))
    return jobs, archs


def _start_worker(log_dir: str, study_pid: int) -> None:
    """Worker processes write their logs (and tqdm, off when not on a terminal) to a file of their own, and
    end when the study's process is gone (killed, or ended by SIGTERM), rather than train on as orphans."""
    os.environ["OMP_NUM_THREADS"] = "1"
    fd = os.open(Path(log_dir) / f"worker-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    threading.Thread(target=_end_with, args=(study_pid,), daemon=True).start()


def _end_with(study_pid: int) -> None:
    while os.getppid() == study_pid:
        time.sleep(1)
    os._exit(1)  # the running training's last checkpoint stays: the next start resumes it


def run_job(job: Job) -> str:
    """Train one job to the end (resuming its last checkpoint if there is one); returns its name."""
    from mixpath.training import train

    config = dict(job.config, out=str(job.folder))
    if (job.folder / "last.pt").is_file():
        config["resume"] = str(job.folder / "last.pt")
    else:
        config["force"] = True  # a folder without a checkpoint holds nothing worth keeping
    train(config, log=lambda line: print(f"[{job.name}] {line}", flush=True))
    return job.name


def run_jobs(jobs: list[Job], workers: int, log_dir: Path) -> None:
    """Every unfinished job, `workers` at a time, with a progress bar over epochs and the time left."""
    todo = [j for j in jobs if not j.done]
    total = sum(j.epochs for j in jobs)
    bar = tqdm(total=total, initial=total - sum(j.epochs for j in todo), unit="epoch", desc="trainings",
               dynamic_ncols=True, file=sys.stderr, smoothing=0)
    if not todo:
        bar.close()
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    start, finished = time.perf_counter(), 0
    # spawn, not fork: a fork of a process whose torch/OpenMP threads hold locks can hang forever.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start_worker,
                             initargs=(str(log_dir), os.getpid())) as pool:
        pending = {pool.submit(run_job, j): j for j in todo}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                try:
                    future.result()
                except Exception as e:  # a failed training stops the study, in one line
                    raise SystemExit(f"{job.name} failed: {e}\nfix it and run the study again: finished trainings "
                                     "are kept") from None
                finished += job.epochs
                bar.update(job.epochs)
                left = (time.perf_counter() - start) / finished * (bar.total - bar.n)
                bar.write(f"finished {job.name} ({bar.n}/{bar.total} epochs); about {left / 60:.0f} min left "
                          f"for the trainings")
    bar.close()


def rank_and_stats(o: Namespace, truth: Path) -> None:
    """`mixpath rank` and `mixpath stats` on each supernet, in this process (skipping those already written)."""
    from mixpath.cli import main as mixpath

    where = ["--device", o.device] + (["--data-dir", o.data_dir] if o.data_dir else [])
    for name in tqdm(SUPERNETS, desc="rank + stats", file=sys.stderr, dynamic_ncols=True):
        folder = str(o.out / "supernets" / name)
        ranking = ["--truth", str(truth), "--bootstrap", str(o.bootstrap)]
        for command, output, extra in (("rank", "ranking.json", ranking), ("stats", "stats.json", [])):
            target = o.out / command / name
            if not (target / output).is_file():
                status = mixpath([command, folder, *extra, "--out", str(target), "--force", *where])
                if status != 0:
                    raise SystemExit(f"mixpath {command} {folder} failed (exit {status}); fix it and run the "
                                     "study again: finished steps are kept")


def parse_args(argv=None) -> Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ranking_study", description=__doc__.split("\n\n")[0],
                                epilog="Run it again with the same options to continue a killed study.")
    p.add_argument("--data", choices=("digits", "cluttered-digits", "cifar10"), help="dataset (default "
                   f"{DEFAULTS['data']})")
    p.add_argument("--data-dir", metavar="D", help="--data cifar10: the cifar-10-batches-py folder")
    p.add_argument("--image-size", type=int, metavar="N")
    p.add_argument("--val-size", type=int, metavar="N",
                   help="held out for validation (default: the dataset's; cluttered-digits: digits)")
    p.add_argument("--width-mult", type=float, metavar="W")
    p.add_argument("--kernels", metavar="K,K")
    p.add_argument("--max-paths", type=int, metavar="M")
    p.add_argument("--supernet-epochs", type=int, metavar="N")
    p.add_argument("--retrain-epochs", type=int, metavar="N")
    p.add_argument("--archs", type=int, metavar="N", help="architectures to retrain and rank")
    p.add_argument("--seed-archs", type=int, metavar="N", help="how many of them get --seeds seeds")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds for those")
    p.add_argument("--seed", type=int, metavar="S", help="the study's seed (supernets, sample, first retrain)")
    p.add_argument("--bootstrap", type=int, metavar="N", help="bootstrap resamples for the tau intervals")
    p.add_argument("--workers", type=int, metavar="N", help="trainings in parallel (one thread each on CPU)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu (default) or cuda")
    p.add_argument("--backend", metavar="NAME", help="fused-op backend (default cpp on CPU; on cuda: triton)")
    p.add_argument("--out", type=Path, default=HERE / "out" / "ranking_study", metavar="DIR",
                   help="run folders and checkpoints (default benchmarks/out/ranking_study, not committed)")
    p.add_argument("--results", type=Path, default=HERE / "study", metavar="DIR",
                   help="CSVs, PNGs, study.json (default benchmarks/study)")
    p.add_argument("--doc", type=Path, default=HERE / "STUDY.md", metavar="FILE", help="the report to write")
    p.add_argument("--smoke", action="store_true", help="tiny budget for CI: checks the pipeline, not the numbers")
    o = p.parse_args(argv)
    defaults = {**DEFAULTS, **(SMOKE if o.smoke else {})}
    if o.device.startswith("cuda"):
        defaults["backend"] = "triton"
    for key, value in defaults.items():
        if getattr(o, key) is None:
            setattr(o, key, value)
    o.kernels = [int(k) for k in str(o.kernels).split(",")]
    if o.data == "cifar10":
        o.image_size = None if o.image_size == DEFAULTS["image_size"] else o.image_size
        if o.data_dir is None:
            p.error("--data cifar10 needs --data-dir D (the cifar-10-batches-py folder)")
    if not 1 <= o.seed_archs <= o.archs or o.seeds < 2 or o.archs < 4:
        p.error("use --archs >= 4, 1 <= --seed-archs <= --archs and --seeds >= 2 (the seed noise needs two)")
    return o


def main(argv=None) -> int:
    from mixpath.cli.common import user_errors
    from mixpath.ranking import collect_truth
    from mixpath.training import TrainConfig, build_space, load_splits

    o = parse_args(argv)
    wall = time.perf_counter()
    config = base_config(o)
    try:  # bad data or space options: one line, before anything is written
        splits = load_splits(TrainConfig(**{k: v for k, v in config.items()
                                            if k in ("data", "data_dir", "image_size", "val_size")}))
        space = build_space(TrainConfig(**config), splits)
        jobs, archs = plan_jobs(o, space)
    except (*user_errors(), ValueError) as e:  # ValueError: a sample larger than the space
        raise SystemExit(f"python -m benchmarks.ranking_study: error: {e}") from None
    o.out.mkdir(parents=True, exist_ok=True)
    started = o.out / "started.json"  # when the study first started: its wall time spans every session
    if not started.is_file():
        started.write_text(json.dumps({"time": time.time()}))
    print(f"{len(jobs)} trainings ({len(SUPERNETS)} supernets of {o.supernet_epochs} epochs, {len(jobs) - len(SUPERNETS)} "
          f"retrainings of {o.retrain_epochs}) in {o.out}, {o.workers} at a time", file=sys.stderr)
    run_jobs(jobs, o.workers, o.out / "logs")
    o.results.mkdir(parents=True, exist_ok=True)
    truth = o.results / "truth.csv"
    collect_truth([j.folder for j in jobs if j.kind == "retrain"], truth)
    rank_and_stats(o, truth)
    from .study_report import write_outputs  # imported last: plotting is not needed to train

    since_start = time.time() - json.loads(started.read_text())["time"]
    write_outputs(o, jobs, archs, splits, time.perf_counter() - wall, since_start)
    print(f"done: {o.doc}, {o.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
