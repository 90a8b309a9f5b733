"""Every backend against a float64 recomputation of the reference, forward and backward.

One matrix for all backends; a backend not available on a device is skipped
with the reason backend_status() gives. Triton on CPU runs in its slow
interpreter, so it gets fewer random cases unless `-m slow` is asked for.
"""
import itertools
import math
from dataclasses import replace

import pytest
import torch

from mixpath.ops import BACKEND_NAMES, available_backends, backend_status
from mixpath.ops.registry import BACKENDS
from mixpath.ops.testing import OpCase, assert_backend_matches, make_inputs, random_cases, run_case

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def require(backend, device):
    if backend not in available_backends(device):
        pytest.skip(f"{backend} on {device}: {backend_status(device)[backend]}")


def case_count(backend, device):
    return 6 if (backend == "triton" and device == "cpu") else 24


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("seed", range(2))
def test_random_cases(backend, device, seed):
    require(backend, device)
    for case in random_cases(case_count(backend, device), seed=100 * seed + 7, dtypes=DTYPES):
        assert_backend_matches(backend, case, device, seed=seed)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_random_sweep(backend, device):
    require(backend, device)
    for case in random_cases(60, seed=2024, dtypes=DTYPES, max_size=20, max_channels=12, max_batch=4):
        assert_backend_matches(backend, case, device)


EDGE_CASES = [
    OpCase(1, 3, 5, 5, kernels=(3,), training=False),                      # N = 1 in eval
    OpCase(2, 4, 2, 3, kernels=(9,), stride=1),                             # H, W below k
    OpCase(3, 2, 7, 1, kernels=(1, 9), stride=2),                           # W = 1, stride 2
    OpCase(2, 5, 9, 11, kernels=(3, 5, 7, 9), stride=2, channels_last=True),
    OpCase(2, 3, 6, 6, kernels=(5, 7), dtype=torch.bfloat16, activation="none"),
    OpCase(2, 3, 6, 6, kernels=(1,), dtype=torch.float16, training=False, activation="relu"),
]


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("case", EDGE_CASES, ids=str)
def test_edge_cases(backend, device, case):
    require(backend, device)
    assert_backend_matches(backend, case, device)


def compiled_backends(device):
    return [b for b in available_backends(device) if BACKENDS[b].op_names is not None]


@pytest.mark.parametrize("backend", [b for b in BACKEND_NAMES if BACKENDS[b].op_names])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(backend, device, training, channels_last):
    require(backend, device)
    case = OpCase(2, 3, 5, 6, kernels=(3, 5), stride=2, training=training, channels_last=channels_last)
    inp = make_inputs(case, device)
    W = torch.randn(3, 5, 5, device=device)
    fwd_name, bwd_name = BACKENDS[backend].op_names
    ns, fwd, bwd = fwd_name.split("::")[0], fwd_name.split("::")[1], bwd_name.split("::")[1]
    fwd_op, bwd_op = getattr(getattr(torch.ops, ns), fwd), getattr(getattr(torch.ops, ns), bwd)
    args = (inp["x"].requires_grad_(), W.requires_grad_(), inp["bn_weight"].requires_grad_(),
            inp["bn_bias"].requires_grad_(), inp["running_mean"], inp["running_var"], 2, training, 1e-5, "relu6")
    torch.library.opcheck(fwd_op, args)
    y, mean, var = fwd_op(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    bargs = (inp["dy"], inp["x"].detach(), W.detach(), inp["bn_weight"].detach(), inp["bn_bias"].detach(), mean, var,
             2, training, 1e-5, "relu6")
    torch.library.opcheck(bwd_op, bargs)


@pytest.mark.parametrize("backend", [b for b in BACKEND_NAMES if BACKENDS[b].op_names])
def test_torch_compile_fullgraph(backend, device):
    """A model calling the op compiles without graph breaks and matches eager, gradients included."""
    require(backend, device)
    from mixpath.ops import mixed_depthwise_bn

    torch._dynamo.reset()
    case = OpCase(2, 4, 7, 7, kernels=(3, 7))
    inp = make_inputs(case, device)

    def layer(x, w3, w7, g, b, rm, rv):
        y = mixed_depthwise_bn(x, [w3, w7], g, b, rm, rv, backend=backend)
        return (y * y).sum()

    def grads(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (inp["x"], *inp["weights"], inp["bn_weight"], inp["bn_bias"])]
        rm, rv = inp["running_mean"].clone(), inp["running_var"].clone()
        loss = fn(*leaves, rm, rv)
        loss.backward()
        return [loss, rm, rv] + [t.grad for t in leaves]

    eager = grads(layer)
    compiled = grads(torch.compile(layer, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor"))
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# Where x holds NaN or infinity, every backend gives what reference gives, element for element:
# each output's NaN and infinities in the same places, the finite rest close. In eval mode dz
# is dy * act'(u) * scale alone, finite where dy is (reference's dx stays finite), act' at NaN
# is PyTorch's (0 for relu6, 1 for relu) and act(NaN) is NaN. Infinity goes through one path
# only: with several, reference sums inf * w_i of both signs to NaN where the merged kernel has
# one finite tap. Output sizes are multiples of 32 elements, so PyTorch's vectorised kernels see
# every element (its scalar tail of relu6's backward passes NaN where the vector body does not).
# The corner position has taps whose output lies in the padding: no dW product there.
NONFINITE_SHAPES = [
    OpCase(2, 4, 8, 8, kernels=(3, 5)),                                      # cpp: blocked engine
    OpCase(2, 3, 16, 20, kernels=(3,)),                                      # cpp: plane engine backward
    OpCase(2, 20, 8, 8, kernels=(7,), channels_last=True),                   # two channel blocks
    OpCase(2, 2, 16, 16, kernels=(5,), stride=2),
]
NONFINITE_POSITIONS = ((1, -1, 3, 4), (1, -1, 0, 0))  # the last channel: in the second block at C = 20


def nonfinite_params():
    """(case, value, position, interpreted) for every mode, activation and value on every shape and
    position; `interpreted` marks one shape and position per (mode, activation, value), in turn,
    the subset the Triton interpreter runs (all of them take it 1.5 minutes)."""
    variants = list(itertools.product(NONFINITE_SHAPES, NONFINITE_POSITIONS))
    params = []
    triples = itertools.product((True, False), ("relu6", "relu", "none"), (math.nan, math.inf, -math.inf))
    for t, (training, activation, value) in enumerate(triples):
        for v, (shape, position) in enumerate(variants):
            kernels = shape.kernels if math.isnan(value) else shape.kernels[-1:]
            case = replace(shape, training=training, activation=activation, kernels=kernels)
            params.append(pytest.param(case, value, position, v == t % len(variants),
                                       id=f"{case}-{value}-x{'_'.join(map(str, position))}"))
    return params


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NumPy, in the interpreter
@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("case, value, position, interpreted", nonfinite_params())
def test_nonfinite_x_matches_reference(backend, device, case, value, position, interpreted):
    require(backend, device)
    if backend == "triton" and device == "cpu" and not interpreted:
        pytest.skip("the Triton interpreter runs one shape and position per mode, activation and value")
    inputs = make_inputs(case, device)
    inputs["x"][position] = value
    got = run_case(backend, inputs, case)
    want = run_case("reference", inputs, case, poison=False)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4, equal_nan=True,
                                   msg=lambda m, key=key: f"{key} on {case} with x{list(position)} = {value}: {m}")
