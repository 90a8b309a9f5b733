"""Search spaces and architectures.

A space fixes the skeleton (stem, searchable inverted-bottleneck layers, head)
and the per-layer choices: an expansion rate t and a non-empty set of at most
m depthwise kernels. An `Arch` is one choice per layer; its compact string is
`t:k,k|t:k|...` (layers separated by `|`), e.g. `6:3,5|3:7`.
"""
from __future__ import annotations

import functools
import json
import math
import random
from dataclasses import dataclass, field

DEFAULT_KERNELS = (3, 5, 7, 9)
DEFAULT_EXPANSIONS = (3, 6)


class ArchError(ValueError):
    """An architecture string, JSON or choice that does not fit its space."""


@dataclass(frozen=True)
class LayerChoice:
    expansion: int
    kernels: tuple[int, ...]

    def __str__(self):
        return f"{self.expansion}:{','.join(map(str, self.kernels))}"


@dataclass(frozen=True)
class Arch:
    layers: tuple[LayerChoice, ...]

    def __str__(self):
        return "|".join(map(str, self.layers))

    def __len__(self):
        return len(self.layers)

    @classmethod
    def parse(cls, text: str) -> "Arch":
        """Read the compact form `t:k,k|t:k|...`; ArchError on malformed text."""
        if not isinstance(text, str) or not text.strip():
            raise ArchError("empty architecture string; expected 't:k,k|t:k|...', e.g. '6:3,5|3:7'")
        layers = []
        for i, part in enumerate(text.strip().split("|")):
            t, sep, ks = part.partition(":")
            try:
                if not sep:
                    raise ValueError
                kernels = tuple(int(k) for k in ks.split(",")) if ks.strip() else ()
                layers.append(LayerChoice(int(t), tuple(sorted(kernels))))
            except ValueError:
                raise ArchError(f"layer {i} of the architecture string reads {part!r}; expected 't:k,k' "
                                "(expansion, colon, comma-separated kernel sizes)") from None
        return cls(tuple(layers))

    def to_json(self) -> str:
        return json.dumps({"layers": [{"expansion": c.expansion, "kernels": list(c.kernels)} for c in self.layers]})

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        try:
            data = json.loads(text)
            layers = tuple(LayerChoice(int(c["expansion"]), tuple(sorted(int(k) for k in c["kernels"])))
                           for c in data["layers"])
        except (ValueError, KeyError, TypeError) as e:
            raise ArchError(f"architecture JSON is malformed ({e}); expected "
                            '{"layers": [{"expansion": 6, "kernels": [3, 5]}, ...]}') from None
        return cls(layers)


