"""mixpath.data: loaders, deterministic batches, augmentation, and the errors users see.

Fixtures (CIFAR pickles, PNG folders) are written into tmp_path at run time.
Augmentation tests give each image a unique label, so a batch's labels say
which source image every augmented sample came from.
"""
import itertools
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits

from mixpath.data import (IMAGENET_MEAN, DataError, FolderImageSet, TensorImageSet, batches, describe, load_data,
                          num_batches)

MEAN, STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def id_set(images, pad=0, cutout=0):
    """A TensorImageSet whose label is each image's index."""
    n = len(images)
    return TensorImageSet(images, torch.arange(n), tuple(map(str, range(n))), MEAN, STD, pad=pad, cutout=cutout)


def random_images(n=24, size=16, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def normalise(pixels):
    """uint8 or [0,1] float images -> the normalised values batches() should produce."""
    x = pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def collect(it):
    xs, ys = zip(*it)
    return torch.cat(xs), torch.cat(ys)


# ---------------------------------------------------------------- digits

def source_ids(part):
    return set(part.indices.tolist())


def test_digits_three_disjoint_stratified_splits_normalised_by_train(digits):
    assert (digits.num_classes, digits.image_size, digits.in_channels) == (10, 16, 3)
    assert [len(p) for p in (digits.train, digits.val, digits.test)] == [1077, 360, 360]
    ids = [source_ids(p) for p in (digits.train, digits.val, digits.test)]
    assert sum(map(len, ids)) == 1797 and set.union(*ids) == set(range(1797))  # disjoint and complete
    target = load_digits().target
    for part in (digits.train, digits.val, digits.test):
        assert torch.equal(part.labels, torch.from_numpy(target[part.indices.numpy()]))
        assert part.images.dtype == torch.uint8 and part.images.shape[1:] == (3, 16, 16)
        assert torch.equal(part.images[:, 0], part.images[:, 1]) and torch.equal(part.images[:, 0], part.images[:, 2])
        assert torch.allclose(torch.bincount(part.labels, minlength=10) / len(part), torch.full((10,), 0.1),
                              atol=0.01)  # stratified
    train_px = digits.train.images[:, 0].double() / 255
    assert digits.mean == pytest.approx((train_px.mean().item(),) * 3)
    assert digits.std == pytest.approx((train_px.std(unbiased=False).item(),) * 3)
    assert digits.val.mean == digits.test.mean == digits.mean


def test_digits_at_native_size_keep_the_pixels_and_the_split_follows_the_seed():
    a = load_data("digits", image_size=8, seed=3)
    expected = load_digits()
    scaled = np.rint(expected.images * 255 / 16).astype(np.uint8)
    for part in (a.train, a.val, a.test):
        assert np.array_equal(part.images[:, 0].numpy(), scaled[part.indices.numpy()])
    b, c = load_data("digits", image_size=8, seed=3), load_data("digits", image_size=8, seed=4)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(a, name).indices, getattr(b, name).indices)
    assert not torch.equal(a.val.indices, c.val.indices) and not torch.equal(a.test.indices, c.test.indices)


def test_digits_val_size_count_or_fraction_of_what_test_leaves():
    assert len(load_data("digits", image_size=8, val_size=100).val) == 100
    fraction = load_data("digits", image_size=8, val_size=0.25)
    assert (len(fraction.train), len(fraction.val), len(fraction.test)) == (1077, 360, 360)  # ceil(0.25 * 1437)
    for bad in (0, 1437, 1.0, -0.5, "10", True):
        with pytest.raises(DataError, match="val_size"):
            load_data("digits", image_size=8, val_size=bad)


def test_describe_is_one_line(digits):
    line = describe(digits)
    assert "\n" not in line and "digits" in line and "1077 train / 360 val / 360 test" in line and "3x16x16" in line


# ---------------------------------------------------------------- batches

