"""Datasets for supernet training and subnet evaluation: digits, CIFAR-10, image folders.

`load_data` returns train/val `ImageSet`s; `batches` turns one into normalised
(x, y) batches on a device. Two kinds of set:

- `TensorImageSet` (digits, cifar10): all images in memory as uint8. Training
  batches are augmented as whole batches with tensor ops on the device, in the
  release's order: random crop with zero padding, horizontal flip, normalise,
  Cutout (which zeroes a square of the *normalised* image, i.e. paints it the
  dataset mean, as the release's Cutout does after Normalize). Padding and
  Cutout scale with the image: `image_size // 8` and `image_size // 2`
  (4 and 16 at 32 px); set `pad` / `cutout` on the set to change them (0 = off).
- `FolderImageSet` (folder): paths only, decoded by PIL in DataLoader workers.
  Training: random-resized crop (scale 0.08..1, ratio 3/4..4/3) + flip;
  otherwise a centre crop of 0.875 of the shorter side (256 -> 224 style).
  Default image size 224, the ImageNet search space's input size.

Every random choice of an epoch comes from one torch.Generator seeded from
(seed, epoch) alone and drawn on the CPU: the same choices on every device and
worker count, identical batches when a run resumes at an epoch boundary, and
no RNG state to checkpoint.
"""
from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["DataError", "ImageSet", "TensorImageSet", "FolderImageSet", "Splits", "Batches", "load_data", "batches",
           "num_batches", "epoch_generator", "describe", "CIFAR10_MEAN", "CIFAR10_STD", "IMAGENET_MEAN",
           "IMAGENET_STD"]

# The release's constants (S1/utils.py).
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
# The extensions torchvision's ImageFolder accepts, so existing trees load unchanged.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
VAL_CROP_FRACTION = 0.875


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
    train: ImageSet
    val: ImageSet
    num_classes: int
    image_size: int
    in_channels: int  # always 3
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str = ""


def load_data(name: str, data_dir: str | None = None, *, image_size: int | None = None,
              val_fraction: float = 0.2, seed: int = 0) -> Splits:
    """Load `digits` (bundled, no data_dir), `cifar10` or `folder`; raises DataError on any problem.

    val_fraction and seed split train into train/val where the dataset has no
    validation part of its own (digits; a folder without val/).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be positive, got {image_size}")
    if name == "digits":
        return _load_digits(image_size or 16, val_fraction, seed)
    if name == "cifar10":
        return _load_cifar10(data_dir, image_size)
    if name == "folder":
        return _load_folder(data_dir, image_size or 224, val_fraction, seed)
    raise DataError(f"unknown dataset {name!r}: choose digits, cifar10 or folder")


def describe(splits: Splits) -> str:
    """One line for logs."""
    def fmt(values):
        return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"

    return (f"{splits.name or 'data'}: {len(splits.train)} train / {len(splits.val)} val images, "
            f"{splits.num_classes} classes, {splits.in_channels}x{splits.image_size}x{splits.image_size}, "
            f"mean {fmt(splits.mean)} std {fmt(splits.std)}")


def _splits(name: str, train: ImageSet, val: ImageSet) -> Splits:
    return Splits(train=train, val=val, num_classes=len(train.classes), image_size=train.image_size, in_channels=3,
                  mean=train.mean, std=train.std, name=name)


def _split_indices(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train/val indices (sorted, so sets keep their file order)."""
    from sklearn.model_selection import train_test_split

    try:
        train, val = train_test_split(np.arange(len(labels)), test_size=val_fraction, random_state=seed,
                                      stratify=labels)
    except ValueError as e:
        raise DataError(f"cannot split {len(labels)} images into train/val with val_fraction={val_fraction}: {e}; "
                        "add images or change val_fraction") from None
    return np.sort(train), np.sort(val)


# ---------------------------------------------------------------- digits

def _load_digits(image_size: int, val_fraction: float, seed: int) -> Splits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().mul_(255.0 / 16.0).unsqueeze(1)  # pixel values 0..16
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = x.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target).long()
    train_idx, val_idx = _split_indices(digits.target, val_fraction, seed)
    train_px = images[torch.from_numpy(train_idx), 0].double() / 255
    mean, std = (train_px.mean().item(),) * 3, (train_px.std().item(),) * 3
    classes = tuple(str(c) for c in range(10))

    def subset(idx):
        idx = torch.from_numpy(idx)
        return TensorImageSet(images[idx], labels[idx], classes, mean, std)

    return _splits("digits", subset(train_idx), subset(val_idx))