@dataclass(frozen=True)
class LayerSpec:
    in_channels: int
    out_channels: int
    stride: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: nearest multiple of divisor, never below 90% of value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class SearchSpace:
    name: str
    stem_channels: int
    stem_stride: int
    layers: tuple[LayerSpec, ...]
    head_channels: int
    num_classes: int
    input_size: int
    max_paths: int = 4
    kernel_sizes: tuple[int, ...] = DEFAULT_KERNELS
    expansions: tuple[int, ...] = DEFAULT_EXPANSIONS
    # ImageNet's fixed 3x3 depthwise-separable block after the stem (0: none)
    separable_channels: int = 0
    in_channels: int = 3
    options: dict = field(default_factory=dict, compare=False)

    # -- counting ---------------------------------------------------------
    def kernel_subsets(self) -> int:
        return sum(math.comb(len(self.kernel_sizes), j) for j in range(1, self.max_paths + 1))

    def choices_per_layer(self) -> int:
        return len(self.expansions) * self.kernel_subsets()

    def size(self) -> int:
        """Number of distinct architectures."""
        return self.choices_per_layer() ** len(self.layers)

    # -- architectures ----------------------------------------------------
    def sample(self, rng: random.Random) -> Arch:
        """The release's sampler: t uniform, then j ~ U{1..m}, then a uniform j-subset of the kernels."""
        layers = []
        for _ in self.layers:
            t = rng.choice(self.expansions)
            j = rng.randint(1, self.max_paths)
            layers.append(LayerChoice(t, tuple(sorted(rng.sample(self.kernel_sizes, j)))))
        return Arch(tuple(layers))

    def check(self, arch: Arch | str) -> Arch:
        """Return arch (an Arch, or parsed from its string) if it fits this space; ArchError naming the first problem.

        Cached by (space, arch): it runs on every training step and every scored batch.
        """
        if not isinstance(arch, (Arch, str)):
            raise ArchError(f"expected an Arch or its string 't:k,k|t:k|...'; got {type(arch).__name__}")
        try:
            return _checked(self, arch)
        except TypeError:  # unhashable parts (e.g. kernels given as a list): check without the cache
            return self._validate(arch)

    def _validate(self, arch: Arch | str) -> Arch:
        if isinstance(arch, str):
            arch = Arch.parse(arch)
        if len(arch.layers) != len(self.layers):
            raise ArchError(f"architecture has {len(arch.layers)} layers; space {self.name!r} has {len(self.layers)}")
        for i, c in enumerate(arch.layers):
            if c.expansion not in self.expansions:
                raise ArchError(f"layer {i}: expansion {c.expansion} is not one of {self.expansions}")
            if not c.kernels:
                raise ArchError(f"layer {i}: empty kernel set; choose 1 to {self.max_paths} of {self.kernel_sizes}")
            if len(set(c.kernels)) != len(c.kernels):
                raise ArchError(f"layer {i}: kernel set {c.kernels} repeats a kernel")
            unknown = [k for k in c.kernels if k not in self.kernel_sizes]
            if unknown:
                raise ArchError(f"layer {i}: kernel {unknown[0]} is not one of {self.kernel_sizes}")
            if len(c.kernels) > self.max_paths:
                raise ArchError(f"layer {i}: {len(c.kernels)} paths exceed the space's maximum of {self.max_paths}")
        return arch

    def parse(self, text: str) -> Arch:
        return self.check(Arch.parse(text))

    def largest(self) -> Arch:
        """Every layer at the largest expansion with the m largest kernels (the costliest subnet)."""
        kernels = tuple(sorted(self.kernel_sizes)[-self.max_paths:])
        return Arch(tuple(LayerChoice(max(self.expansions), kernels) for _ in self.layers))

    # -- cost -------------------------------------------------------------
    def resolutions(self) -> list[int]:
        """Input side of each searchable layer (square inputs)."""
        side = (self.input_size - 1) // self.stem_stride + 1
        sides = []
        for spec in self.layers:
            sides.append(side)
            side = (side - 1) // spec.stride + 1
        return sides + [side]

    def flops(self, arch: Arch) -> int:
        """Multiply-adds of the subnet's convolutions and classifier for one image.

        BatchNorm, activations, residual adds and pooling are not counted (the
        usual NAS convention); the same for both layouts.
        """
        arch = self.check(arch)
        sides = self.resolutions()
        s0 = sides[0]
        macs = 9 * self.in_channels * self.stem_channels * s0 * s0
        if self.separable_channels:
            macs += 9 * self.stem_channels * s0 * s0 + self.stem_channels * self.separable_channels * s0 * s0
        for spec, choice, side, out_side in zip(self.layers, arch.layers, sides, sides[1:]):
            hidden = spec.in_channels * choice.expansion
            macs += spec.in_channels * hidden * side * side
            macs += sum(k * k for k in choice.kernels) * hidden * out_side * out_side
            macs += hidden * spec.out_channels * out_side * out_side
        last = sides[-1]
        macs += self.layers[-1].out_channels * self.head_channels * last * last
        macs += self.head_channels * self.num_classes
        return macs

    def params(self, arch: Arch, layout: str = "mixpath") -> int:
        """Parameters of the stand-alone subnet (BN gammas and betas included, one BN row per layer)."""
        arch = self.check(arch)
        count = 9 * self.in_channels * self.stem_channels + 2 * self.stem_channels
        if self.separable_channels:
            c, s = self.stem_channels, self.separable_channels
            count += 9 * c + 2 * c + c * s + 2 * s
        for spec, choice in zip(self.layers, arch.layers):
            hidden = spec.in_channels * choice.expansion
            count += spec.in_channels * hidden + 2 * hidden
            count += sum(k * k for k in choice.kernels) * hidden
            # mixpath: one Shadow BN row after the sum; official: a BN per path
            count += 2 * hidden * (1 if layout == "mixpath" else len(choice.kernels))
            count += hidden * spec.out_channels + 2 * spec.out_channels
        count += self.layers[-1].out_channels * self.head_channels + 2 * self.head_channels
        count += self.head_channels * self.num_classes + self.num_classes
        return count

    def describe(self) -> str:
        return (f"space {self.name}: {len(self.layers)} searchable layers, m={self.max_paths}, "
                f"kernels {self.kernel_sizes}, expansions {self.expansions}, "
                f"{self.choices_per_layer()} choices per layer, {self.size():.3e} architectures")

    def to_dict(self) -> dict:
        return {"name": self.name, **self.options}


@functools.lru_cache(maxsize=4096)
def _checked(space: SearchSpace, arch: Arch | str) -> Arch:
    # Bounded: training samples a fresh arch per step, while scoring and calibration revisit the same few.
    return space._validate(arch)


