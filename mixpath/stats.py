"""MixPath's first claim, measured: features summed from j paths look like j times one path's features.

For each searchable layer and each path count j = 1..m, on a batch of training
images, `feature_stats` takes the features that enter the layer's Shadow BN and
compares the j-path sum S = f_1 + ... + f_j with the single-path features f_i of
the same paths:

- `cosine`: cos(S, j * f_i), averaged over the j paths, the images and every
  j-subset of the kernels (and every expansion rate): 1 when the paths point
  the same way;
- `norm_ratio`: |S| / mean_i |f_i|: j when the paths are aligned, about
  sqrt(j) when they are orthogonal (independent), 1 when they cancel.

What enters the Shadow BN: in the `mixpath` layout the sum of the j depthwise
convolutions; in the `official` layout the sum of the j per-path outputs
(depthwise, BN, ReLU6) after the 1x1 projection, which is linear, so the sum of
the projected per-path outputs. Per-image vectors are the flattened C*H*W
features. The inputs of layer i come from running the layers below it with one
fixed, seeded reference architecture, in train mode (batch statistics, as in
training) on a copy: the supernet itself is never modified.

`supernet_stats(run)` measures a trained run's supernet and the same supernet
freshly initialised (same space, layout, Shadow BN switch and seed: the weights
its training started from); `save_stats` writes stats.json and stats.png.
"""
from __future__ import annotations

import copy
import itertools
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .checkpoint import atomic_write, write_json
from .nn import SuperNet
from .nn.blocks import InvertedResidual
from .outdir import OutputFolder
from .space import Arch

__all__ = ["OUTPUTS", "path_features", "feature_stats", "initial_supernet", "supernet_stats", "plot_stats",
           "save_stats", "stats_table", "describe"]

OUTPUTS = ("stats.json", "stats.png")
STATES = ("initial", "trained")


def path_features(block: InvertedResidual, x: Tensor, kernels) -> list[Tensor]:
    """The per-path features that `block` sums into its Shadow BN's input, one (N, C, H, W) tensor per kernel."""
    hidden = block.expand(x)
    if block.layout == "mixpath":
        mixed = block.mixed
        return [F.conv2d(hidden, mixed.weight[f"k{k}"], stride=mixed.stride, padding=k // 2, groups=mixed.channels)
                for k in kernels]
    return [block.project(block.mixed.paths[f"k{k}"](hidden)) for k in kernels]


def _compare(paths: list[Tensor]) -> tuple[float, float]:
    """(mean cosine of the sum with each path, |sum| / mean |path|), averaged over images."""
    flat = torch.stack([p.flatten(1).double() for p in paths])  # (j, N, D)
    total = flat.sum(0)
    cosine = F.cosine_similarity(total.unsqueeze(0), flat, dim=2)  # scale-free: cos(S, j f_i) = cos(S, f_i)
    ratio = total.norm(dim=1) / flat.norm(dim=2).mean(0).clamp_min(1e-30)
    return cosine.mean().item(), ratio.mean().item()


def feature_stats(net: SuperNet, x: Tensor, reference: Arch | str) -> list[dict]:
    """One row per (layer, j): layer, j, cosine, norm_ratio, subsets (how many kernel subsets were averaged).

    `reference` is the architecture that carries the batch `x` through the layers
    below each measured one. `net` is left unchanged (a copy runs in train mode).
    """
    reference = net.check_arch(reference)
    work = copy.deepcopy(net).train()
    space = net.space
    rows = []
    with torch.no_grad():
        h = work._features_in(x)
        for i, (layer, choice) in enumerate(zip(work.layers, reference.layers)):
            per_j = {j: [] for j in range(1, space.max_paths + 1)}
            for t in space.expansions:
                single = dict(zip(space.kernel_sizes, path_features(layer[str(t)], h, space.kernel_sizes)))
                for j in per_j:
                    for subset in itertools.combinations(space.kernel_sizes, j):
                        per_j[j].append(_compare([single[k] for k in subset]))
            for j, values in per_j.items():
                rows.append({"layer": i, "j": j, "cosine": sum(c for c, _ in values) / len(values),
                             "norm_ratio": sum(r for _, r in values) / len(values), "subsets": len(values)})
            h = layer[str(choice.expansion)](h, choice.kernels)
    return rows


def initial_supernet(run) -> SuperNet:
    """`run`'s supernet as its training started: built and initialised under the run's seed (global RNG kept)."""
    c = run.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c["seed"])
        net = SuperNet(run.space, layout=c["layout"], shadow_bn=c["shadow_bn"])
    return net.to(run.device).set_backend(_backend_of(run.supernet)).eval()


