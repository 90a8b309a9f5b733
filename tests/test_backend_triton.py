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