def _build(name, stem, stem_stride, plan, head, *, num_classes, input_size, max_paths, kernel_sizes, expansions,
           width_mult, separable=0, **extra) -> SearchSpace:
    if not 1 <= max_paths <= 4:
        raise ValueError(f"max_paths must be between 1 and 4; got {max_paths}")
    kernel_sizes = tuple(sorted(set(kernel_sizes)))
    bad = [k for k in kernel_sizes if k % 2 == 0 or not 1 <= k <= 9]
    if bad or not kernel_sizes:
        raise ValueError(f"kernel sizes must be odd and between 1 and 9; got {kernel_sizes}")
    if max_paths > len(kernel_sizes):
        raise ValueError(f"max_paths {max_paths} exceeds the {len(kernel_sizes)} kernel sizes {kernel_sizes}")
    expansions = tuple(sorted(set(expansions)))
    if not expansions or min(expansions) < 1:
        raise ValueError(f"expansion rates must be positive integers; got {expansions}")
    if width_mult <= 0:
        raise ValueError(f"width multiplier must be positive; got {width_mult}")
    if num_classes < 2 or input_size < 1:
        raise ValueError(f"need at least 2 classes and a positive input size; got {num_classes}, {input_size}")
    w = lambda c: make_divisible(c * width_mult)  # noqa: E731
    layers, cin = [], w(separable or stem)
    for cout, stride in plan:
        layers.append(LayerSpec(cin, w(cout), stride))
        cin = w(cout)
    options = dict(max_paths=max_paths, kernel_sizes=list(kernel_sizes), expansions=list(expansions),
                   width_mult=width_mult, num_classes=num_classes, input_size=input_size, **extra)
    return SearchSpace(name, w(stem), stem_stride, tuple(layers), max(head, w(head)) if width_mult > 1 else head,
                       num_classes, input_size, max_paths, kernel_sizes, expansions,
                       w(separable) if separable else 0, options=options)


def cifar(*, max_paths=4, kernel_sizes=DEFAULT_KERNELS, expansions=DEFAULT_EXPANSIONS, width_mult=1.0,
          num_classes=10, input_size=32) -> SearchSpace:
    """S1 of the release: 12 layers, channels 32..320, stride 2 at layers 2 and 5."""
    channels = [32, 48, 48, 96, 96, 96, 192, 192, 192, 256, 256, 320, 320]
    plan = [(c, 2 if i in (2, 5) else 1) for i, c in enumerate(channels[1:])]
    return _build("cifar", 32, 1, plan, 1280, num_classes=num_classes, input_size=input_size, max_paths=max_paths,
                  kernel_sizes=kernel_sizes, expansions=expansions, width_mult=width_mult)


def imagenet(*, max_paths=4, kernel_sizes=DEFAULT_KERNELS, expansions=DEFAULT_EXPANSIONS, width_mult=1.0,
             num_classes=1000, input_size=224) -> SearchSpace:
    """MobileNetV2/FairNAS skeleton: stem 32 s2, separable block to 16, 19 searchable layers."""
    plan = []
    for cout, repeats, stride in ((32, 2, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1)):
        plan += [(cout, stride)] + [(cout, 1)] * (repeats - 1)
    return _build("imagenet", 32, 2, plan, 1280, num_classes=num_classes, input_size=input_size,
                  max_paths=max_paths, kernel_sizes=kernel_sizes, expansions=expansions, width_mult=width_mult,
                  separable=16)


def tiny(*, max_paths=4, kernel_sizes=DEFAULT_KERNELS, expansions=DEFAULT_EXPANSIONS, width_mult=1.0,
         num_classes=10, input_size=16) -> SearchSpace:
    """A small space for the embedded digits data and tests: 4 layers, 16x16 input."""
    plan = [(24, 2), (24, 1), (32, 2), (32, 1)]
    return _build("tiny", 16, 1, plan, 128, num_classes=num_classes, input_size=input_size, max_paths=max_paths,
                  kernel_sizes=kernel_sizes, expansions=expansions, width_mult=width_mult)


SPACES = {"cifar": cifar, "imagenet": imagenet, "tiny": tiny}


def get_space(name: str, **options) -> SearchSpace:
    """The space called `name` ('cifar', 'imagenet', 'tiny') with options (max_paths, kernel_sizes, ...)."""
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; choose one of {', '.join(SPACES)}")
    return SPACES[name](**options)


def space_from_dict(data: dict) -> SearchSpace:
    """Rebuild a space from `SearchSpace.to_dict()` (as stored in checkpoints)."""
    data = dict(data)
    name = data.pop("name")
    return get_space(name, **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


__all__ = ["Arch", "ArchError", "LayerChoice", "LayerSpec", "SearchSpace", "cifar", "imagenet", "tiny",
           "get_space", "space_from_dict", "make_divisible"]