def _backend_of(net: SuperNet) -> str | None:
    return next((m.mixed.backend for m in net.modules() if isinstance(m, InvertedResidual)
                 and m.layout == "mixpath"), None)


def supernet_stats(run, *, images: int = 256) -> dict:
    """stats.json's content for a TrainedRun: the rows of `feature_stats` at initialisation and after training.

    The batch: the first `images` training images of the run's fixed un-augmented
    shuffle (train split only). The reference architecture is drawn from the
    run's seed.
    """
    c = run.config
    if images < 2:
        raise ValueError(f"images {images} is too few: use at least 2 training images")
    images = min(images, len(run.splits.train))
    calibration, _ = run.batch_factories(batch_size=images, calib_batches=1)
    x, _ = next(iter(calibration()))
    reference = run.space.sample(random.Random(f"mixpath-stats-{c['seed']}"))
    return {"run": str(run.checkpoint.resolve()), "layout": c["layout"], "shadow_bn": c["shadow_bn"],
            "data": c["data"], "epoch": run.epoch, "images": len(x), "reference_arch": str(reference),
            "max_paths": run.space.max_paths, "kernel_sizes": list(run.space.kernel_sizes),
            "initial": feature_stats(initial_supernet(run), x, reference),
            "trained": feature_stats(run.supernet, x, reference)}


def stats_table(report: dict) -> str:
    """A plain-text table: one line per (layer, j), cosine and norm ratio at initialisation and trained."""
    lines = [f"{'layer':>5} {'j':>2} {'cos init':>9} {'cos trained':>11} {'ratio init':>10} {'ratio trained':>13}"]
    for a, b in zip(report["initial"], report["trained"]):
        lines.append(f"{a['layer']:>5} {a['j']:>2} {a['cosine']:>9.3f} {b['cosine']:>11.3f} "
                     f"{a['norm_ratio']:>10.3f} {b['norm_ratio']:>13.3f}")
    return "\n".join(lines)


def plot_stats(reports: dict[str, dict], path) -> Path:
    """Cosine and norm ratio per layer, a line per j, dashed at initialisation; one row of panels per report."""
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend and global state alone

    fig = Figure(figsize=(12, 3.6 * len(reports)))
    axes = fig.subplots(len(reports), 2, squeeze=False)
    for (title, report), (ax_cos, ax_ratio) in zip(reports.items(), axes):
        for j in range(1, report["max_paths"] + 1):
            for state, style in zip(STATES, ("--", "-")):
                rows = [r for r in report[state] if r["j"] == j]
                layers = [r["layer"] for r in rows]
                color = f"C{j - 1}"
                ax_cos.plot(layers, [r["cosine"] for r in rows], style, color=color, marker="o",
                            label=f"j={j} {state}")
                ax_ratio.plot(layers, [r["norm_ratio"] for r in rows], style, color=color, marker="o",
                              label=f"j={j} {state}")
            ax_ratio.axhline(j, color=f"C{j - 1}", lw=0.6, alpha=0.5)
            ax_ratio.axhline(j ** 0.5, color=f"C{j - 1}", lw=0.6, ls=":", alpha=0.7)
        ax_cos.set_title(f"{title}\ncos(j-path sum, j x single path)", fontsize=9)
        ax_ratio.set_title(f"{title}\n|sum| / mean |single| (thin lines: j solid, sqrt j dotted)", fontsize=9)
        for ax in (ax_cos, ax_ratio):
            ax.set_xlabel("searchable layer")
            ax.set_xticks(sorted({r["layer"] for r in report[STATES[0]]}))
            ax.grid(alpha=0.3)
        ax_cos.set_ylim(top=1.02)
        ax_cos.legend(fontsize=7, ncol=2, title="dashed: initial, solid: trained", title_fontsize=7)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    return path


def save_stats(report: dict, out, *, force: bool = False) -> list[Path]:
    """Write stats.json and stats.png into the folder `out` (refused if they exist, unless `force`)."""
    with OutputFolder(out) as folder:
        folder.claim(OUTPUTS, force=force, hint="pass --force to replace them")
        json_path = folder.path / OUTPUTS[0]
        write_json(json_path, report)
        png_path = plot_stats({describe(report): report}, folder.path / OUTPUTS[1])
    return [json_path, png_path]


def describe(report: dict) -> str:
    """'mixpath layout, shadow BN on': which supernet a report measured."""
    return f"{report['layout']} layout, shadow BN {'on' if report['shadow_bn'] else 'off'}"
