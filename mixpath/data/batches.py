"""Normalised (x, y) batches from an ImageSet, with the release's augmentation, deterministic per (seed, epoch).

- `TensorImageSet`: all images in memory as uint8. Training batches are
  augmented as whole batches with tensor ops on the device, in the release's
  order: random crop with zero padding, horizontal flip, normalise, Cutout
  (which zeroes a square of the *normalised* image, i.e. paints it the dataset
  mean, as the release's Cutout does after Normalize). Padding and Cutout scale
  with the image: `image_size // 8` and `image_size // 2` (4 and 16 at 32 px);
  set `pad` / `cutout` / `flip` on the set to change them (0 / False = off). A
  set may start each augmented epoch from fresh images (`epoch_images`: the
  cluttered digits are placed anew).
- `FolderImageSet`: paths only, decoded by PIL in DataLoader workers.
  Training: random-resized crop (scale 0.08..1, ratio 3/4..4/3) + flip;
  otherwise a centre crop of 0.875 of the shorter side (256 -> 224 style).

Every random choice of an epoch comes from one torch.Generator seeded from
(seed, epoch) alone and drawn on the CPU: the same choices on every device and
worker count, identical batches when a run resumes at an epoch boundary, and
no RNG state to checkpoint.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from .folder import FolderReader, collate
from .sets import DataError, FolderImageSet, ImageSet, TensorImageSet


class Batches:
    """An iterator over (x, y) batches that also knows its length (for tqdm)."""

    def __init__(self, it: Iterator[tuple[Tensor, Tensor]], length: int):
        self._it, self._length = it, length

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        return next(self._it)


def num_batches(data: ImageSet, batch_size: int, *, train: bool, drop_last: bool | None = None) -> int:
    drop = train if drop_last is None else drop_last
    return len(data) // batch_size if drop else -(-len(data) // batch_size)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator behind every random choice of one epoch, from (seed, epoch) alone."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def batches(data: ImageSet, batch_size: int, *, train: bool, epoch: int, seed: int, device, augment: bool = True,
            drop_last: bool | None = None, channels_last: bool = False, workers: int | None = None,
            shard: tuple[int, int] = (0, 1)) -> Batches:
    """Normalised float32 NCHW batches and int64 labels on `device`.

    train=True: shuffled, augmented unless augment=False (then folder images get
    the validation centre crop), the last partial batch dropped unless
    drop_last=False. train=False: file order, no augmentation, every image.
    Deterministic from (seed, epoch). workers: DataLoader workers for a
    FolderImageSet (default min(4, CPUs)); in-memory sets ignore it.

    shard=(rank, world): `batch_size` is the global batch; this rank gets its
    batch_size // world consecutive images of each, with the same order and
    augmentation draws as one process taking the whole batch, and reads (decodes)
    only those. Sharding needs whole batches (train with the partial one dropped).
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    rank, world = shard
    if world > 1 and (batch_size % world or not (train if drop_last is None else drop_last)):
        raise DataError(f"sharding a batch of {batch_size} over {world} ranks needs a multiple of {world} and "
                        "whole batches (drop_last)")
    drop = train if drop_last is None else drop_last
    n = num_batches(data, batch_size, train=train, drop_last=drop)
    if n == 0:
        raise DataError(f"batch_size {batch_size} exceeds the {len(data)} images and the partial batch is dropped: "
                        "lower the batch size or pass drop_last=False")
    device = torch.device(device)
    gen = epoch_generator(seed, epoch) if train else None
    order = torch.randperm(len(data), generator=gen) if train else torch.arange(len(data))
    mean = torch.tensor(data.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, 3, 1, 1)
    if isinstance(data, TensorImageSet):
        it = _tensor_batches(data, order, batch_size, n, gen if augment else None, device, mean, std, shard)
    elif isinstance(data, FolderImageSet):
        it = _folder_batches(data, order, batch_size, n, drop, gen if augment else None, device, mean, std,
                             workers, shard)
    else:
        raise TypeError(f"batches() takes a TensorImageSet or FolderImageSet, not {type(data).__name__}")
    if channels_last:
        it = ((x.contiguous(memory_format=torch.channels_last), y) for x, y in it)
    return Batches(it, n)


