"""Opening a trained supernet: `open_run(RUN)` gives its space, weights, data splits and scorers.

RUN is a run folder of `mixpath train` or a checkpoint path. What `mixpath search`,
`rank`, `export` and `stats` share; as usable from Python as from the command line:

    run = open_run("runs/20261201-101500")
    score = run.scorer()            # arch -> validation top-1 after BN recalibration, on a copy
    score("6:3,5|3:7|...")
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import CheckpointError, load_checkpoint
from .data import Splits
from .evaluate import score_arch
from .nn import SuperNet, standalone
from .ops import backend_status, default_backend
from .space import Arch, SearchSpace

__all__ = ["TrainedRun", "open_retrained", "open_run"]


@dataclass
class TrainedRun:
    """A trained supernet with what it was trained on. `supernet` is in eval mode and is never modified."""

    checkpoint: Path
    config: dict  # the run's TrainConfig, as saved
    space: SearchSpace
    splits: Splits
    supernet: SuperNet
    device: torch.device
    epoch: int

    @property
    def folder(self) -> Path:
        return self.checkpoint.parent

    def batch_factories(self, batch_size: int | None = None, calib_batches: int | None = None):
        """(calibration, validation) batch factories on the run's splits (train and val only)."""
        from .training import split_batches

        c = self.config
        return split_batches(self.splits, batch_size=batch_size or c["batch_size"],
                             calib_batches=calib_batches or c["calib_batches"], seed=c["seed"],
                             device=self.device, channels_last=bool(c.get("channels_last")),
                             workers=c.get("workers"))

    def scorer(self, *, batch_size: int | None = None, calib_batches: int | None = None
               ) -> Callable[[Arch | str], float]:
        """`score(arch)`: validation top-1 of the subnet after BN recalibration on training batches (a copy)."""
        calibration, validation = self.batch_factories(batch_size, calib_batches)
        return lambda arch: score_arch(self.supernet, arch, calibration, validation)

    def describe(self) -> str:
        c = self.config
        return (f"supernet {self.checkpoint} (epoch {self.epoch}/{c['epochs']}, {c['layout']} layout, shadow BN "
                f"{'on' if c['shadow_bn'] else 'off'}, data {c['data']})")


def _open(run, device, backend, data_dir):
    """(checkpoint, saved config, device, backend name, splits, space) of RUN, on this machine."""
    from .training import TrainConfig, build_space, check_device, choose_backend, load_splits

    ckpt = load_checkpoint(run)
    saved = dict(ckpt["config"])
    if data_dir is not None:
        saved["data_dir"] = data_dir
    if device is not None:
        saved["device"] = str(device)
    if backend is not None:
        saved["backend"], saved["fused"] = backend, False
    # The saved device may be absent here (a GPU run opened on a laptop): fall back to what exists.
    if device is None and saved["device"].startswith("cuda") and not torch.cuda.is_available():
        saved["device"] = "cpu"
    known = TrainConfig.__dataclass_fields__
    c = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    dev = check_device(c.device)
    if backend is None and (c.fused or backend_status(dev).get(c.backend or "merged") != "available"):
        name = default_backend(dev)  # the fastest here: the run's own may not exist on this machine
    else:
        name, _ = choose_backend(c, dev)
    splits = load_splits(c)
    return ckpt, saved, dev, name, splits, build_space(c, splits)


def _load_weights(net: torch.nn.Module, ckpt: dict, dev, channels_last: bool, backend: str):
    try:
        net.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, ValueError) as e:
        detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {ckpt['path']} does not fit its own configuration ({detail}); "
                              "it is damaged") from None
    net = net.to(dev).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net.set_backend(backend)


def open_run(run: str | Path, *, device: str | torch.device | None = None, backend: str | None = None,
             data_dir: str | None = None) -> TrainedRun:
    """Load RUN's supernet and data. `device` and `backend` default to the run's own; `data_dir` overrides
    where its dataset lives (a run trained on another machine). Raises CheckpointError, ConfigError, DataError."""
    ckpt, saved, dev, backend, splits, space = _open(run, device, backend, data_dir)
    if saved.get("arch") is not None:
        raise CheckpointError(f"{ckpt['path']} is a stand-alone retraining of {saved['arch']}, not a supernet: "
                              "pass the folder of a `mixpath train` run")
    net = _load_weights(SuperNet(space, layout=saved["layout"], shadow_bn=saved["shadow_bn"]), ckpt, dev,
                        bool(saved.get("channels_last")), backend)
    return TrainedRun(Path(ckpt["path"]), saved, space, splits, net, dev, ckpt["epoch"])


def open_retrained(run: str | Path, *, device: str | torch.device | None = None, data_dir: str | None = None):
    """(network, splits, space, config) of a `mixpath retrain` RUN: the stand-alone SubNet in eval mode."""
    ckpt, saved, dev, backend, splits, space = _open(run, device, None, data_dir)
    if saved.get("arch") is None:
        raise CheckpointError(f"{ckpt['path']} is a supernet run, not a retraining: open it with open_run")
    net = _load_weights(standalone(space, saved["arch"], layout=saved["layout"]), ckpt, dev,
                        bool(saved.get("channels_last")), backend)
    return net, splits, space, saved
