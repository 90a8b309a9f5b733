"""CIFAR-10 from the python-pickle batches (cifar-10-batches-py), read directly, no torchvision.

train and val are a seeded, stratified split of the 50,000 images of
data_batch_1..5 (val: `val_size`, default 5,000); test is test_batch.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .sets import DataError, Splits, TensorImageSet, channel_stats, make_splits
from .split import held_out_count, stratified_split

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_VAL_SIZE = 5000


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold (dicts, lists, numpy arrays): pickle can run code otherwise."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR batches hold only numpy arrays")
        return super().find_class(module, name)


def _cifar_dir(data_dir: str | None) -> Path:
    hint = "the folder cifar-10-batches-py extracted from cifar-10-python.tar.gz (or its parent)"
    if data_dir is None:
        raise DataError(f"cifar10 needs data_dir: {hint}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"CIFAR-10 folder {root} does not exist: pass {hint}")
    nested = root / "cifar-10-batches-py"
    if not (root / CIFAR10_TRAIN_FILES[0]).exists() and nested.is_dir():
        root = nested
    for f in CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,):
        if not (root / f).is_file():
            raise DataError(f"CIFAR-10 folder {root} has no {f}: expected the python-pickle batches "
                            "data_batch_1..5 and test_batch (cifar-10-batches-py)")
    return root


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # a corrupt pickle can fail in many ways; all mean the same thing here
        raise DataError(f"CIFAR-10 batch {path} cannot be unpickled ({type(e).__name__}: {e}): "
                        "re-extract cifar-10-python.tar.gz") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"CIFAR-10 batch {path} lacks keys b'data' and b'labels' (found {keys}): "
                        "expected the python version of CIFAR-10 (cifar-10-python.tar.gz)")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"CIFAR-10 batch {path}: b'data' must be a uint8 array of shape (N, 3072), got {got}: "
                        "re-extract cifar-10-python.tar.gz")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DataError(f"CIFAR-10 batch {path}: b'labels' must be {len(data)} integers in 0..9, got "
                        f"{labels.dtype} {labels.shape}: re-extract cifar-10-python.tar.gz")
    bad = np.flatnonzero((labels < 0) | (labels >= len(CIFAR10_CLASSES)))
    if bad.size:
        raise DataError(f"CIFAR-10 batch {path}: label {labels[bad[0]]} at index {bad[0]} is not a class 0..9 "
                        f"({bad.size} such labels): re-extract cifar-10-python.tar.gz")
    return data, labels


def _read(root: Path, files) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_read_cifar_batch(root / f) for f in files]
    data = np.concatenate([d for d, _ in parts]).reshape(-1, 3, 32, 32)  # rows are R, G, B planes
    labels = np.concatenate([lab for _, lab in parts]).astype(np.int64)
    return torch.from_numpy(data), torch.from_numpy(labels)


def load_cifar10(data_dir: str | None, image_size: int | None, val_size: int | float | None, seed: int) -> Splits:
    # Resizing would change what the S1 space was designed for, so other sizes are refused rather than faked.
    if image_size not in (None, 32):
        raise DataError(f"cifar10 images are 32x32; image_size={image_size} is not supported (leave it unset)")
    root = _cifar_dir(data_dir)
    images, labels = _read(root, CIFAR10_TRAIN_FILES)
    test_images, test_labels = _read(root, (CIFAR10_TEST_FILE,))  # eager: a bad test_batch is found before training
    count = held_out_count(CIFAR10_VAL_SIZE if val_size is None else val_size, len(labels), "val_size")
    train, val = (torch.from_numpy(i) for i in stratified_split(labels.numpy(), [count], seed, "CIFAR-10 training"))
    mean, std = channel_stats(images[train])

    def subset(x, y, idx):
        return TensorImageSet(x[idx], y[idx], CIFAR10_CLASSES, mean, std, indices=idx)

    return make_splits("cifar10", subset(images, labels, train), subset(images, labels, val),
                       subset(test_images, test_labels, torch.arange(len(test_labels))))
