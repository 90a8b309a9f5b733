"""Seeded, stratified hold-outs: the same seed always holds out the same images."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .sets import DataError


def held_out_count(size: int | float, pool: int, what: str) -> int:
    """`size` images of `pool` as a count: an int is a count, a float in (0, 1) a fraction (rounded up)."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise DataError(f"{what} must be an image count or a fraction in (0, 1), got {size!r}")
    if isinstance(size, float):
        if not 0.0 < size < 1.0:
            raise DataError(f"{what} as a fraction must be between 0 and 1 (exclusive), got {size}")
        size = math.ceil(size * pool - 1e-9)  # 0.2 * 15 is 3.0000000000000004: still 3
    if not 0 < size < pool:
        raise DataError(f"{what}={size} must hold out between 1 and {pool - 1} of the {pool} images: "
                        "pass a smaller count or fraction")
    return size


def stratified_split(labels: np.ndarray, counts: Sequence[int], seed: int, what: str) -> list[np.ndarray]:
    """Indices of the rest and of one held-out part per count, each part with the class proportions of
    `labels`; all sorted, so every split keeps the source's order. Deterministic for a seed."""
    from sklearn.model_selection import train_test_split

    rest, parts = np.arange(len(labels)), []
    rng = np.random.RandomState(seed)  # one stream for all parts: part k depends only on seed and counts[:k+1]
    for count in counts:
        try:
            rest, part = train_test_split(rest, test_size=count, random_state=rng, stratify=labels[rest])
        except ValueError as e:
            raise DataError(f"cannot hold out {list(counts)} of {len(labels)} {what} images stratified by class "
                            f"({e}): add images or hold out fewer") from None
        parts.append(np.sort(part))
    return [np.sort(rest), *parts]
