"""Ideal bytes, multiply-adds and the roofline floor of one op case (FUSED_OP.md, "Roofline").

The ideal is the merged kernel (K = the largest active k) and the minimum
traffic: forward reads x and writes y; backward reads x and dy and writes dx;
each also moves the float32 merged weights (C x K x K; backward reads W and
writes dW). BatchNorm vectors (a few x C floats) are left out.
"""
from __future__ import annotations

from mixpath.ops.contract import output_size
from mixpath.ops.testing import OpCase


def _sizes(case: OpCase):
    K = max(case.kernels)
    el = case.dtype.itemsize
    x = case.N * case.C * case.H * case.W * el
    outputs = case.N * case.C * output_size(case.H, case.stride) * output_size(case.W, case.stride)
    w = case.C * K * K * 4
    return K, x, outputs, outputs * el, w


def ideal_bytes(case: OpCase) -> dict[str, int]:
    _, x, _, y, w = _sizes(case)
    fwd = x + y + w
    bwd = x + y + x + 2 * w  # read x and dy, write dx; read W, write dW
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}


def multiply_adds(case: OpCase) -> dict[str, int]:
    """K*K per output forward; 2*K*K backward (input gradient and weight gradient)."""
    K, _, outputs, _, _ = _sizes(case)
    fwd = outputs * K * K
    return {"fwd": fwd, "bwd": 2 * fwd, "fwdbwd": 3 * fwd}


def floor_seconds(nbytes: float, macs: float, copy_bytes_per_s: float, macs_per_s: float) -> float:
    """max(bytes / copy bandwidth, multiply-adds / FMA rate): no implementation can beat it."""
    return max(nbytes / copy_bytes_per_s, macs / macs_per_s)


def bound(nbytes: float, macs: float, copy_bytes_per_s: float, macs_per_s: float) -> str:
    """Which ceiling sets the floor: 'memory' or 'compute'."""
    return "memory" if nbytes / copy_bytes_per_s >= macs / macs_per_s else "compute"
