"""Checking a backend against the reference: used by tests/ and benchmarks/.

A backend passes when, for y, every gradient (x, each path weight, gamma, beta)
and the updated running statistics, its error against a float64 recomputation
is at most about twice the error of the `reference` backend run in the same
dtype, plus a small per-dtype floor for quantities PyTorch happens to compute
exactly. Outputs are poisoned: fresh allocations are filled with NaN
(torch.utils.deterministic.fill_uninitialized_memory), so a kernel that leaves
elements unwritten fails.
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, replace

import torch

from .api import mixed_depthwise_bn
from .contract import output_memory_format

# Error floor per dtype (relative RMS), about two units of rounding of the dtype.
ERROR_FLOOR = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-12}
ERROR_RATIO = 2.0
# `merged` is PyTorch's own half-precision depthwise conv over the merged K x K kernel, which on CPU
# rounds as it accumulates many taps; on tiny cases that flips activation masks and moves whole
# gradient elements. Its merging is checked exactly in float32/float64; in half precision it only
# has to stay near the truth.
HALF_PRECISION_FLOOR = {"merged": 0.15}


@dataclass(frozen=True)
class OpCase:
    N: int
    C: int
    H: int
    W: int
    kernels: tuple = (3, 5, 7, 9)
    stride: int = 1
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    training: bool = True
    activation: str = "relu6"
    momentum: float = 0.1
    eps: float = 1e-5
    # added to x: real activations are not centred, and a large mean is what exposes
    # statistics taken as a sum of squares or gradient sums that lose digits
    x_mean: float = 0.0

    def __str__(self):
        fmt = "cl" if self.channels_last else "nchw"
        mode = "train" if self.training else "eval"
        dt = str(self.dtype).replace("torch.", "")
        ks = "-".join(map(str, self.kernels))
        mean = f"_mean{self.x_mean:g}" if self.x_mean else ""
        return f"N{self.N}C{self.C}H{self.H}W{self.W}_k{ks}_s{self.stride}_{dt}_{fmt}_{mode}_{self.activation}{mean}"


def make_inputs(case: OpCase, device="cpu", seed: int = 0) -> dict:
    """Random inputs for `case`: x and weights in case.dtype, BN tensors float32, on `device`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.N, case.C, case.H, case.W, generator=g)
    if case.x_mean:
        x += case.x_mean
    weights = [torch.randn(case.C, 1, k, k, generator=g) / k for k in case.kernels]
    inputs = {
        "x": x,
        "weights": weights,
        "bn_weight": 1.0 + 0.5 * torch.randn(case.C, generator=g),
        "bn_bias": 0.5 * torch.randn(case.C, generator=g),
        "running_mean": 0.2 * torch.randn(case.C, generator=g),
        "running_var": 0.5 + torch.rand(case.C, generator=g),
        "dy": torch.randn(case.N, case.C, (case.H - 1) // case.stride + 1, (case.W - 1) // case.stride + 1, generator=g),
    }
    return cast_inputs(inputs, case.dtype, device, case.channels_last)


def cast_inputs(inputs: dict, dtype, device, channels_last: bool, stats_dtype=torch.float32) -> dict:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = {k: v.to(device=device, dtype=stats_dtype).clone() for k, v in inputs.items() if k.startswith(("bn_", "running_"))}
    out["x"] = inputs["x"].to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    out["dy"] = inputs["dy"].to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    out["weights"] = [w.to(device=device, dtype=dtype).clone() for w in inputs["weights"]]
    return out


@contextlib.contextmanager
def poisoned_allocations():
    """Fill every fresh allocation with NaN while active."""
    was_det = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    was_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_det, warn_only=was_warn)
        torch.utils.deterministic.fill_uninitialized_memory = was_fill


def run_case(backend: str, inputs: dict, case: OpCase, poison: bool = True) -> dict:
    """Forward + backward of `backend`; returns y, running stats and every gradient, on the CPU in float64."""
    leaves = {"x": inputs["x"], "bn_weight": inputs["bn_weight"], "bn_bias": inputs["bn_bias"]}
    leaves.update({f"w{k}": w for k, w in zip(case.kernels, inputs["weights"])})
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items()}
    rm, rv = inputs["running_mean"].clone(), inputs["running_var"].clone()
    weights = [leaves[f"w{k}"] for k in case.kernels]
    with poisoned_allocations() if poison else contextlib.nullcontext():
        y = mixed_depthwise_bn(leaves["x"], weights, leaves["bn_weight"], leaves["bn_bias"], rm, rv,
                               stride=case.stride, training=case.training, momentum=case.momentum, eps=case.eps,
                               activation=case.activation, backend=backend)
        y.backward(inputs["dy"])
    out = {"y": y, "running_mean": rm, "running_var": rv}
    out.update({f"d{k}": v.grad for k, v in leaves.items()})
    # .to keeps strides, so the layout check in compare_backend sees the backend's own
    return {k: v.detach().to("cpu", torch.float64) for k, v in out.items()}