# ---------------------------------------------------------------- CIFAR-10

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
    if not (root / CIFAR10_FILES[0]).exists() and nested.is_dir():
        root = nested
    for f in CIFAR10_FILES:
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
    if (labels.shape != (len(data),) or labels.dtype.kind not in "iu"
            or (labels.size and (labels.min() < 0 or labels.max() > 9))):
        raise DataError(f"CIFAR-10 batch {path}: b'labels' must be {len(data)} integers in 0..9, got "
                        f"{labels.dtype} {labels.shape}: re-extract cifar-10-python.tar.gz")
    return data, labels


def _load_cifar10(data_dir: str | None, image_size: int | None) -> Splits:
    # Resizing would change what the S1 space was designed for, so other sizes are refused rather than faked.
    if image_size not in (None, 32):
        raise DataError(f"cifar10 images are 32x32; image_size={image_size} is not supported (leave it unset)")
    root = _cifar_dir(data_dir)

    def read(files):
        parts = [_read_cifar_batch(root / f) for f in files]
        data = np.concatenate([d for d, _ in parts]).reshape(-1, 3, 32, 32)  # rows are R, G, B planes
        labels = np.concatenate([lab for _, lab in parts]).astype(np.int64)
        return TensorImageSet(torch.from_numpy(data), torch.from_numpy(labels), CIFAR10_CLASSES,
                              CIFAR10_MEAN, CIFAR10_STD)

    return _splits("cifar10", read(CIFAR10_FILES[:5]), read(CIFAR10_FILES[5:]))


# ---------------------------------------------------------------- image folders

