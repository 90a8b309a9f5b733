"""Cluttered digits: a harder bundled dataset on which kernel size and receptive field matter.

As cluttered MNIST: each of sklearn's digits, upsampled to 3/8 of the canvas
(12 px on the default 32x32 canvas), is placed `copies` times at seeded random
positions on a black canvas strewn with `fragments` random crops (half the
digit's side) of OTHER digits of the same split, composited by pixel-wise
maximum. train/val/test come from the digits' own splits (digits.py), so no
digit, whole or as clutter, appears in two splits. Deterministic for a seed.

Augmentation (the dataset's recipe) is a fresh clutter: every augmented epoch
places each training digit anew among new fragments, drawn from the epoch's
generator, so a network cannot memorise the clutter and the supply of training
canvases is unlimited at the cost of one epoch. No crop, flip or Cutout: the
position is already random and a flip changes a digit. val and test stay fixed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .digits import digit_labels, digit_split_indices, grey_sets, upsampled_digits
from .sets import DataError, Splits, TensorImageSet, make_splits

CLUTTER_SIZE = 32
CLUTTER_COPIES = 3
CLUTTER_FRAGMENTS = 6
CLUTTER_MIN_SIZE = 16  # below this the digit would be smaller than its 8x8 original


@dataclass
class Placements:
    images: np.ndarray  # (M, S, S) uint8 canvases
    digit: np.ndarray  # (M,) which digit each canvas shows (index into the digits given)
    position: np.ndarray  # (M, 2) its top-left (row, column) on the canvas
    fragment_source: np.ndarray  # (M, fragments) which digit each clutter fragment was cut from


def place_digits(digits: np.ndarray, copies: int, canvas: int, fragments: int,
                 rng: np.random.Generator) -> Placements:
    """Each of `digits` (N, d, d) uint8 `copies` times on a cluttered `canvas` x `canvas`, in digit order."""
    n, d = len(digits), digits.shape[-1]
    if n < 2 or canvas < d:
        raise DataError(f"cluttering needs at least 2 digits no larger than the {canvas}px canvas, got {n} of {d}px")
    f = d // 2
    digit = np.repeat(np.arange(n), copies)
    m = len(digit)
    position = rng.integers(0, canvas - d + 1, (m, 2))
    # From the other n - 1 digits: draw below n - 1, then skip over the canvas's own digit.
    source = rng.integers(0, n - 1, (m, fragments))
    source += source >= digit[:, None]
    crop = rng.integers(0, d - f + 1, (m, fragments, 2))
    at = rng.integers(0, canvas - f + 1, (m, fragments, 2))
    images = np.zeros((m, canvas, canvas), np.uint8)

    def paste(which, top_left, pixels, side):
        # Pixel-wise maximum, unbuffered (np.maximum.at), so overlapping pastes on one canvas all count.
        ar = np.arange(side)
        rows = top_left[..., 0, None, None] + ar[:, None]
        cols = top_left[..., 1, None, None] + ar[None, :]
        np.maximum.at(images, (which[..., None, None], rows, cols), pixels)

    ar = np.arange(f)
    pieces = digits[source[..., None, None], crop[..., 0, None, None] + ar[:, None], crop[..., 1, None, None] + ar]
    paste(np.broadcast_to(np.arange(m)[:, None], source.shape), at, pieces, f)
    paste(np.arange(m), position, digits[digit], d)
    return Placements(images, digit, position, source)


@dataclass(eq=False)
class ClutteredImageSet(TensorImageSet):
    """A cluttered split that can place its digits afresh: the digits, in label order, and how to clutter them."""

    digits: np.ndarray | None = None  # (n, d, d) uint8, the split's digits; canvas i shows digits[i // copies]
    copies: int = CLUTTER_COPIES
    fragments: int = CLUTTER_FRAGMENTS

    def epoch_images(self, gen: torch.Generator, device: torch.device) -> torch.Tensor:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))
        fresh = place_digits(self.digits, self.copies, self.image_size, self.fragments, rng).images
        return torch.from_numpy(fresh)[:, None].expand(-1, 3, -1, -1).to(device)


def load_clutter(image_size: int, val_size: int | float | None, seed: int, copies: int = CLUTTER_COPIES,
                 fragments: int = CLUTTER_FRAGMENTS) -> Splits:
    if image_size < CLUTTER_MIN_SIZE:
        raise DataError(f"cluttered-digits needs image_size of at least {CLUTTER_MIN_SIZE}, got {image_size}")
    digit_side = round(image_size * 3 / 8)
    digits, labels = upsampled_digits(digit_side).numpy(), digit_labels()
    parts, split_digits = [], digit_split_indices(val_size, seed)
    for k, idx in enumerate(split_digits):
        p = place_digits(digits[idx], copies, image_size, fragments, np.random.default_rng([seed, k]))
        parts.append((torch.from_numpy(p.images), torch.from_numpy(labels[idx][p.digit]),
                      torch.from_numpy(idx[p.digit])))
    sets = grey_sets(parts)
    train = sets[0]
    sets[0] = ClutteredImageSet(train.images, train.labels, train.classes, train.mean, train.std, pad=0, cutout=0,
                                flip=False, indices=train.indices, digits=digits[split_digits[0]], copies=copies,
                                fragments=fragments)
    note = (f"{copies} placements per digit ({digit_side}px) among {fragments} fragments of other digits "
            "of the same split; augmentation places the training digits afresh every epoch")
    return make_splits("cluttered-digits", *sets, note=note)
