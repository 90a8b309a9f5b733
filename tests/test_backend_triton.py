"""Triton-specific checks the shared matrix (test_backends.py) does not make.

The shared matrix runs each case as one tile and one chunk under the CPU
interpreter; here the tiling is forced small so that several tiles, channel
blocks and chunks meet in every reduction, checked against float64 autograd.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mixpath.ops import available_backends, backend_status
from mixpath.ops.testing import poisoned_allocations

ROOT = Path(__file__).resolve().parents[1]


def require_triton(device):
    if "triton" not in available_backends(device):
        pytest.skip(f"triton on {device}: {backend_status(device)['triton']}")


def kernels():
    from mixpath.kernels import fused_dwconv_bn
    return fused_dwconv_bn


def make(N, C, H, W, K, channels_last, device, dtype=torch.float32, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g) + offset
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return {
        "x": x.to(device, dtype).contiguous(memory_format=fmt),
        "weight": (torch.randn(C, K, K, generator=g) / K).to(device),
        "gamma": (1 + 0.5 * torch.randn(C, generator=g)).to(device),
        "beta": (0.5 * torch.randn(C, generator=g)).to(device),
        "rmean": (0.2 * torch.randn(C, generator=g)).to(device),
        "rvar": (0.5 + torch.rand(C, generator=g)).to(device),
    }


def float64_truth(t, dy, stride, training, eps, activation):
    """y, batch stats and every gradient from PyTorch autograd in float64."""
    leaves = {k: t[k].detach().double().requires_grad_() for k in ("x", "weight", "gamma", "beta")}
    K = t["weight"].shape[-1]
    z = F.conv2d(leaves["x"], leaves["weight"][:, None], stride=stride, padding=K // 2, groups=t["x"].shape[1])
    if training:
        mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)
    else:
        mean, var = t["rmean"].double(), t["rvar"].double()
    u = (z - mean[:, None, None]) / torch.sqrt(var[:, None, None] + eps) * leaves["gamma"][:, None, None] \
        + leaves["beta"][:, None, None]
    y = {"relu6": F.relu6, "relu": F.relu, "none": lambda v: v}[activation](u)
    y.backward(dy.double())
    out = {"y": y, "mean": mean, "var": var}
    out.update({"d" + k: v.grad for k, v in leaves.items()})
    return {k: v.detach() for k, v in out.items()}


def run_kernels(t, dy, stride, training, eps, activation, **tiling):
    fk = kernels()
    y, mean, var = fk.forward(t["x"], t["weight"], t["gamma"], t["beta"], t["rmean"], t["rvar"], stride, training,
                              eps, activation, **tiling)
    dx, dw, dg, db = fk.backward(dy, t["x"], t["weight"], t["gamma"], t["beta"], mean, var, stride, training, eps,
                                 activation, **tiling)
    return {"y": y, "mean": mean, "var": var, "dx": dx, "dweight": dw, "dgamma": dg, "dbeta": db}


TILINGS = [
    # (N, H, W, channels_last, stride, training, K, activation, block_p, block_c)
    # block_c 1 is the GPU's NCHW tiling (B3 sums dW per thread); block_p 256 there: B3 tiles overhang chunks
    (2, 7, 9, False, 1, True, 5, "relu6", 32, 1),
    (4, 12, 11, False, 1, True, 5, "relu", 256, 1),
    (2, 7, 9, True, 2, True, 3, "relu", 16, 2),
    (2, 7, 9, False, 2, False, 3, "none", 16, 2),
    (2, 7, 9, True, 1, False, 5, "relu6", 16, 4),
]


@pytest.mark.parametrize("N,H,W,channels_last,stride,training,K,activation,block_p,block_c", TILINGS)
def test_many_tiles_blocks_and_chunks(device, N, H, W, channels_last, stride, training, K, activation, block_p,
                                      block_c):
    """Partial tiles, partial channel blocks and several chunks: every output written, float64-accurate."""
    require_triton(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    t = make(N, 5, H, W, K, channels_last, device)
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    dy = torch.randn(N, 5, Ho, Wo, generator=torch.Generator().manual_seed(1)).to(device).contiguous(memory_format=fmt)
    tiling = {"block_p": block_p, "block_c": block_c, "chunks": 3}
    p = kernels().plan(t["x"], N * Ho * Wo, channels_last, **tiling)
    assert p.chunks >= 2 and p.chunk_p % p.block_p == 0 and (N * Ho * Wo) % p.block_p != 0
    with poisoned_allocations():
        got = run_kernels(t, dy, stride, training, 1e-5, activation, **tiling)
    truth = float64_truth(t, dy, stride, training, 1e-5, activation)
    for key in ("y", "dx"):
        assert got[key].is_contiguous(memory_format=fmt), key
    for key in got:
        torch.testing.assert_close(got[key].double().cpu(), truth[key].cpu(), rtol=1e-4, atol=1e-5, msg=key)


def test_deterministic(device):
    """Two runs of forward and backward over several chunks give bit-identical results."""
    require_triton(device)
    t = make(3, 4, 8, 8, 5, False, device, dtype=torch.bfloat16)
    dy = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2)).to(device, torch.bfloat16)
    tiling = {"block_p": 32, "chunks": 4}
    first = run_kernels(t, dy, 1, True, 1e-5, "relu6", **tiling)
    second = run_kernels(t, dy, 1, True, 1e-5, "relu6", **tiling)
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_variance_with_large_mean(device):
    """Per-tile Chan merging keeps the variance accurate when |mean| >> std; in float32
    E[z^2] - E[z]^2 gets it wrong by the order of the variance itself here."""
    require_triton(device)
    t = make(4, 3, 9, 9, 1, False, device, offset=3000.0)
    t["weight"] = 1 + 0.1 * t["weight"]
    y, mean, var = kernels().forward(t["x"], t["weight"], t["gamma"], t["beta"], t["rmean"], t["rvar"], 1, True,
                                     1e-5, "none", block_p=16, chunks=5)
    truth = float64_truth(t, torch.zeros_like(y), 1, True, 1e-5, "none")
    torch.testing.assert_close(var.double().cpu(), truth["var"].cpu(), rtol=2e-4, atol=0)


def _backends_in_subprocess(interpret: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    code = "import mixpath; print(mixpath.available_backends('cpu'))"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          cwd=ROOT).stdout


def test_cpu_listing_needs_interpreter():
    """Triton is listed for CPU tensors only when the interpreter was chosen before import."""
    pytest.importorskip("triton")
    assert "triton" in _backends_in_subprocess(interpret=True)
    assert "triton" not in _backends_in_subprocess(interpret=False)



def _errors_at_large_plane(fk, case, offset, tiling):
    """Relative RMS errors of the kernels and of float32 `reference`, each against float64, on
    one-path `case` with x shifted by `offset` (a mean far from zero, as after a ReLU): y, the
    batch mean and variance, and every gradient."""
    from mixpath.ops.testing import make_inputs, oracle, relative_errors, run_case
    inputs = make_inputs(case)
    inputs["x"] = inputs["x"] + offset
    truth = oracle(inputs, case)
    base = run_case("reference", inputs, case, poison=False)
    weight = inputs["weights"][0][:, 0]
    args = (inputs["bn_weight"], inputs["bn_bias"], inputs["running_mean"], inputs["running_var"], case.stride)
    y, mean, var = fk.forward(inputs["x"], weight, *args, True, case.eps, case.activation, **tiling)
    dx, dw, dg, db = fk.backward(inputs["dy"], inputs["x"], weight, *args[:2], mean, var, case.stride, True,
                                 case.eps, case.activation, **tiling)
    got = {"y": y, "dx": dx, f"dw{case.kernels[0]}": dw[:, None], "dbn_weight": dg, "dbn_bias": db,
           "mean": mean, "var": var}
    # batch statistics: float64 and float32 (the reference's own) from the conv output
    conv = lambda x, w: F.conv2d(x, w, stride=case.stride, padding=w.shape[-1] // 2, groups=case.C)
    z64, z32 = conv(inputs["x"].double(), inputs["weights"][0].double()), conv(inputs["x"], inputs["weights"][0])
    truth.update(mean=z64.mean((0, 2, 3)), var=z64.var((0, 2, 3), unbiased=False))
    base.update(mean=z32.mean((0, 2, 3)).double(), var=z32.var((0, 2, 3), unbiased=False).double())
    truth = {k: truth[k] for k in got}
    return relative_errors({k: v.double() for k, v in got.items()}, truth), relative_errors(base, truth)


@pytest.mark.parametrize("H, K", [(224, 3), pytest.param(512, 3, marks=pytest.mark.slow),
                                  pytest.param(512, 9, marks=pytest.mark.slow)])
def test_large_plane_with_large_mean_matches_reference_accuracy(H, K):
    """(2, 2, H, H) inputs of mean 3, in the tiles of the interpreter's plan (B3's dW tiles are
    the GPU's NCHW ones): every output within 2x the float32 reference's error + floor; the batch
    mean and variance within 2x + 1e-7. A running mean updated tile by tile (the previous
    kernels) rounds by eps * |mean| per tile: 5.7x the reference's error in the mean, 11x in the
    variance, 5.3x in y at 224. At 512 dW is 2.2e-5 (K = 3) against reference's 3.0e-5: its
    error comes from dz's float32 inputs (batch statistics, dgamma, dbeta), which every backend
    shares; summing dz * x without x's mean adds 5e-7 (2e-7 with a pivot), so no pivot is taken.
    The 512 cases take minutes in the interpreter."""
    from mixpath.ops.testing import ERROR_FLOOR, ERROR_RATIO, OpCase
    require_triton("cpu")
    case = OpCase(N=2, C=2, H=H, W=H, kernels=(K,), activation="relu6")
    err, base = _errors_at_large_plane(kernels(), case, 3.0, {})
    for k in err:
        floor = 1e-7 if k in ("mean", "var") else ERROR_FLOOR[torch.float32]
        assert err[k] <= ERROR_RATIO * base[k] + floor, (k, err[k], base[k])


def test_every_launch_asks_for_fp_fusion(monkeypatch):
    """Each kernel launch passes LAUNCH_OPTIONS (enable_fp_fusion=True) explicitly."""
    require_triton("cpu")
    fk = kernels()
    seen = []

    class Recorder:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append((self.name, kwargs.get("enable_fp_fusion")))
                return self.kernel[grid](*args, **kwargs)
            return launch

    names = ["_fwd_stats", "_fwd_apply", "_bwd_stats", "_bwd_dz", "_bwd_dx", "_bwd_final"]
    for name in names:
        monkeypatch.setattr(fk, name, Recorder(name, getattr(fk, name)))
    t = make(2, 3, 5, 5, 3, False, "cpu")
    run_kernels(t, torch.randn(2, 3, 5, 5), 1, True, 1e-5, "relu6")
    assert fk.LAUNCH_OPTIONS == {"enable_fp_fusion": True}
    assert sorted(name for name, _ in seen) == sorted(names) and all(fusion is True for _, fusion in seen), seen


@pytest.mark.parametrize("shape,stride,problem", [
    ((2**16, 1, 2**8, 2**7), 1, "output positions per channel"),
    ((1, 2**15, 2**8, 2**8), 2, "elements per sample"),
])
def test_32_bit_index_guard(shape, stride, problem):
    """Shapes whose positions or per-sample offsets overflow int32 stop with a one-line ValueError."""
    require_triton("cpu")
    x = torch.zeros(1).expand(*shape)  # no memory behind it: the check comes before any copy
    weight = torch.zeros(shape[1], 3, 3)
    c = torch.zeros(shape[1])
    with pytest.raises(ValueError, match=problem + r".*2\*\*31"):
        kernels().forward(x, weight, c, c, c, c + 1, stride, True, 1e-5, "none")


def test_nchw_runs_in_channels_last_from_16_channels(device):
    """NCHW input with >= 16 channels runs the channels_last kernels: results bit-identical to
    channels_last input, returned in NCHW; forcing the NCHW kernels agrees to rounding."""
    require_triton(device)
    fk = kernels()
    t = make(2, 16, 6, 5, 3, False, device, offset=1.0)
    dy = torch.randn(2, 16, 6, 5, generator=torch.Generator().manual_seed(3)).to(device)
    assert fk.compute_format(t["x"]) == torch.channels_last
    assert fk.compute_format(t["x"][:, :15]) == torch.contiguous_format
    nchw = run_kernels(t, dy, 1, True, 1e-5, "relu6")
    cl = run_kernels({**t, "x": t["x"].contiguous(memory_format=torch.channels_last)},
                     dy.contiguous(memory_format=torch.channels_last), 1, True, 1e-5, "relu6")
    native = run_kernels(t, dy, 1, True, 1e-5, "relu6", layout="nchw")
    for key in ("y", "dx"):
        assert nchw[key].is_contiguous() and cl[key].is_contiguous(memory_format=torch.channels_last), key
    for key in nchw:
        assert torch.equal(nchw[key], cl[key]), key
        torch.testing.assert_close(native[key], nchw[key], rtol=1e-5, atol=1e-5, msg=key)


def test_program_count_leaves_results_unchanged(device):
    """The grid (programs per channel block, set from occupancy on a GPU) only schedules the
    fixed chunks: 1 or 3 programs over 5 chunks give bit-identical results."""
    require_triton(device)
    t = make(2, 3, 9, 8, 5, False, device)
    dy = torch.randn(2, 3, 9, 8, generator=torch.Generator().manual_seed(4)).to(device)
    runs = [run_kernels(t, dy, 1, True, 1e-5, "relu", block_p=32, chunks=5, programs=k) for k in (1, 3)]
    assert kernels().plan(t["x"], 2 * 9 * 8, False, block_p=32, chunks=5).chunks == 5
    for other in runs[1:]:
        for key in runs[0]:
            assert torch.equal(runs[0][key], other[key]), key
