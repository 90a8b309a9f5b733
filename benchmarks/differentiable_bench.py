"""Differentiable search: the speed of its training step, and the small study of benchmarks/DIFFERENTIABLE.md.

    python -m benchmarks.differentiable_bench speed [--device cuda]   # fused vs separate convs, one step
    python -m benchmarks.differentiable_bench study --out DIR         # derive, retrain, compare (minutes)

speed: one bi-level step of `DifferentiableNet` (a forward and backward for the
logits, one for the weights, both optimizer steps) with every depthwise layer
computed as ONE merged conv by the fused op, against the same step computed as
a literal weighted sum of separate convs (the `reference` backend: one conv per
kernel, the way DARTS implementations compute a mixed edge).

study: on digits, for a few seeds, differentiable search with and without the
confident learning rate and with and without partial channels, and one-shot
training + NSGA-II at the same number of epochs; each derived (or front's most
accurate) architecture retrained stand-alone; validation accuracy chooses,
test accuracy is read once per retrained network. Every run goes into its own
folder under --out, so an interrupted study resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from mixpath.checkpoint import atomic_write, write_json
from mixpath.differentiable import ArchitectureLogits, DifferentiableNet, train_differentiable
from mixpath.nn import SuperNet
from mixpath.ops import available_backends, default_backend
from mixpath.runs import open_run
from mixpath.search import nsga2_search
from mixpath.space import get_space
from mixpath.training import retrain, train

from .timing import measure

# -- speed --------------------------------------------------------------------

# (name, space, batch, image side): the tiny digits space, and the CIFAR space at a reduced width.
SPEED_CASES = {"cpu": [("tiny k3579", "tiny", 1.0, 32, 16), ("cifar k3579 w0.5", "cifar", 0.5, 16, 32)],
               "cuda": [("tiny k3579", "tiny", 1.0, 128, 16), ("cifar k3579", "cifar", 1.0, 64, 32)]}


class SearchStep:
    """One bi-level step of a differentiable network on fixed random batches."""

    def __init__(self, space_name: str, width: float, batch: int, side: int, device, backend: str | None,
                 literal: bool, partial_channels: int = 1):
        space = get_space(space_name, max_paths=4, kernel_sizes=(3, 5, 7, 9), expansions=(3, 6), width_mult=width,
                          num_classes=10, input_size=side)
        torch.manual_seed(0)
        self.supernet = SuperNet(space, shadow_bn=False).to(device).set_backend(backend)
        self.logits = ArchitectureLogits(space).to(device)
        self.net = DifferentiableNet(self.supernet, self.logits, partial_channels, literal=literal).train()
        self.weights, self.arch = list(self.supernet.parameters()), list(self.logits.parameters())
        self.sgd = torch.optim.SGD(self.weights, lr=0.01, momentum=0.9)
        self.adam = torch.optim.Adam(self.arch, lr=3e-4, betas=(0.5, 0.999))
        g = torch.Generator().manual_seed(1)
        self.x = [torch.randn(batch, 3, side, side, generator=g).to(device) for _ in range(2)]
        self.y = [torch.randint(0, 10, (batch,), generator=g).to(device) for _ in range(2)]

    def __call__(self) -> torch.Tensor:
        for (x, y), params, opt in (((self.x[0], self.y[0]), self.arch, self.adam),
                                    ((self.x[1], self.y[1]), self.weights, self.sgd)):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.net(x), y)
            loss.backward(inputs=params)
            opt.step()
        return loss.detach()


def speed(device: str, budget_s: float = 3.0) -> list[dict]:
    rows = []
    for name, space, width, batch, side in SPEED_CASES[torch.device(device).type]:
        backends = list(dict.fromkeys([default_backend(device), "merged"]))  # the fastest fused one, and merged
        if torch.device(device).type == "cuda" and "triton" in available_backends(device):
            backends.append("triton")
        timings = {}
        for label, backend, literal in [("separate convs", "reference", True)] + [(b, b, False) for b in backends]:
            step = SearchStep(space, width, batch, side, device, backend, literal)
            t = measure(step, device, warmup=2, min_rounds=3, max_rounds=30, budget_s=budget_s)
            timings[label] = t
            rows.append(dict(case=name, device=device, batch=batch, method=label, median_ms=t.median_s * 1e3,
                             min_ms=t.min_s * 1e3, rounds=t.rounds))
        base = timings["separate convs"].median_s
        for row in rows[-len(timings):]:
            row["speedup"] = base / (row["median_ms"] / 1e3)
    return rows


def speed_table(rows: list[dict]) -> str:
    lines = ["| case | device | batch | method | median ms | min ms | speed-up vs separate convs |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['device']} | {r['batch']} | {r['method']} | {r['median_ms']:.1f} | "
              f"{r['min_ms']:.1f} | {r['speedup']:.2f}x |" for r in rows]
    return "\n".join(lines)


# -- study --------------------------------------------------------------------

STUDY = dict(data="digits", max_paths=2, kernels=[3, 5, 7], expansions=[3, 6], width_mult=0.5, epochs=8,
             threads=1)
# Digits gives ~16 logit steps an epoch where BNAS-v2 takes ~390: its 3e-4 would leave the logits where they
# started, so the study scales the architecture rate up (a flag like every other constant).
STUDY_ARCH_LR = 0.03
VARIANTS = {"clr+pc2": dict(confident_lr=True, partial_channels=2),
            "clr": dict(confident_lr=True, partial_channels=1),
            "const+pc2": dict(confident_lr=False, partial_channels=2),
            "const": dict(confident_lr=False, partial_channels=1)}
NSGA = dict(population=16, generations=8)


def _quiet(_line):
    pass


def _finished(folder: Path) -> dict | None:
    path = folder / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _run(folder: Path, job, options: dict) -> dict:
    """The summary of the run in `folder`: read if finished, else resumed or started."""
    done = _finished(folder)
    if done is not None:
        return done
    if (folder / "last.pt").is_file():
        return job({"resume": str(folder / "last.pt")}, log=_quiet)
    return job({**options, "out": str(folder)}, log=_quiet)


def _one_shot_arch(root: Path, seed: int) -> tuple[str, float]:
    """One-shot supernet + NSGA-II (acc, FLOPs): the front's most accurate architecture and its supernet score."""
    folder = root / f"oneshot-s{seed}"
    _run(folder / "supernet", train, {**STUDY, "seed": seed, "eval_archs": 2})
    front_file = folder / "front.json"
    if not front_file.is_file():
        run = open_run(folder / "supernet", device="cpu")
        result = nsga2_search(run.space, run.scorer(), ("acc", "flops"), seed=seed, progress=False, **NSGA)
        front = sorted((c.to_dict() for c in result.front), key=lambda c: -c["acc"])
        write_json(front_file, front, indent=1)
    best = json.loads(front_file.read_text())[0]
    return best["arch"], best["acc"]