def _scan_classes(split_dir: Path) -> dict[str, list[str]]:
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {split_dir} has no class folders: expected {split_dir}/<class>/<image>.jpg")
    found = {}
    for c in classes:
        files = sorted(e.path for e in os.scandir(split_dir / c)
                       if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(f"class folder {split_dir / c} has no images ({', '.join(IMAGE_EXTENSIONS)}): "
                            "add images or remove the folder")
        found[c] = files
    return found


def _load_folder(data_dir: str | None, image_size: int, val_fraction: float, seed: int) -> Splits:
    if data_dir is None:
        raise DataError("folder needs data_dir: a folder holding train/<class>/*.jpg and optionally val/<class>/*")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist: pass a folder holding train/<class>/*.jpg")
    if not (root / "train").is_dir():
        raise DataError(f"image folder {root} has no train/ folder: expected {root}/train/<class>/*.jpg "
                        "and optionally val/<class>/*")
    train = _scan_classes(root / "train")
    classes = tuple(train)
    index = {c: i for i, c in enumerate(classes)}
    samples = [(p, index[c]) for c, files in train.items() for p in files]
    if (root / "val").is_dir():
        val = _scan_classes(root / "val")
        unknown = sorted(set(val) - set(index))
        if unknown:
            raise DataError(f"{root / 'val'} has classes not in train/: {', '.join(unknown)}; "
                            "val/ must use train/'s class folder names")
        val_samples = [(p, index[c]) for c, files in val.items() for p in files]
    else:
        train_idx, val_idx = _split_indices(np.array([lab for _, lab in samples]), val_fraction, seed)
        samples, val_samples = [samples[i] for i in train_idx], [samples[i] for i in val_idx]
    return _splits("folder", FolderImageSet(samples, classes, image_size),
                   FolderImageSet(val_samples, classes, image_size))


def _random_resized_box(w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of 8%..100% of the area with aspect 3/4..4/3 (torchvision's RandomResizedCrop sampling)."""
    for _ in range(10):
        area = w * h * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return x0, y0, x0 + cw, y0 + ch
    # Fallback for extreme aspect ratios: the whole image, clamped to the allowed aspect, centred.
    cw, ch = min(w, round(h * 4 / 3)), min(h, round(w * 4 / 3))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return x0, y0, x0 + cw, y0 + ch


class _FolderReader(Dataset):
    """Decodes one image per (index, crop seed); returns an error line instead of raising,
    so a bad file surfaces as one clear DataError in the main process whatever the worker count."""

    def __init__(self, data: FolderImageSet, random_crop: bool):
        self.samples, self.size, self.random_crop = data.samples, data.image_size, random_crop

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]):
        from PIL import Image

        index, crop_seed = item
        path, label = self.samples[index]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return f"cannot read image {path}: {e}; fix or delete the file"
        w, h = img.size
        if self.random_crop:
            rng = np.random.default_rng(crop_seed)
            box = _random_resized_box(w, h, rng)
            flip = rng.random() < 0.5
        else:
            side = VAL_CROP_FRACTION * min(w, h)
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            flip = False
        pixels = np.array(img.resize((self.size, self.size), Image.BILINEAR, box=box))  # PIL antialiases
        if flip:
            pixels = np.ascontiguousarray(pixels[:, ::-1])
        return torch.from_numpy(pixels).permute(2, 0, 1), label


def _collate(items):
    errors = [it for it in items if isinstance(it, str)]
    if errors:
        return errors[0]
    xs, ys = zip(*items)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


# ---------------------------------------------------------------- batches

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
            drop_last: bool | None = None, channels_last: bool = False, workers: int | None = None) -> Batches:
    """Normalised float32 NCHW batches and int64 labels on `device`.

    train=True: shuffled, augmented unless augment=False (then folder images get
    the validation centre crop), the last partial batch dropped unless
    drop_last=False. train=False: file order, no augmentation, every image.
    Deterministic from (seed, epoch). workers: DataLoader workers for a
    FolderImageSet (default min(4, CPUs)); in-memory sets ignore it.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be positive, got {batch_size}")
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
        it = _tensor_batches(data, order, batch_size, n, gen if augment else None, device, mean, std)
    elif isinstance(data, FolderImageSet):
        it = _folder_batches(data, order, batch_size, drop, gen if augment else None, device, mean, std, workers)
    else:
        raise TypeError(f"batches() takes a TensorImageSet or FolderImageSet, not {type(data).__name__}")
    if channels_last:
        it = ((x.contiguous(memory_format=torch.channels_last), y) for x, y in it)
    return Batches(it, n)


def _tensor_batches(data: TensorImageSet, order: Tensor, batch_size: int, n: int, gen: torch.Generator | None,
                    device: torch.device, mean: Tensor, std: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    images, labels = data.images_on(device), data.labels.to(device)
    order = order.to(device)
    size, pad, cut = data.image_size, data.pad, data.cutout
    if gen is not None:
        # One draw per image for the whole epoch, in a fixed order, from the CPU generator.
        count = len(data)
        shift = torch.randint(0, 2 * pad + 1, (2, count), generator=gen).to(device)
        flip = (torch.rand(count, generator=gen) < 0.5).to(device)
        centre = torch.randint(0, size, (2, count), generator=gen).to(device)
        ar = torch.arange(size, device=device)
    for b in range(n):
        pos = slice(b * batch_size, (b + 1) * batch_size)
        idx = order[pos]
        x = images[idx]
        if gen is not None:
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


def _folder_batches(data: FolderImageSet, order: Tensor, batch_size: int, drop: bool, gen: torch.Generator | None,
                    device: torch.device, mean: Tensor, std: Tensor,
                    workers: int | None) -> Iterator[tuple[Tensor, Tensor]]:
    # Each image gets its own crop seed drawn here, so crops do not depend on which worker decodes it.
    crop_seeds = [0] * len(data) if gen is None else torch.randint(0, 2**62, (len(data),), generator=gen).tolist()
    loader = DataLoader(
        _FolderReader(data, random_crop=gen is not None), batch_size=batch_size,
        sampler=list(zip(order.tolist(), crop_seeds)),
        num_workers=min(4, os.cpu_count() or 1) if workers is None else workers, collate_fn=_collate,
        drop_last=drop, pin_memory=device.type == "cuda")
    for batch in loader:
        if isinstance(batch, str):
            raise DataError(batch)
        x, y = batch
        yield (x.to(device, non_blocking=True).float().div_(255) - mean).div_(std), y.to(device, non_blocking=True)
