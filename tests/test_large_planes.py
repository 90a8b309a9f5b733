"""Every backend on ImageNet-sized planes (and larger), against the float64 oracle.

The shared matrix (test_backends.py) uses planes of a few dozen positions, where
a reduction summed naively in float32 still looks exact: its error grows with
the plane (a 224 x 224 plane is 50176 terms a channel) and with the mean of the
activations (a sum of squares, or a gradient sum with x far from 0, cancels).
So these cases are large, have inputs with mean 3 and run in training mode,
and every output is checked: y, the running statistics, dx, each path's dW,
dgamma and dbeta. The default cases are cheap (small N and C: the Triton
interpreter takes about 20 s on one); `-m slow` sweeps plane sizes up to 1024
and batch sizes (the cpp backend's 4096 x 4096 case is in test_backend_cpp.py).
"""
import pytest
import torch

from mixpath.ops import BACKEND_NAMES, available_backends, backend_status
from mixpath.ops.testing import OpCase, assert_backend_matches, make_inputs, oracle, relative_errors, run_case

# `reference` is the yardstick of every other backend (their limit is twice its error), so
# its own error on these planes must stay small: a bound per dtype on the relative RMS error.
# Measured on DEFAULT_CASES: float32 at most 2e-5 (dW, where x's mean 3 cancels), bfloat16 7e-2.
# With relu or relu6 the bound covers y and the running statistics only: there the odd element
# whose u rounds across a kink moves a whole gradient element (1e-3 of dgamma on one of these
# planes), which the ratio rule absorbs but a fixed bound would not.
REFERENCE_BOUND = {torch.float32: 1e-4, torch.bfloat16: 0.2}
FLIP_FREE = ("y", "running_mean", "running_var")

DEFAULT_CASES = [
    OpCase(1, 2, 224, 224, kernels=(3, 5), x_mean=3.0, activation="none"),
    OpCase(2, 3, 224, 224, kernels=(3, 5, 7, 9), x_mean=3.0),
    OpCase(1, 17, 224, 224, kernels=(7, 9), x_mean=3.0, channels_last=True, dtype=torch.bfloat16, activation="relu"),
]
# The Triton interpreter (CPU) is too slow for more than the first.
INTERPRETED_CASES = DEFAULT_CASES[:1]

SWEEP_CASES = [
    OpCase(N, C, H, H, kernels=kernels, x_mean=3.0, dtype=dtype, stride=stride)
    for H, N, C, kernels, dtype, stride in [
        (112, 8, 4, (3, 5), torch.float32, 1),
        (112, 8, 4, (3, 5, 7, 9), torch.bfloat16, 2),
        (224, 4, 2, (3, 5, 7, 9), torch.float32, 1),
        (224, 16, 1, (5,), torch.float32, 2),
        (512, 2, 2, (3,), torch.float32, 1),
        (512, 1, 2, (7, 9), torch.bfloat16, 1),
        (1024, 1, 1, (3, 9), torch.float32, 1),
        (1024, 2, 1, (5,), torch.float32, 1),
    ]
]


def require(backend, device):
    if backend not in available_backends(device):
        pytest.skip(f"{backend} on {device}: {backend_status(device)[backend]}")


def interpreted(backend, device):
    return backend == "triton" and device == "cpu"


def check(backend, case, device):
    if backend != "reference":
        assert_backend_matches(backend, case, device)
        return
    inputs = make_inputs(case, device)
    err = relative_errors(run_case("reference", inputs, case), oracle(inputs, case))
    if case.activation != "none":
        err = {k: err[k] for k in FLIP_FREE}
    bound = REFERENCE_BOUND[case.dtype]
    assert all(e <= bound for e in err.values()), f"reference on {case}: errors {err} above {bound}"


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("case", DEFAULT_CASES, ids=str)
def test_large_plane(backend, device, case):
    require(backend, device)
    if interpreted(backend, device) and case not in INTERPRETED_CASES:
        pytest.skip("the Triton interpreter takes minutes on this case; it runs on a GPU")
    check(backend, case, device)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("case", SWEEP_CASES, ids=str)
def test_large_plane_sweep(backend, device, case):
    require(backend, device)
    if interpreted(backend, device) and case.H > 112:
        pytest.skip("the Triton interpreter takes many minutes on planes over 112; they run on a GPU")
    check(backend, case, device)