def study(root: Path, seeds: list[int], log=print) -> list[dict]:
    rows = []
    for seed in seeds:
        jobs = []
        for name, variant in VARIANTS.items():
            s = _run(root / f"{name}-s{seed}", train_differentiable,
                     {**STUDY, **variant, "seed": seed, "arch_lr": STUDY_ARCH_LR})
            jobs.append((name, s["derived_arch"], s["val_acc"],
                         dict(mixed_val_acc=s["mixed_val_acc"], kernel_entropy=statistics.mean(s["kernel_entropy"]),
                              smallest_kernel_share=statistics.mean(s["smallest_kernel_share"]),
                              search_seconds=s["seconds"])))
        arch, acc = _one_shot_arch(root, seed)
        jobs.append(("one-shot+NSGA-II", arch, acc, {}))
        for method, arch, supernet_acc, extra in jobs:
            r = _run(root / "retrain" / f"{method}-s{seed}", retrain,
                     {**STUDY, "arch": arch, "seed": seed})
            rows.append(dict(method=method, seed=seed, arch=arch, supernet_val_acc=supernet_acc,
                             retrained_val_acc=r["val_acc"], test_acc=r["test_acc"], mflops=r["flops"] / 1e6,
                             **extra))
            log(f"{method} seed {seed}: {arch}  retrained val {r['val_acc']:.4f} test {r['test_acc']:.4f}  "
                f"{r['flops'] / 1e6:.2f} MFLOPs")
    return rows


def study_table(rows: list[dict]) -> str:
    lines = ["| method | seed | derived arch | supernet val | retrained val | retrained test | MFLOPs | mean kernel "
             "entropy | mean smallest-kernel share |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        entropy = f"{r['kernel_entropy']:.3f}" if "kernel_entropy" in r else "-"
        share = f"{r['smallest_kernel_share']:.3f}" if "smallest_kernel_share" in r else "-"
        lines.append(f"| {r['method']} | {r['seed']} | `{r['arch']}` | {r['supernet_val_acc']:.3f} | "
                     f"{r['retrained_val_acc']:.3f} | {r['test_acc']:.3f} | {r['mflops']:.2f} | {entropy} | {share} |")
    lines += ["", "| method | mean retrained val | mean retrained test | mean MFLOPs |", "|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == method]
        lines.append(f"| {method} | {statistics.mean(r['retrained_val_acc'] for r in sel):.4f} | "
                     f"{statistics.mean(r['test_acc'] for r in sel):.4f} | "
                     f"{statistics.mean(r['mflops'] for r in sel):.2f} |")
    return "\n".join(lines)


def study_figure(rows: list[dict], path: Path) -> None:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == method]
        ax.scatter([r["mflops"] for r in sel], [r["test_acc"] for r in sel], label=method,
                   marker="*" if method.startswith("one-shot") else "o", s=80 if method.startswith("one") else 36)
    ax.set_xlabel("MFLOPs (multiply-adds)")
    ax.set_ylabel("retrained test accuracy")
    ax.set_title("digits, tiny space (k 3,5,7; m 2): derived architectures retrained", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.differentiable_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--device", default="cpu")
    s.add_argument("--budget", type=float, default=3.0, help="seconds of timed rounds per method")
    t = sub.add_parser("study")
    t.add_argument("--out", required=True, type=Path)
    t.add_argument("--seeds", default="0,1,2")
    args = p.parse_args(argv)
    if args.what == "speed":
        print(speed_table(speed(args.device, args.budget)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rows = study(args.out, [int(v) for v in args.seeds.split(",")])
    write_json(args.out / "study.json", rows, indent=1)
    study_figure(rows, args.out / "study.png")
    print(study_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
