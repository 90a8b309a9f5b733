"""scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), upsampled, in three splits.

The splits are stratified and seeded: test 360 images (20%), val `val_size`
of the remaining 1437 (default 360, so 60/20/20: 1077 / 360 / 360).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .sets import Splits, TensorImageSet, channel_stats, make_splits
from .split import held_out_count, stratified_split

DIGITS_TEST_SIZE = 360
DIGITS_VAL_SIZE = 360
DIGIT_CLASSES = tuple(str(c) for c in range(10))


@lru_cache(maxsize=1)
def _bundled() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def digit_labels() -> np.ndarray:
    return _bundled()[1]


def upsampled_digits(size: int) -> torch.Tensor:
    """All 1797 digits as uint8 (N, size, size) greyscale, 0..255, bilinear from the 0..16 originals."""
    x = torch.from_numpy(_bundled()[0]).float().mul_(255.0 / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)[:, 0]


def digit_split_indices(val_size: int | float | None, seed: int) -> list[np.ndarray]:
    """Indices (into sklearn's order) of the train, val and test digits; disjoint, stratified, seeded."""
    labels = digit_labels()
    val = held_out_count(DIGITS_VAL_SIZE if val_size is None else val_size, len(labels) - DIGITS_TEST_SIZE,
                         "val_size")
    train, test, val = stratified_split(labels, [DIGITS_TEST_SIZE, val], seed, "digits")
    return [train, val, test]


def grey_sets(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> list[TensorImageSet]:
    """(images uint8 (N, H, W), labels, source indices) per split -> RGB sets normalised by the first (train)."""
    rgb = [images[:, None].expand(-1, 3, -1, -1).contiguous() for images, _, _ in parts]
    mean, std = channel_stats(rgb[0])
    return [TensorImageSet(x, labels.long(), DIGIT_CLASSES, mean, std, indices=indices)
            for x, (_, labels, indices) in zip(rgb, parts)]


def load_digits(image_size: int, val_size: int | float | None, seed: int) -> Splits:
    images, labels = upsampled_digits(image_size), torch.from_numpy(digit_labels())
    parts = [torch.from_numpy(idx) for idx in digit_split_indices(val_size, seed)]
    return make_splits("digits", *grey_sets([(images[idx], labels[idx], idx) for idx in parts]))
