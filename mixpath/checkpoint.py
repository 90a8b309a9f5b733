"""Training checkpoints: atomic writes and validated loads.

A checkpoint is a dict saved with torch.save: the format tag and version, the
completed epoch count, the run's config, and the state needed to continue
exactly (model, optimizer, scheduler, GradScaler, the architecture sampler's
`random.Random` state, torch's RNG states, the metrics history). Loading uses
`weights_only=True`, so a checkpoint from elsewhere cannot run code.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

__all__ = ["CheckpointError", "FORMAT", "VERSION", "READABLE_VERSIONS", "REQUIRED_KEYS", "atomic_path", "atomic_write",
           "write_json", "json_ready", "save_checkpoint", "load_checkpoint", "config_differences"]

FORMAT = "mixpath-supernet-training"
# 2: one Parameter per Shadow BN row. Version 1 (rows stacked in one Parameter) still loads for
# scoring and export (ShadowBatchNorm2d converts its state), but its optimizer state cannot continue.
VERSION = 2
READABLE_VERSIONS = (1, 2)
REQUIRED_KEYS = ("format", "version", "epoch", "config", "model", "optimizer", "scheduler", "scaler", "sampler",
                 "torch_rng", "history")


# Read once: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, from another program or version, or from another configuration."""


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path` for the block to write (by a writer that wants a path); renamed over `path`
    when the block succeeds, removed when it raises. Readers see the old file or the complete new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private (0600); results follow the user's umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # Make the rename itself durable; not every filesystem lets a directory be opened.
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write(path: str | os.PathLike, write: Callable, binary: bool = True) -> None:
    """Write `path` via `write(file)` into a temporary file beside it, fsync, then rename over `path`.

    Readers see the old file or the complete new one, never a partial write; if
    `write` raises, the old file stays and the temporary file is removed.
    """
    with atomic_path(path) as tmp, open(tmp, "wb" if binary else "w") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    """`obj` as JSON text (a final newline), written atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=indent) + "\n"), binary=False)


def json_ready(value):
    """Lists, not tuples, so configs compare equal after a round trip through a checkpoint or JSON."""
    return json.loads(json.dumps(value))


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Atomically save `state` (REQUIRED_KEYS other than format/version) as a checkpoint."""
    missing = [k for k in REQUIRED_KEYS if k not in state and k not in ("format", "version")]
    if missing:
        raise ValueError(f"checkpoint state lacks {', '.join(missing)}")
    payload = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and check a checkpoint saved by `save_checkpoint`; CheckpointError (one line) on any problem.

    A directory means its `last.pt`. Tensors are loaded onto the CPU.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass the last.pt of an earlier run to --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, pickle errors: all mean the file is unusable
        # torch's own text for these is a paragraph about weights_only defaults: the type says enough
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (torch.load: {type(e).__name__}); "
                              "resume from an intact copy or start a fresh run") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mixpath training checkpoint (no {FORMAT!r} format tag); "
                              "pass the last.pt written by train.py")
    if state.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint {path} has format version {state.get('version')!r}; this mixpath "
                              f"reads versions {', '.join(map(str, READABLE_VERSIONS))}: use the mixpath that "
                              "wrote it")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing or not _plain(state["config"]) or not isinstance(state["epoch"], int) or state["epoch"] < 0:
        what = f"lacks {', '.join(missing)}" if missing else "has a malformed config or epoch"
        raise CheckpointError(f"checkpoint {path} {what}; it is damaged: resume from an intact copy")
    state["path"] = str(path)
    return state


def _plain(config) -> bool:
    """A config is a dict of JSON values, as training writes it."""
    try:
        return isinstance(config, dict) and json_ready(config) == config
    except (TypeError, ValueError):
        return False


def config_differences(saved: dict, current: dict, keys) -> list[tuple[str, object, object]]:
    """(key, saved value, current value) for each of `keys` where the two configs differ."""
    return [(k, saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)]