def _shard_positions(b: int, batch_size: int, shard: tuple[int, int]) -> slice:
    """Positions in the epoch's order of batch b's images for this rank: a consecutive part of the batch."""
    rank, world = shard
    part = batch_size // world
    return slice(b * batch_size + rank * part, b * batch_size + (rank + 1) * part)


def _tensor_batches(data: TensorImageSet, order: Tensor, batch_size: int, n: int, gen: torch.Generator | None,
                    device: torch.device, mean: Tensor, std: Tensor,
                    shard: tuple[int, int]) -> Iterator[tuple[Tensor, Tensor]]:
    images = data.images_on(device) if gen is None else data.epoch_images(gen, device)
    labels, order = data.labels.to(device), order.to(device)
    size, pad, cut = data.image_size, data.pad, data.cutout
    crop = gen is not None and (pad > 0 or data.flip)
    if gen is not None:
        # One draw per image for the whole epoch, in a fixed order, from the CPU generator.
        count = len(data)
        shift = torch.randint(0, 2 * pad + 1, (2, count), generator=gen).to(device)
        flip = (torch.rand(count, generator=gen) < 0.5).to(device) & data.flip
        centre = torch.randint(0, size, (2, count), generator=gen).to(device)
        ar = torch.arange(size, device=device)
    for b in range(n):
        pos = _shard_positions(b, batch_size, shard)
        idx = order[pos]
        x = images[idx]
        if crop:
            # Crop (from the image padded with black) and flip as one gather: output pixel (i, j) reads
            # padded pixel (dy + i, dx + j), or (dy + i, dx + size - 1 - j) when the image is flipped.
            width = size + 2 * pad
            rows = shift[0, pos, None] + ar
            cols = shift[1, pos, None] + torch.where(flip[pos, None], ar.flip(0), ar)
            src = (rows[:, :, None] * width + cols[:, None, :]).view(len(idx), 1, -1).expand(-1, 3, -1)
            x = F.pad(x, (pad,) * 4).flatten(2).gather(2, src).view_as(x)
        x = (x.float().div_(255) - mean).div_(std)
        if gen is not None and cut:
            # Cutout after normalising, as the release does: the square becomes 0, the mean colour.
            lo, hi = (centre[:, pos] - cut // 2).clamp(0, size), (centre[:, pos] + cut // 2).clamp(0, size)
            in_rows = (ar >= lo[0, :, None]) & (ar < hi[0, :, None])
            in_cols = (ar >= lo[1, :, None]) & (ar < hi[1, :, None])
            x = x * ~(in_rows[:, None, :, None] & in_cols[:, None, None, :])
        yield x, labels[idx]


def _folder_batches(data: FolderImageSet, order: Tensor, batch_size: int, n: int, drop: bool,
                    gen: torch.Generator | None, device: torch.device, mean: Tensor, std: Tensor,
                    workers: int | None, shard: tuple[int, int]) -> Iterator[tuple[Tensor, Tensor]]:
    # Each image gets its own crop seed drawn here, so crops do not depend on which worker decodes it.
    crop_seeds = [0] * len(data) if gen is None else torch.randint(0, 2**62, (len(data),), generator=gen).tolist()
    items = list(zip(order.tolist(), crop_seeds))
    if shard[1] > 1:
        items = [item for b in range(n) for item in items[_shard_positions(b, batch_size, shard)]]
    loader = DataLoader(
        FolderReader(data, random_crop=gen is not None), batch_size=batch_size // shard[1], sampler=items,
        num_workers=min(4, os.cpu_count() or 1) if workers is None else workers, collate_fn=collate,
        drop_last=drop, pin_memory=device.type == "cuda")
    for batch in loader:
        if isinstance(batch, str):
            raise DataError(batch)
        x, y = batch
        yield (x.to(device, non_blocking=True).float().div_(255) - mean).div_(std), y.to(device, non_blocking=True)