def test_val_batches_are_the_images_in_order_with_the_last_partial_batch(digits):
    it = batches(digits.val, 64, train=False, epoch=0, seed=0, device="cpu")
    assert len(it) == num_batches(digits.val, 64, train=False) == 6
    parts = list(it)
    assert [len(y) for _, y in parts] == [64] * 5 + [40]
    x, y = collect(parts)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    mean, std = torch.tensor(digits.mean).view(1, 3, 1, 1), torch.tensor(digits.std).view(1, 3, 1, 1)
    assert torch.allclose(x, (digits.val.images.float() / 255 - mean) / std, atol=1e-6)
    assert torch.equal(y, digits.val.labels)


def test_train_batches_depend_on_seed_and_epoch_only(digits):
    def run(epoch, seed):
        it = batches(digits.train, 256, train=True, epoch=epoch, seed=seed, device="cpu")
        assert len(it) == 4  # 1077 // 256: the partial batch is dropped
        return collect(itertools.islice(it, 2))

    x1, y1 = run(2, 7)
    torch.manual_seed(12345)  # global RNG state must not matter: resumes need no RNG checkpoint
    torch.rand(10)
    x2, y2 = run(2, 7)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(run(3, 7)[1], y1)
    assert not torch.equal(run(2, 8)[1], y1)


def test_train_shuffles_every_image_once_per_epoch():
    data = id_set(random_images(30))
    _, y = collect(batches(data, 8, train=True, epoch=0, seed=0, device="cpu", drop_last=False))
    assert sorted(y.tolist()) == list(range(30)) and y.tolist() != list(range(30))
    assert len(batches(data, 8, train=True, epoch=0, seed=0, device="cpu")) == 3


def test_flip_is_a_true_mirror():
    images = random_images()
    x, y = collect(batches(id_set(images), 8, train=True, epoch=0, seed=1, device="cpu"))
    plain, mirrored = normalise(images[y]), normalise(images[y].flip(3))
    is_plain = torch.isclose(x, plain, atol=1e-6).flatten(1).all(1)
    is_mirror = torch.isclose(x, mirrored, atol=1e-6).flatten(1).all(1)
    assert (is_plain ^ is_mirror).all()  # exactly one, since random images are not symmetric
    assert is_plain.any() and is_mirror.any()
    assert torch.equal(x[is_mirror][:, :, :, 0], normalise(images[y[is_mirror]])[:, :, :, -1])


def test_random_crop_is_a_shifted_window_of_the_black_padded_image():
    images, pad = random_images(), 2
    x, y = collect(batches(id_set(images, pad=pad), 8, train=True, epoch=0, seed=2, device="cpu"))
    padded = F.pad(images.float() / 255, (pad,) * 4)  # black border, as RandomCrop(padding) pads
    shifts = set()
    for xi, yi in zip(x, y):
        windows = {(dy, dx): padded[yi, :, dy:dy + 16, dx:dx + 16] for dy in range(2 * pad + 1)
                   for dx in range(2 * pad + 1)}
        matches = [shift for shift, w in windows.items() for candidate in (w, w.flip(2))  # as is, or mirrored
                   if torch.allclose(xi, normalise(candidate[None])[0], atol=1e-6)]
        assert matches, f"image {yi} is no window of its padded source"
        shifts.update(matches)
    assert len(shifts) > 5  # the offsets really vary


def test_cutout_zeroes_one_clipped_square_in_normalised_space():
    size, cut = 16, 8
    images = torch.full((64, 3, size, size), 200, dtype=torch.uint8)  # normalised value != 0 in every channel
    x, y = collect(batches(id_set(images, cutout=cut), 16, train=True, epoch=0, seed=3, device="cpu"))
    background = normalise(images[:1])[0]
    assert (background != 0).all()
    full = 0
    for xi in x:
        zero = (xi == 0).all(0)
        assert torch.equal((xi == 0).any(0), zero)  # all channels together
        assert torch.allclose(xi[:, ~zero], background[:, ~zero])  # the rest untouched
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert len(rows) > 0  # the centre is always inside the image
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a filled rectangle
        assert 0 < h <= cut and 0 < w <= cut
        assert (h == cut or rows.min() == 0 or rows.max() == size - 1)  # short only where clipped at a border
        assert (w == cut or cols.min() == 0 or cols.max() == size - 1)
        full += bool(h == cut and w == cut)
    assert full > 0


