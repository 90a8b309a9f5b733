"""Search spaces and architectures.

A space fixes the skeleton (stem, searchable inverted-bottleneck layers, head)
and the per-layer choices: an expansion rate t and a non-empty set of at most
m depthwise kernels. An `Arch` is one choice per layer; its compact string is
`t:k,k|t:k|...` (layers separated by `|`), e.g. `6:3,5|3:7`.

A space may be *restricted* to pockets (`SearchSpace.restrict`, e.g. the result
of `mixpath shrink`): each `Pocket` allows, per layer, a subset of the choices,
and the restricted space is the union of the pockets' Cartesian products. It
keeps the whole API of the full space: `check` refuses architectures outside
every pocket, `sample` draws only inside them, `size` counts the union. The
per-layer encoding (`choices_per_layer`) stays the full space's. Such a space
is saved as a space file, `{"base": space.to_dict(), "pockets": [...]}`,
read back with `load_space_file`.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_KERNELS = (3, 5, 7, 9)
DEFAULT_EXPANSIONS = (3, 6)
POCKET_SAMPLING = ("arch", "pocket")
SPACE_FILE_FORMAT = "mixpath-space"


class ArchError(ValueError):
    """An architecture string, JSON or choice that does not fit its space."""


class SpaceFileError(ArchError):
    """A space file that is unreadable, malformed, or of another space than the run's."""


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


def _choice_order(c: LayerChoice):
    # the encoding's gene order (mixpath.search): expansion, then kernel count, then the kernels
    return c.expansion, len(c.kernels), c.kernels


@dataclass(frozen=True)
class Pocket:
    """A box of architectures: per layer, the choices it allows; it holds every combination of them."""
    layers: tuple[tuple[LayerChoice, ...], ...]

    @classmethod
    def of(cls, archs) -> "Pocket":
        """The smallest pocket holding `archs`: per layer, the choices they use."""
        archs = list(archs)
        if not archs:
            raise ArchError("a pocket needs at least one architecture")
        return cls(tuple(tuple(sorted(set(column), key=_choice_order)) for column in zip(*(a.layers for a in archs))))

    def __contains__(self, arch) -> bool:
        return len(arch.layers) == len(self.layers) and all(c in allowed for c, allowed in zip(arch.layers, self.layers))

    def size(self) -> int:
        return math.prod(len(allowed) for allowed in self.layers)

    def intersection(self, other: "Pocket") -> "Pocket | None":
        layers = tuple(tuple(c for c in a if c in b) for a, b in zip(self.layers, other.layers))
        return Pocket(layers) if all(layers) else None

    def sample(self, rng: random.Random) -> Arch:
        """Uniform over the pocket's architectures."""
        return Arch(tuple(rng.choice(allowed) for allowed in self.layers))

    def to_list(self) -> list[list[str]]:
        return [[str(c) for c in allowed] for allowed in self.layers]

    @classmethod
    def from_list(cls, data) -> "Pocket":
        """Read `to_list()`'s form: per layer, a list of 't:k,k' strings."""
        if not isinstance(data, list) or not all(isinstance(layer, list) for layer in data):
            raise ArchError(f"a pocket is a list of layers, each a list of choices like '6:3,5'; got {data!r}")
        layers = []
        for allowed in data:
            choices = []
            for text in allowed:
                arch = Arch.parse(text) if isinstance(text, str) else None
                if arch is None or len(arch.layers) != 1:
                    raise ArchError(f"pocket choice {text!r} is not one layer's choice like '6:3,5'")
                choices.append(arch.layers[0])
            layers.append(tuple(sorted(set(choices), key=_choice_order)))
        return cls(tuple(layers))