def oracle(inputs: dict, case: OpCase) -> dict:
    """The reference backend in float64 on the same inputs (upcast), the ground truth."""
    f64 = cast_inputs(inputs, torch.float64, "cpu", False, stats_dtype=torch.float64)
    return run_case("reference", f64, replace(case, dtype=torch.float64, channels_last=False), poison=False)


def relative_errors(got: dict, truth: dict) -> dict:
    """Relative RMS error per quantity: robust to the odd element whose activation mask flips by rounding."""
    return {k: (torch.linalg.vector_norm(got[k] - truth[k]) / torch.linalg.vector_norm(truth[k]).clamp_min(1e-30)).item()
            if got[k] is not None and got[k].shape == truth[k].shape else float("inf") for k in truth}


def compare_backend(backend: str, case: OpCase, device="cpu", seed: int = 0) -> list[str]:
    """Problems found with `backend` on `case` (empty when it agrees); each names the quantity and errors."""
    inputs = make_inputs(case, device, seed)
    truth = oracle(inputs, case)
    got = run_case(backend, inputs, case)
    base = run_case("reference", inputs, case, poison=False)
    err, base_err = relative_errors(got, truth), relative_errors(base, truth)
    problems = []
    for key in truth:
        if got[key] is None or got[key].shape != truth[key].shape:
            problems.append(f"{key}: missing or shaped {None if got[key] is None else tuple(got[key].shape)}, "
                            f"expected {tuple(truth[key].shape)}")
            continue
        if not torch.isfinite(got[key]).all():
            problems.append(f"{key}: non-finite values (unwritten or overflowed elements)")
            continue
        floor = ERROR_FLOOR[case.dtype]
        if case.dtype in (torch.float16, torch.bfloat16):
            floor = HALF_PRECISION_FLOOR.get(backend, floor)
        limit = ERROR_RATIO * base_err[key] + floor
        if err[key] > limit:
            problems.append(f"{key}: error {err[key]:.3g} > limit {limit:.3g} (reference's own error {base_err[key]:.3g})")
    for key in ("y", "dx"):
        if not got[key].is_contiguous(memory_format=output_memory_format(inputs["x"])):
            problems.append(f"{key}: strides {got[key].stride()} do not follow x's memory format")
    return problems


def assert_backend_matches(backend: str, case: OpCase, device="cpu", seed: int = 0) -> None:
    problems = compare_backend(backend, case, device, seed)
    assert not problems, f"backend {backend!r} disagrees with the float64 reference on {case}:\n  " + "\n  ".join(problems)


def random_cases(count: int, seed: int, *, dtypes=(torch.float32,), max_size: int = 12, max_channels: int = 6,
                 max_batch: int = 3, kernel_set=(1, 3, 5, 7, 9)) -> list[OpCase]:
    """Random small cases: odd sizes, H or W below k, strides 1 and 2, kernel subsets, both modes, all activations."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        training = rng.random() < 0.6
        n_paths = rng.randint(1, 4)
        kernels = tuple(sorted(rng.sample(kernel_set, n_paths)))
        N = rng.randint(1, max_batch) if not training else rng.randint(2, max_batch)
        H, W = rng.randint(1, max_size), rng.randint(1, max_size)
        if training and (kernels == (1,) or H == W == 1):
            # Every path reduces to one tap per channel, which batch norm divides out: the true weight
            # gradient is zero and any backend's is rounding noise, so ratios of errors mean nothing.
            kernels = (1, 3) if kernels == (1,) else kernels
            H = max(H, 2)
        cases.append(OpCase(
            N=N, C=rng.randint(1, max_channels), H=H, W=W,
            kernels=kernels, stride=rng.choice((1, 2)), dtype=dtypes[i % len(dtypes)],
            channels_last=rng.random() < 0.3, training=training,
            activation=("relu6", "relu", "none")[i % 3],
        ))
    return cases