def test_augmentation_changes_train_pixels_only_when_asked(digits):
    images = random_images(32)
    data = id_set(images, pad=2, cutout=8)
    x, y = collect(batches(data, 8, train=True, epoch=0, seed=0, device="cpu"))
    changed = ~torch.isclose(x, normalise(images[y]), atol=1e-6).flatten(1).all(1)
    assert changed.float().mean() > 0.9
    x, y = collect(batches(data, 8, train=True, epoch=0, seed=0, device="cpu", augment=False))
    assert torch.allclose(x, normalise(images[y]), atol=1e-6) and y.tolist() != list(range(32))
    x, y = collect(batches(data, 8, train=False, epoch=0, seed=0, device="cpu"))
    assert torch.allclose(x, normalise(images), atol=1e-6) and y.tolist() == list(range(32))


def test_defaults_scale_pad_and_cutout_with_image_size(digits):
    assert (digits.train.pad, digits.train.cutout) == (2, 8)
    big = TensorImageSet(random_images(2, size=32), torch.zeros(2, dtype=torch.long), ("a",), MEAN, STD)
    assert (big.pad, big.cutout) == (4, 16)


def test_channels_last_and_batch_checks(digits):
    x, _ = next(batches(digits.val, 16, train=False, epoch=0, seed=0, device="cpu", channels_last=True))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(DataError, match="drop_last=False"):
        batches(id_set(random_images(5)), 8, train=True, epoch=0, seed=0, device="cpu")
    assert len(batches(id_set(random_images(5)), 8, train=True, epoch=0, seed=0, device="cpu", drop_last=False)) == 1


# ---------------------------------------------------------------- CIFAR-10

