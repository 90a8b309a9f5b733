"""mixpath.data's cluttered-digits: shapes, determinism, disjoint sources, the digit really on the canvas, and the
fresh clutter of every augmented epoch."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from mixpath.data import DataError, batches, load_data, place_digits
from mixpath.data.digits import upsampled_digits


@pytest.fixture(scope="module")
def clutter():
    return load_data("cluttered-digits")


def test_shapes_sizes_labels_and_train_normalisation(clutter):
    assert (clutter.num_classes, clutter.image_size, clutter.in_channels) == (10, 32, 3)
    assert [len(p) for p in (clutter.train, clutter.val, clutter.test)] == [3 * 1077, 3 * 360, 3 * 360]
    target = load_digits().target
    for part in (clutter.train, clutter.val, clutter.test):
        assert part.images.dtype == torch.uint8 and part.images.shape[1:] == (3, 32, 32)
        assert torch.equal(part.images[:, 0], part.images[:, 2])
        assert torch.equal(part.labels, torch.from_numpy(target[part.indices.numpy()]))
        assert torch.bincount(part.indices).max() == 3  # three placements of each digit
    train_px = clutter.train.images[:, 0].double() / 255
    assert clutter.mean == pytest.approx((train_px.mean().item(),) * 3)
    assert clutter.std == pytest.approx((train_px.std(unbiased=False).item(),) * 3)


def test_splits_are_the_digits_own_splits_so_no_digit_is_in_two(clutter):
    digits = load_data("digits", image_size=8)  # same seed (0)
    for name in ("train", "val", "test"):
        assert set(getattr(clutter, name).indices.tolist()) == set(getattr(digits, name).indices.tolist())
    ids = [set(p.indices.tolist()) for p in (clutter.train, clutter.val, clutter.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_deterministic_for_a_seed(clutter):
    again, other = load_data("cluttered-digits"), load_data("cluttered-digits", seed=1)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(again, name).images, getattr(clutter, name).images)
    assert not torch.equal(other.val.indices, clutter.val.indices)


def holds_digit(canvases, indices):
    """Per canvas: is its digit (sklearn index) intact somewhere on it? Pixel-wise maximum compositing
    leaves the canvas at least the digit's pixels everywhere in some 12x12 window."""
    digits = upsampled_digits(12)[indices].float()
    windows = F.unfold(canvases[:, :1].float(), 12).view(len(digits), 144, -1)  # every 12x12 window
    return (windows >= digits.view(-1, 144, 1)).all(1).any(1)


def test_every_canvas_holds_its_digit_intact(clutter):
    assert holds_digit(clutter.val.images[::4], clutter.val.indices[::4]).all()


def unnormalise(x, data):
    return (x[:, :1] * data.std[0] + data.mean[0]).mul(255).round()


def test_augmented_epochs_place_each_training_digit_afresh(clutter):
    train = clutter.train
    pixels = {}
    for epoch in (0, 1):
        images, labels = [], []
        for x, y in batches(train, 97, train=True, epoch=epoch, seed=5, device="cpu", drop_last=False):
            images.append(unnormalise(x, train))
            labels.append(y)
        pixels[epoch] = torch.cat(images)
        labels = torch.cat(labels)
        assert sorted(labels.tolist()) == sorted(train.labels.tolist())  # every canvas once, labels kept
    # Fresh canvases: none equals a stored one, yet each still shows a digit of its own label intact.
    stored = {bytes(img[0].to(torch.uint8).numpy()) for img in train.images}
    assert not any(bytes(img[0].to(torch.uint8).numpy()) in stored for img in pixels[0][:200])
    assert not torch.equal(pixels[0], pixels[1])
    again = torch.cat([unnormalise(x, train) for x, _ in batches(train, 97, train=True, epoch=0, seed=5,
                                                                 device="cpu", drop_last=False)])
    assert torch.equal(again, pixels[0])  # deterministic for (seed, epoch)


def test_fresh_canvases_hold_their_own_digit_and_keep_the_label(clutter):
    train = clutter.train
    fresh = train.epoch_images(torch.Generator().manual_seed(3), torch.device("cpu"))
    assert fresh.shape == train.images.shape and fresh.dtype == torch.uint8
    assert not torch.equal(fresh, train.images)
    sample = slice(0, None, 7)
    assert holds_digit(fresh[sample], train.indices[sample]).all()  # canvas i still shows the digit labelled i
    # ... and not the neighbouring digit (canvases come in runs of 3 per digit): the check can tell them apart
    assert holds_digit(fresh[sample], train.indices.roll(3)[sample]).float().mean() < 0.05


def test_without_augmentation_training_batches_are_the_stored_canvases(clutter):
    train = clutter.train
    x, y = next(iter(batches(train, 64, train=True, epoch=0, seed=5, device="cpu", augment=False)))
    stored = {bytes(img[0].numpy()): label for img, label in zip(train.images, train.labels.tolist())}
    assert all(stored[bytes(img[0].to(torch.uint8).numpy())] == label
               for img, label in zip(unnormalise(x, train), y.tolist()))


def test_fragments_come_from_other_digits_and_the_digit_sits_where_recorded():
    # Constant digits (digit k is all k + 1) make every pixel say which digit it came from.
    n, d, canvas, fragments = 6, 8, 24, 5
    digits = np.repeat(np.arange(1, n + 1, dtype=np.uint8), d * d).reshape(n, d, d)
    p = place_digits(digits, 2, canvas, fragments, np.random.default_rng(0))
    assert p.images.shape == (2 * n, canvas, canvas) and p.digit.tolist() == sorted(list(range(n)) * 2)
    assert ((p.fragment_source != p.digit[:, None]) & (p.fragment_source >= 0) & (p.fragment_source < n)).all()
    for img, digit, (r, c), sources in zip(p.images, p.digit, p.position, p.fragment_source):
        assert (img[r:r + d, c:c + d] >= digit + 1).all()
        outside = img.copy()
        outside[r:r + d, c:c + d] = 0
        assert set(np.unique(outside)) <= {0, *(sources + 1)}  # only clutter out there, none of its own digit
        assert 0 < np.count_nonzero(outside) <= fragments * (d // 2) ** 2


def test_brightest_window_is_mostly_the_digit():
    digits = upsampled_digits(12).numpy()[:200]
    p = place_digits(digits, 2, 32, 6, np.random.default_rng(1))
    sums = F.avg_pool2d(torch.from_numpy(p.images).float()[:, None], 12, 1)[:, 0].flatten(1)
    best = np.stack(np.unravel_index(sums.argmax(1).numpy(), (21, 21)), 1)
    near = (np.abs(best - p.position) <= 3).all(1).mean()
    assert near > 0.6  # a random window would be this near about 11% of the time


def test_too_small_canvas_is_refused():
    with pytest.raises(DataError, match="image_size of at least 16"):
        load_data("cluttered-digits", image_size=12)
