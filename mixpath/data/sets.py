"""What every loader returns: labelled image sets, the three splits, the error type, normalisation constants."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

# Folder sets use ImageNet's constants: computing them would decode every image. Tensor sets compute
# theirs from their train split (CIFAR-10's come out near the release's (0.491, 0.482, 0.447)).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(ValueError):
    """A dataset is missing or malformed; the message names the problem and the fix."""


class ImageSet:
    """Labelled RGB images of one size with the normalisation to apply to them."""

    labels: Tensor  # (N,) int64
    classes: tuple[str, ...]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(eq=False)
class TensorImageSet(ImageSet):
    images: Tensor  # (N, 3, H, W) uint8, CPU
    labels: Tensor
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad: int | None = None  # crop padding; None: image_size // 8
    cutout: int | None = None  # Cutout side; None: image_size // 2
    flip: bool = True  # random horizontal flips (off where a flip changes the class, as for digits)
    # Each image's position in the data it was taken from (sklearn's digit order, the 50,000 CIFAR training
    # rows or test_batch's rows), so which images a split holds can be checked and logged.
    indices: Tensor | None = None
    # One copy of the images per device, so GPU batches are gathered without host copies.
    _on_device: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        self.image_size = self.images.shape[-1]
        if self.pad is None:
            self.pad = self.image_size // 8
        if self.cutout is None:
            self.cutout = self.image_size // 2

    def images_on(self, device: torch.device) -> Tensor:
        if device not in self._on_device:
            self._on_device[device] = self.images.to(device)
        return self._on_device[device]

    def epoch_images(self, gen: torch.Generator, device: torch.device) -> Tensor:
        """The images an augmented epoch starts from (before crop, flip and Cutout); a set that makes
        fresh images per epoch draws them from `gen`."""
        return self.images_on(device)


@dataclass(eq=False)
class FolderImageSet(ImageSet):
    samples: list[tuple[str, int]]  # (path, class index)
    classes: tuple[str, ...]
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)


@dataclass
class Splits:
    """train for training, val for everything that chooses (monitoring, BN calibration, search, ranking),
    test only for the final accuracy of a retrained architecture."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    num_classes: int
    image_size: int
    in_channels: int  # always 3
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str = ""
    note: str = ""  # how the splits were made where that is not obvious (e.g. test held out of train/)


def make_splits(name: str, train: ImageSet, val: ImageSet, test: ImageSet, note: str = "") -> Splits:
    return Splits(train=train, val=val, test=test, num_classes=len(train.classes), image_size=train.image_size,
                  in_channels=3, mean=train.mean, std=train.std, name=name, note=note)


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, 3, H, W) images in [0, 1], exact, from a histogram per channel
    (no float copy of the images: 45,000 CIFAR images would need a gigabyte)."""
    values = np.arange(256) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = np.bincount(images[:, c].numpy().ravel(), minlength=256)
        mean = counts @ values / counts.sum()
        means.append(float(mean))
        stds.append(float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum())))
    return tuple(means), tuple(stds)