@functools.lru_cache(maxsize=256)
def _union_size(pockets: tuple[Pocket, ...]) -> int:
    # each pocket counts the architectures no earlier pocket holds; overlaps are pockets too
    total = 0
    for i, pocket in enumerate(pockets):
        overlaps = tuple(o for o in (pocket.intersection(p) for p in pockets[:i]) if o is not None)
        total += pocket.size() - _union_size(overlaps)
    return total


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
    # the restriction (see the module docstring): () is the full space
    pockets: tuple[Pocket, ...] = ()
    # how `sample` draws in a restricted space: "arch" uniform over its architectures, "pocket" a uniform
    # pocket, then uniform inside it (small pockets as often as large ones). Not part of the space's identity.
    pocket_sampling: str = field(default="arch", compare=False)

    # -- counting ---------------------------------------------------------
    def kernel_subsets(self) -> int:
        return sum(math.comb(len(self.kernel_sizes), j) for j in range(1, self.max_paths + 1))

    def choices_per_layer(self) -> int:
        return len(self.expansions) * self.kernel_subsets()

    def size(self) -> int:
        """Number of distinct architectures (in a restricted space: in the union of its pockets)."""
        if self.pockets:
            return _union_size(self.pockets)
        return self.choices_per_layer() ** len(self.layers)

    # -- restriction --------------------------------------------------------
    @property
    def restricted(self) -> bool:
        return bool(self.pockets)

    def unrestricted(self) -> "SearchSpace":
        """The full space (self if not restricted)."""
        return dataclasses.replace(self, pockets=(), pocket_sampling="arch") if self.pockets else self

    def restrict(self, pockets, sampling: str = "arch") -> "SearchSpace":
        """This space limited to the union of `pockets` (Pocket objects); `sampling` as in `pocket_sampling`.

        ArchError for no pocket, a pocket of the wrong length, or a choice the full space lacks.
        """
        full = self.unrestricted()
        pockets = tuple(pockets)
        if not pockets:
            raise ArchError("a restricted space needs at least one pocket; an empty shrink result cannot be "
                            "used: loosen --tolerance or raise --samples")
        if sampling not in POCKET_SAMPLING:
            raise ArchError(f"pocket sampling {sampling!r} is unknown; choose one of {', '.join(POCKET_SAMPLING)}")
        for n, pocket in enumerate(pockets):
            if len(pocket.layers) != len(full.layers) or not all(pocket.layers):
                raise ArchError(f"pocket {n} has {len(pocket.layers)} layers (some empty?); space {full.name!r} "
                                f"has {len(full.layers)}, each pocket layer allows at least one choice")
            for i, allowed in enumerate(pocket.layers):
                for c in allowed:
                    try:
                        full._validate(Arch(tuple(c if j == i else other[0] for j, other in
                                                  enumerate(pocket.layers))))
                    except ArchError as e:
                        raise ArchError(f"pocket {n}: {e}") from None
        return dataclasses.replace(full, pockets=pockets, pocket_sampling=sampling)

    # -- architectures ----------------------------------------------------
    def sample(self, rng: random.Random) -> Arch:
        """The release's sampler: t uniform, then j ~ U{1..m}, then a uniform j-subset of the kernels.

        In a restricted space: by `pocket_sampling`, uniform over the pockets' architectures ("arch") or a
        uniform pocket, then uniform inside it ("pocket").
        """
        if self.pockets:
            return self.sample_uniform(rng) if self.pocket_sampling == "arch" else rng.choice(self.pockets).sample(rng)
        layers = []
        for _ in self.layers:
            t = rng.choice(self.expansions)
            j = rng.randint(1, self.max_paths)
            layers.append(LayerChoice(t, tuple(sorted(rng.sample(self.kernel_sizes, j)))))
        return Arch(tuple(layers))

    def sample_uniform(self, rng: random.Random) -> Arch:
        """Uniform over the space's architectures (the full space: every choice of every layer equally likely)."""
        pockets = self.pockets or (self._full_pocket(),)
        weights = [p.size() for p in pockets]
        while True:
            # a pocket by size, then uniform inside it; an arch k pockets hold is kept with probability 1/k
            arch = rng.choices(pockets, weights=weights)[0].sample(rng)
            holders = sum(arch in p for p in pockets)
            if holders == 1 or rng.random() * holders < 1:
                return arch

    def _full_pocket(self) -> Pocket:
        subsets = [combo for j in range(1, self.max_paths + 1) for combo in itertools.combinations(self.kernel_sizes, j)]
        choices = tuple(LayerChoice(t, combo) for t in self.expansions for combo in subsets)
        return Pocket((choices,) * len(self.layers))

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
        if self.pockets and not any(arch in p for p in self.pockets):
            raise ArchError(self._outside(arch))
        return arch

    def _outside(self, arch: Arch) -> str:
        """The one line for an arch no pocket holds, naming the nearest pocket and a layer it does not allow."""
        misses = [[i for i, (c, allowed) in enumerate(zip(arch.layers, p.layers)) if c not in allowed]
                  for p in self.pockets]
        n = min(range(len(misses)), key=lambda k: len(misses[k]))
        i = misses[n][0]
        allowed = ", ".join(map(str, self.pockets[n].layers[i]))
        return (f"architecture {arch} is outside the {len(self.pockets)} pocket(s) of this shrunk space: the "
                f"nearest, pocket {n}, allows at layer {i} only {allowed}, not {arch.layers[i]}; choose an "
                "architecture inside the pockets (see the space file) or use the full space")

    def parse(self, text: str) -> Arch:
        return self.check(Arch.parse(text))

    def largest(self) -> Arch:
        """Every layer at the largest expansion with the m largest kernels (the costliest subnet).

        In a restricted space: the costliest (FLOPs) of the pockets' archs that take, per layer, the largest
        expansion, then the largest kernel area.
        """
        if self.pockets:
            tops = [Arch(tuple(max(allowed, key=lambda c: (c.expansion, sum(k * k for k in c.kernels)))
                               for allowed in p.layers)) for p in self.pockets]
            return max(tops, key=self.flops)
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
        text = (f"space {self.name}: {len(self.layers)} searchable layers, m={self.max_paths}, "
                f"kernels {self.kernel_sizes}, expansions {self.expansions}, "
                f"{self.choices_per_layer()} choices per layer, {self.unrestricted().size():.3e} architectures")
        if self.pockets:
            text += (f"; shrunk to {len(self.pockets)} pocket(s) holding {self.size():.3e} "
                     f"(sampled {'uniformly over architectures' if self.pocket_sampling == 'arch' else 'pocket by pocket'})")
        return text

    def to_dict(self) -> dict:
        """The full space's name and options; a restricted space adds its "pockets" (see `space_from_dict`)."""
        data = {"name": self.name, **self.options}
        if self.pockets:
            data["pockets"] = [p.to_list() for p in self.pockets]
        return data


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
    """Rebuild a space from `SearchSpace.to_dict()` (as stored in checkpoints), restricted if it has pockets."""
    data = dict(data)
    name = data.pop("name")
    pockets = data.pop("pockets", None)
    space = get_space(name, **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    return space.restrict([Pocket.from_list(p) for p in pockets]) if pockets is not None else space


def space_file(space: SearchSpace, **extra) -> dict:
    """The content of a space file for the restricted `space`: {"format", "base", "pockets", **extra}."""
    if not space.pockets:
        raise ArchError("only a restricted space (with pockets) makes a space file")
    return {"format": SPACE_FILE_FORMAT, "base": space.unrestricted().to_dict(),
            "pockets": [{"layers": p.to_list(), "size": p.size()} for p in space.pockets], **extra}


def load_space_file(path, space: SearchSpace, sampling: str = "arch") -> SearchSpace:
    """`space` restricted to the pockets of the space file at `path` (written by `mixpath shrink`).

    SpaceFileError (one line) if the file is missing or malformed, or if it was
    made for another space than `space` (its full version: name and options).
    `sampling` is how the result's `sample` draws (see `SearchSpace.pocket_sampling`).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpaceFileError(f"space file {path} does not exist: pass the space.json of `mixpath shrink`") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise SpaceFileError(f"space file {path} is not valid JSON ({e}); pass the space.json of `mixpath shrink`"
                             ) from None
    if not isinstance(data, dict) or data.get("format") != SPACE_FILE_FORMAT or not isinstance(data.get("base"), dict):
        raise SpaceFileError(f"{path} is not a mixpath space file (no {SPACE_FILE_FORMAT!r} format with a 'base'); "
                             "pass the space.json of `mixpath shrink`")
    # through JSON, so tuples and lists compare equal to what the file holds
    full = json.loads(json.dumps(space.unrestricted().to_dict()))
    if data["base"] != full:
        key = next(k for k in sorted(set(full) | set(data["base"])) if full.get(k) != data["base"].get(k))
        raise SpaceFileError(f"space file {path} shrinks another space ({key} = {data['base'].get(key)!r}, here "
                             f"{full.get(key)!r}); shrink this run's space, or use the run the file was made from")
    pockets = data.get("pockets")
    if not isinstance(pockets, list) or not all(isinstance(p, dict) and "layers" in p for p in pockets):
        raise SpaceFileError(f"space file {path}: 'pockets' must be a list of {{\"layers\": [...]}} objects")
    try:
        return space.restrict([Pocket.from_list(p["layers"]) for p in pockets], sampling)
    except ArchError as e:
        raise SpaceFileError(f"space file {path}: {e}") from None


__all__ = ["Arch", "ArchError", "LayerChoice", "LayerSpec", "POCKET_SAMPLING", "Pocket", "SearchSpace",
           "SpaceFileError", "cifar", "imagenet", "tiny", "get_space", "load_space_file", "make_divisible",
           "space_file", "space_from_dict"]