def write_cifar(root, rows=20, seed=0):
    """Fake batches: `rows` images each, every class equally often (so val can be stratified)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8),
                 b"labels": rng.permutation(np.arange(rows) % 10).tolist(), b"batch_label": name.encode()}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
        written[name] = batch
    return written


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_val_is_held_out_of_the_training_batches_and_test_is_test_batch(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    written = write_cifar(folder)
    splits = load_data("cifar10", str(tmp_path), val_size=20, seed=1)
    assert (len(splits.train), len(splits.val), len(splits.test), splits.num_classes, splits.image_size) == (
        80, 20, 20, 10, 32)
    rows = np.concatenate([written[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    labels = np.array(sum((written[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), []))
    train, val = splits.train.indices.numpy(), splits.val.indices.numpy()
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(100))
    assert torch.bincount(splits.val.labels, minlength=10).tolist() == [2] * 10  # stratified
    for part, idx in ((splits.train, train), (splits.val, val)):
        # A row is the R, G and B planes, each 32x32 row-major.
        assert np.array_equal(part.images.numpy().reshape(len(idx), -1), rows[idx])
        assert part.labels.tolist() == labels[idx].tolist()
    assert np.array_equal(splits.test.images.numpy().reshape(20, -1), written["test_batch"][b"data"])
    assert splits.test.labels.tolist() == written["test_batch"][b"labels"]
    train_px = rows[train].reshape(-1, 3, 1024) / 255
    assert splits.mean == pytest.approx(tuple(train_px.mean((0, 2))), abs=1e-9)  # from train only
    assert splits.std == pytest.approx(tuple(train_px.std((0, 2))), abs=1e-9)
    assert splits.test.mean == splits.val.mean == splits.mean
    again, other = (load_data("cifar10", str(tmp_path), val_size=20, seed=s) for s in (1, 2))
    assert torch.equal(again.val.indices, splits.val.indices) and not torch.equal(other.val.indices, splits.val.indices)
    with pytest.raises(DataError, match="32x32"):
        load_data("cifar10", str(tmp_path), image_size=16)
    with pytest.raises(DataError, match=r"val_size=5000 must hold out between 1 and 99 of the 100 images"):
        load_data("cifar10", str(tmp_path))  # the default 5,000 needs the real 50,000


@pytest.mark.parametrize("name,index,value", [("data_batch_3", 7, 10), ("test_batch", 0, -1)])
def test_cifar10_label_out_of_range_names_value_index_and_file(tmp_path, name, index, value):
    write_cifar(tmp_path)
    batch = pickle.loads((tmp_path / name).read_bytes())
    batch[b"labels"][index] = value
    (tmp_path / name).write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=rf"{name}: label {value} at index {index} is not a class 0..9") as e:
        load_data("cifar10", str(tmp_path), val_size=20)
    assert "\n" not in str(e.value)


def corrupt(path, how):
    batch = pickle.loads(path.read_bytes())
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:500])
        return
    if how == "code":  # a pickle that would call os.system on load
        path.write_bytes(b"cposix\nsystem\n(S'true'\ntR.")
        return
    if how == "keys":
        batch = {b"pixels": batch[b"data"], b"labels": batch[b"labels"]}
    elif how == "shape":
        batch[b"data"] = batch[b"data"][:, :3000]
    elif how == "dtype":
        batch[b"data"] = batch[b"data"].astype(np.float32)
    elif how == "labels":
        batch[b"labels"] = batch[b"labels"][:-1]
    elif how == "list":
        batch = [batch[b"data"]]
    path.write_bytes(pickle.dumps(batch))


@pytest.mark.parametrize("how,message", [
    ("truncated", "cannot be unpickled"), ("code", "refusing to load posix.system"), ("keys", "lacks keys"),
    ("shape", r"shape \(N, 3072\), got uint8 \(20, 3000\)"), ("dtype", "got float32"), ("labels", "20 integers"),
    ("list", "found list")])
def test_cifar10_malformed_batch_is_named(tmp_path, how, message):
    write_cifar(tmp_path)
    corrupt(tmp_path / "data_batch_3", how)
    with pytest.raises(DataError, match=message) as e:
        load_data("cifar10", str(tmp_path))
    assert "data_batch_3" in str(e.value) and "\n" not in str(e.value)


def test_cifar10_missing_folder_or_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data("cifar10", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="needs data_dir"):
        load_data("cifar10")
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="has no data_batch_3: expected the python-pickle batches"):
        load_data("cifar10", str(tmp_path))


# ---------------------------------------------------------------- image folders

COLOURS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "emu": (0, 255, 0)}


def write_folder(root, splits=("train", "val"), per_class=3):
    for split in splits:
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (20 + 3 * i, 14), colour).save(root / split / name / f"{i}.png")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")


def test_folder_val_is_held_out_of_train_and_test_is_val(tmp_path):
    write_folder(tmp_path, per_class=5)
    splits = load_data("folder", str(tmp_path), image_size=8)
    assert isinstance(splits.train, FolderImageSet) and isinstance(splits.test, FolderImageSet)
    assert splits.train.classes == ("cat", "dog", "emu") and splits.num_classes == 3
    # Default hold-out: a fifth of the 15 train/ images (50 per class would be all of them).
    assert (len(splits.train), len(splits.val), len(splits.test), splits.image_size, splits.mean) == (
        12, 3, 15, 8, IMAGENET_MEAN)
    assert torch.bincount(splits.val.labels).tolist() == [1, 1, 1]
    assert sorted(splits.test.samples) == sorted(files(tmp_path, "val"))
    assert sorted(splits.train.samples + splits.val.samples) == sorted(files(tmp_path, "train"))
    assert "test is val/" in describe(splits)
    for train in (False, True):
        x, y = collect(batches(splits.train, 4, train=train, epoch=0, seed=0, device="cpu", workers=0))
        assert x.shape == (12, 3, 8, 8) and sorted(y.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
        rgb = x * torch.tensor(splits.std).view(1, 3, 1, 1) + torch.tensor(splits.mean).view(1, 3, 1, 1)
        expected = torch.tensor([COLOURS[c] for c in splits.train.classes], dtype=torch.float32)[y] / 255
        assert torch.allclose(rgb, expected[:, :, None, None].expand_as(rgb), atol=1e-5)


def files(root, split):
    return [(str(p), i) for i, c in enumerate(COLOURS) for p in (root / split / c).glob("*.png")]


def test_folder_without_val_holds_out_val_and_test_by_seed(tmp_path):
    write_folder(tmp_path, splits=("train",), per_class=5)
    a = load_data("folder", str(tmp_path), image_size=8, val_size=0.2, seed=1)
    b = load_data("folder", str(tmp_path), image_size=8, val_size=0.2, seed=1)
    c = load_data("folder", str(tmp_path), image_size=8, val_size=0.2, seed=2)
    assert (len(a.train), len(a.val), len(a.test)) == (9, 3, 3)  # 0.2 * 15 each for val and test
    assert torch.bincount(a.val.labels).tolist() == torch.bincount(a.test.labels).tolist() == [1, 1, 1]
    parts = [set(a.train.samples), set(a.val.samples), set(a.test.samples)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set.union(*parts) == set(files(tmp_path, "train"))
    assert (a.val.samples, a.test.samples) == (b.val.samples, b.test.samples)
    assert (a.val.samples, a.test.samples) != (c.val.samples, c.test.samples)
    assert "no val/: val and test held out of train/" in describe(a)


def test_folder_crops_are_deterministic_and_worker_independent(tmp_path):
    root = tmp_path / "train" / "a"
    root.mkdir(parents=True)
    for i in range(8):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(root / f"{i}.png")
    data = load_data("folder", str(tmp_path), image_size=8, val_size=1).train
    run = lambda epoch, workers: collect(batches(data, 3, train=True, epoch=epoch, seed=5, device="cpu",  # noqa: E731
                                                 workers=workers))
    (x0, y0), (x2, y2) = run(0, 0), run(0, 2)
    assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert not torch.equal(run(1, 0)[0], x0)


def _sharded_equals_whole(data, batch_size, world, **kw):
    whole = list(batches(data, batch_size, train=True, epoch=1, seed=5, device="cpu", **kw))
    parts = [list(batches(data, batch_size, train=True, epoch=1, seed=5, device="cpu", shard=(r, world), **kw))
             for r in range(world)]
    assert all(len(p) == len(whole) for p in parts)
    for b, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([p[b][0] for p in parts]), x) and torch.equal(torch.cat([p[b][1] for p in parts]), y)
        assert all(len(p[b][1]) == batch_size // world for p in parts)


def test_shards_of_a_global_batch_are_its_consecutive_parts(tmp_path):
    _sharded_equals_whole(id_set(random_images(26), pad=2, cutout=4), 8, 2)  # augmented: the same draws
    _sharded_equals_whole(id_set(random_images(26)), 9, 3, augment=False)
    root = tmp_path / "train" / "a"
    root.mkdir(parents=True)
    for i in range(10):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(root / f"{i}.png")
    _sharded_equals_whole(load_data("folder", str(tmp_path), image_size=8, val_size=1).train, 4, 2, workers=0)
    with pytest.raises(DataError, match="multiple of 2"):
        batches(id_set(random_images(8)), 5, train=True, epoch=0, seed=0, device="cpu", shard=(0, 2))


def test_folder_test_centre_crop_and_train_flip(tmp_path):
    # 16x16: green inside a 1-pixel red border, the left half of the inside darker.
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[..., 0] = 255
    pixels[1:15, 1:15] = (0, 255, 0)
    pixels[1:15, 1:8] = (0, 100, 0)
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        for i in range(8):
            Image.fromarray(pixels).save(tmp_path / split / "a" / f"{i}.png")
    splits = load_data("folder", str(tmp_path), image_size=14, val_size=1)
    x, _ = collect(batches(splits.test, 8, train=False, epoch=0, seed=0, device="cpu", workers=0))
    rgb = (x * torch.tensor(splits.std).view(1, 3, 1, 1) + torch.tensor(splits.mean).view(1, 3, 1, 1)) * 255
    expected = torch.from_numpy(pixels[1:15, 1:15]).permute(2, 0, 1).float()  # 0.875 of 16: the border goes
    assert torch.allclose(rgb, expected.expand_as(rgb), atol=1e-3)
    dark_left = []
    for epoch in range(2):
        x, _ = collect(batches(splits.train, 7, train=True, epoch=epoch, seed=0, device="cpu", workers=0))
        green = x[:, 1].mean(1)  # per column
        dark_left += [bool(g[0] < g[-1]) for g in green if (g[0] - g[-1]).abs() > 0.5]
    assert True in dark_left and False in dark_left  # some crops mirrored, some not


def test_folder_layout_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data("folder", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="no train/ folder"):
        load_data("folder", str(tmp_path))
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_data("folder", str(tmp_path))
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"train/cat has no images"):
        load_data("folder", str(tmp_path))
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "cat" / "0.png")
    (tmp_path / "val" / "cow").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "val" / "cow" / "0.png")
    with pytest.raises(DataError, match="classes not in train/: cow"):
        load_data("folder", str(tmp_path))


def break_images(root, paths):
    for p in paths:
        (root / p).write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return [str(root / p) for p in paths]


def test_unreadable_images_are_all_named_before_any_batch(tmp_path):
    write_folder(tmp_path, per_class=5)
    bad = break_images(tmp_path, ["val/dog/1.png", "train/cat/3.png"])
    (tmp_path / "train" / "emu" / "0.png").write_bytes(b"")  # empty
    bad.append(str(tmp_path / "train" / "emu" / "0.png"))
    with pytest.raises(DataError) as e:
        load_data("folder", str(tmp_path), image_size=8, workers=2)
    message = str(e.value)
    assert message.startswith("3 of 30 images cannot be opened: ") and message.endswith("fix or delete them")
    assert all(p in message for p in bad) and "\n" not in message and "listed in" not in message


def test_many_unreadable_images_are_listed_in_a_file(tmp_path):
    write_folder(tmp_path, splits=("train",), per_class=5)
    bad = break_images(tmp_path, [f"train/{c}/{i}.png" for c in ("cat", "dog") for i in range(4)])
    with pytest.raises(DataError, match=r"^8 of 15 images cannot be opened: ") as e:
        load_data("folder", str(tmp_path), image_size=8)
    message = str(e.value)
    assert sum(p in message for p in bad) == 5 and "\n" not in message
    listing = message.split("all 8 are listed in ")[1].split(";")[0]
    lines = open(listing).read().splitlines()
    os.unlink(listing)
    assert sorted(line.split("\t")[0] for line in lines) == sorted(bad)


@pytest.mark.parametrize("workers", [0, 1])
def test_image_that_opens_but_does_not_decode_is_named_by_batches(tmp_path, workers):
    write_folder(tmp_path)
    good = tmp_path / "val" / "dog" / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    good.write_bytes(good.read_bytes()[:1000])  # the header survives, the pixels do not
    splits = load_data("folder", str(tmp_path), image_size=8)  # header check passes
    with pytest.raises(DataError, match="cannot read image") as e:
        collect(batches(splits.test, 4, train=False, epoch=0, seed=0, device="cpu", workers=workers))
    assert str(good) in str(e.value) and "\n" not in str(e.value)


def test_argument_errors():
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_data("mnist")
    with pytest.raises(DataError, match="val_size as a fraction must be between 0 and 1"):
        load_data("digits", val_size=1.0)
    with pytest.raises(DataError, match="seed must be a non-negative integer"):
        load_data("digits", seed=-1)
