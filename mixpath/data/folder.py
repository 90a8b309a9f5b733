"""ImageNet-style image folders: DIR/train/<class>/*.jpg and optionally DIR/val/<class>/*.

With val/: test is val/, and val is a seeded, stratified hold-out of train/.
Without val/: val and test are both held out of train/ (the same count each).
Held out by default: 50 images per class (MixPath's ImageNet search holds out
50,000 of ImageNet's training images), at most a fifth of train/, at least one
per class. Every image is opened (header only, in parallel) before load_data
returns, so broken files stop the run before its first step, all named at once.
Images stay on disk; normalisation is ImageNet's (computing it would decode all).
"""
from __future__ import annotations

import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .sets import DataError, FolderImageSet, Splits, make_splits
from .split import held_out_count, stratified_split

# The extensions torchvision's ImageFolder accepts, so existing trees load unchanged.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
VAL_CROP_FRACTION = 0.875
FOLDER_VAL_PER_CLASS = 50
UNREADABLE_NAMED = 5  # broken files named in the message; more go to a list file
_CHECK_CHUNK = 256  # paths per thread-pool task: a future per image would cost more than opening it


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


def _open_errors(paths: list[str]) -> list[tuple[str, str]]:
    """(path, reason) for each file PIL cannot identify; reads headers (and PNG chunk checksums), decodes nothing."""
    from PIL import Image

    errors = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as e:  # PIL raises many types for a broken file; each means "unreadable" here
            errors.append((path, " ".join(f"{type(e).__name__}: {e}".split())))  # one line, for the message
    return errors


def check_images(paths: list[str], workers: int | None = None) -> None:
    """Raise one DataError naming every file of `paths` that does not open."""
    chunks = [paths[i:i + _CHECK_CHUNK] for i in range(0, len(paths), _CHECK_CHUNK)]
    # Opening headers waits on the disk, not the CPU, so more threads than cores pay off.
    with ThreadPoolExecutor(max_workers=workers or min(32, 4 * (os.cpu_count() or 1))) as pool:
        errors = [e for chunk_errors in pool.map(_open_errors, chunks) for e in chunk_errors]
    if not errors:
        return
    named = "; ".join(f"{p} ({why})" for p, why in errors[:UNREADABLE_NAMED])
    where = ""
    if len(errors) > UNREADABLE_NAMED:
        fd, listing = tempfile.mkstemp(prefix="mixpath-unreadable-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{p}\t{why}\n" for p, why in errors)
        where = f"; all {len(errors)} are listed in {listing}"
    raise DataError(f"{len(errors)} of {len(paths)} images cannot be opened: {named}{where}; "
                    "fix or delete them")


def _default_held_out(num_classes: int, pool: int) -> int:
    # At least one per class: a stratified split cannot hold out fewer images than there are classes.
    return max(num_classes, min(FOLDER_VAL_PER_CLASS * num_classes, math.ceil(pool / 5)))


def load_folder(data_dir: str | None, image_size: int, val_size: int | float | None, seed: int,
                workers: int | None = None) -> Splits:
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
    test_samples = None
    if (root / "val").is_dir():
        val = _scan_classes(root / "val")
        unknown = sorted(set(val) - set(index))
        if unknown:
            raise DataError(f"{root / 'val'} has classes not in train/: {', '.join(unknown)}; "
                            "val/ must use train/'s class folder names")
        test_samples = [(p, index[c]) for c, files in val.items() for p in files]
    count = _default_held_out(len(classes), len(samples)) if val_size is None else val_size
    count = held_out_count(count, len(samples), "val_size")
    # Without val/, test is held out too, as many as val, from what val leaves.
    counts = [count] if test_samples is not None else [count, count]
    parts = stratified_split(np.array([lab for _, lab in samples]), counts, seed, "train/")
    # Last of the checks, as the slowest: every other mistake is reported without waiting for it.
    check_images([p for p, _ in samples + (test_samples or [])], workers)
    if test_samples is None:
        test_samples, note = [samples[i] for i in parts[2]], "no val/: val and test held out of train/"
    else:
        note = "val held out of train/, test is val/"
    train_set, val_set = (FolderImageSet([samples[i] for i in idx], classes, image_size) for idx in parts[:2])
    return make_splits("folder", train_set, val_set, FolderImageSet(test_samples, classes, image_size), note)


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


class FolderReader(Dataset):
    """Decodes one image per (index, crop seed); returns an error line instead of raising,
    so a file that opens but does not decode (e.g. truncated) surfaces as one clear DataError
    in the main process whatever the worker count."""

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


def collate(items):
    errors = [it for it in items if isinstance(it, str)]
    if errors:
        return errors[0]
    xs, ys = zip(*items)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)
