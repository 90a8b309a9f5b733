"""Datasets for supernet training, search and retraining, each in train / val / test splits.

`load_data` returns `Splits`; `batches` turns one split into normalised (x, y)
batches on a device. train trains; val is for everything that chooses
(monitoring, BN calibration, search, ranking); test is read only for a retrained
architecture's final accuracy. Every split is seeded and stratified, and the
same seed always gives the same split. Normalisation comes from train alone.

| name | source | train / val / test |
|---|---|---|
| `digits` | sklearn's bundled 8x8 digits, upsampled (16 px) | 1077 / 360 / 360 of the 1797 |
| `cluttered-digits` | those digits placed among fragments of others (32 px), train placed anew every augmented epoch | 3 placements of each digit split |
| `cifar10` | the python-pickle batches | 50,000 training images less val (5,000) / test_batch |
| `folder` | `DIR/train/<class>/*`, optional `DIR/val/<class>/*` | val held out of train/; test val/, else held out |
"""
from __future__ import annotations

from .batches import Batches, batches, epoch_generator, num_batches
from .cifar import load_cifar10
from .clutter import CLUTTER_SIZE, load_clutter, place_digits
from .digits import load_digits
from .folder import check_images, load_folder
from .sets import IMAGENET_MEAN, IMAGENET_STD, DataError, FolderImageSet, ImageSet, Splits, TensorImageSet

__all__ = ["DataError", "ImageSet", "TensorImageSet", "FolderImageSet", "Splits", "Batches", "DATASETS", "load_data",
           "batches", "num_batches", "epoch_generator", "describe", "check_images", "place_digits", "IMAGENET_MEAN",
           "IMAGENET_STD"]

DATASETS = ("digits", "cluttered-digits", "cifar10", "folder")


def load_data(name: str, data_dir: str | None = None, *, image_size: int | None = None,
              val_size: int | float | None = None, seed: int = 0, workers: int | None = None) -> Splits:
    """Load one of DATASETS; raises DataError on any problem, before any training could start.

    val_size: images held out for val, a count or a fraction of the pool it is
    taken from (default per dataset: digits 360, cifar10 5,000, folder 50 per
    class, at most a fifth). seed: the split (and clutter placement) seed; keep
    it fixed across supernet training, search and retraining so all agree on val.
    workers: threads that open folder images to check them (default 4 per CPU).
    """
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be positive, got {image_size}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    if name == "digits":
        return load_digits(image_size or 16, val_size, seed)
    if name == "cluttered-digits":
        return load_clutter(image_size or CLUTTER_SIZE, val_size, seed)
    if name == "cifar10":
        return load_cifar10(data_dir, image_size, val_size, seed)
    if name == "folder":
        return load_folder(data_dir, image_size or 224, val_size, seed, workers)
    raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")


def describe(splits: Splits) -> str:
    """One line for logs."""
    def fmt(values):
        return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"

    note = f" ({splits.note})" if splits.note else ""
    return (f"{splits.name or 'data'}: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test "
            f"images{note}, {splits.num_classes} classes, "
            f"{splits.in_channels}x{splits.image_size}x{splits.image_size}, "
            f"mean {fmt(splits.mean)} std {fmt(splits.std)}")
