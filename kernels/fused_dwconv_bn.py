"""Triton kernels for the fused op on the merged kernel: depthwise conv + BatchNorm + activation.

Inputs are those of compiled_op.py's schema: x (N, C, H, W) in float32, float16
or bfloat16, NCHW or channels_last; the merged kernel W (C, K, K) float32, K odd
<= 9, stride S in {1, 2}, padding K // 2. Every sum is accumulated in float32.

Passes (T = one read or write of an x-sized tensor in x's dtype)
----------------------------------------------------------------
forward, training (2 launches, 3 T):
  F1 `_fwd_stats`  read x, compute z tile by tile; sums of z - pivot and of its
                   square, the pivot being the chunk's first tile mean, give one
                   (mean, M2) per (chunk, channel): their rounding scales with the
                   spread of z, not |mean| (unlike a sum of squares, or a running
                   mean updated per tile), however many tiles a chunk has.
  F2 `_fwd_apply`  merge the chunk partials of its channels (fixed order),
                   recompute z from x, write y = act(z * scale + shift).
                   Programs of chunk 0 write save_mean / save_var.
forward, eval (1 launch, 2 T): F2 alone, BN folded into the conv output
  (scale = gamma * invstd, shift = beta - mean * scale, from the running stats).
backward (4 launches in training, 3 in eval; 8 T in float32, 10 T in half):
  B1 `_bwd_stats`  (training) read x and dy, recompute z and u, per-(chunk,
                   channel) partial sums of du and du * zhat.
  B2 `_bwd_dz`     read x and dy, recompute z, form dz (training: with dbeta and
                   dgamma reduced from B1's partials; eval: du * scale, and the
                   dbeta / dgamma partials are summed here), write dz.
  B3 `_bwd_dx`     read dz at the K*K shifted positions and x once: dx (the
                   transposed conv) and, from the same dz values, per-chunk
                   partials of dW. With stride 2 each output position owns a
                   2 x 2 block of inputs and each parity class visits only the
                   taps that reach it. Each tap's dW products are summed over the
                   tile and added to a per-chunk accumulator spread over the
                   threads (K*K accumulators per thread spilled at K = 9).
  B4 `_bwd_final`  sum the partials of dW, dgamma and dbeta in a fixed order.
dz is the one intermediate in memory: dx needs dz at K*K neighbours, and
recomputing it there would redo K*K convolutions per output. It is float32
whatever x's dtype: dW = sum dz * x cancels (exactly to zero for a single 1x1
path, by BatchNorm's scale invariance), so dz rounded to half precision would
leave dW dominated by that rounding; it also keeps dx to one rounding.

NaN and infinity in x give what the `reference` backend gives, element for element:
act keeps NaN, act' at NaN is PyTorch's (0 for relu6, 1 for relu), eval-mode dz
is du * scale alone (no 0 * NaN from z - mean), and a dW product whose output
position lies in the padding is masked out rather than taken as 0 * x.

Saved for backward: x and two float32 vectors per channel (batch mean and
biased variance); z is recomputed. The `reference` backend (one conv per path,
their sum, F.batch_norm, activation) keeps the BN input z and, for relu6, the
activation input u: one or two activation-sized tensors (N * C * Ho * Wo
elements of x's dtype) per layer more than here, besides the per-path outputs
and partial sums it materialises during the forward. Passes with 4 paths:
reference about 22 forward and 33 backward; here 3 and 8 to 10, with 81
instead of 164 multiply-adds per output and conv pass at K = 9.

Grid and tiling
---------------
A chunk is a fixed range of the flattened output positions p = (n, ho, wo),
the same for all the kernels of a call, walked in tiles of BLOCK_P positions x
BLOCK_C channels; each has its partials (chunks x C floats), which consumers
reduce in a fixed order. The chunks (at most MAX_CHUNKS per channel block) are
set by the shape alone, so the summation order, and the results, are the same
on every device. Every kernel but B4 runs on a grid (channel blocks, programs),
each program walking every programs-th chunk; `programs` comes from occupancy:
SM count x the programs an SM holds by the compiled kernel's registers, shared
memory and threads (Triton's n_regs and metadata.shared), or
ESTIMATED_PROGRAMS_PER_SM where those are not reported. No atomics: results are
bit-identical from run to run and across GPUs for a given shape. Positions and
per-sample offsets are int32: N * Ho * Wo and C * H * W must stay below 2**31
(checked; offsets across samples become int64 when x has 2**31 elements or
more). Every launch passes LAUNCH_OPTIONS: fp fusion is asked for explicitly,
as Triton 3.10 turns it off by default.
Layout: NCHW input with CHANNELS_LAST_MIN_C = 16 channels or more is converted
to channels_last and its y and dx converted back (two extra passes each way),
as NCHW tiles load one element per tap and thread where channels_last loads
vectors of channels; this is an estimate of the faster path, not a measurement.
Fewer channels would leave most of a channel vector masked, so they stay NCHW.
- NCHW: BLOCK_C = 1, so a program owns one channel: its weights are uniform
  scalars and a tile is a contiguous run of each (n, c) plane.
- channels_last: BLOCK_C = 16 channels, contiguous in memory, so each shifted
  load is a vector load across channels; W is passed transposed, (K*K, C), so
  a tap's weights are one too.
Shapes, strides and K are compile-time constants: tap offsets from the centre
pointer are constants the loads take as immediates, and division by Ho * Wo and
Wo becomes multiply-shift. NCHW unrolls all K*K taps; channels_last loops over
kernel rows (K*K unrolled taps of channel vectors spill registers at K >= 7).
The price is one compilation per layer shape (Triton caches them on disk). The second kernel of each pair walks its
programs and tiles in reverse, so its first reads hit what the previous kernel
left in L2. No autotuning: a fixed tiling keeps results identical across
processes (summation order depends on it); `plan` is the one place to tune.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ACTIVATION_CODES = {"none": 0, "relu": 1, "relu6": 2}
# Given to every launch: Triton 3.10 turns fp fusion off by default, which would
# split each multiply-add of the convolutions into a multiply and a rounded add.
LAUNCH_OPTIONS = {"enable_fp_fusion": True}
# Chunks per channel block: the fixed partition of the positions that sets the
# reduction order. Consumers reduce every chunk's partials, so keep it small.
MAX_CHUNKS = 128
# Programs per SM assumed where the compiled kernel's resources are not known.
ESTIMATED_PROGRAMS_PER_SM = 4
# NCHW input with at least this many channels runs in channels_last: a channel
# vector of 16 is full there, while NCHW tiles load one element per tap and thread.
CHANNELS_LAST_MIN_C = 16
# Positions and per-sample offsets are int32 in the kernels.
INDEX_LIMIT = 2**31
# The interpreter converts float32 to bfloat16 by truncation where GPUs round to
# nearest even; rounding by hand there keeps CPU tests as accurate as the GPU.
_ROUND_BF16_BY_HAND = tl.constexpr(INTERPRET)


# ----------------------------------------------------------------------------
# shared device helpers
# ----------------------------------------------------------------------------
@triton.jit
def _walk(i, n, REVERSE: tl.constexpr):
    """Step i of n, counted from the end when REVERSE: a second pass starts where the first ended (its data is
    still in L2)."""
    return n - 1 - i if REVERSE else i


@triton.jit
def _positions(p0, p_end, HOWO: tl.constexpr, WO: tl.constexpr, BLOCK_P: tl.constexpr, BIG: tl.constexpr):
    """Flattened output positions p0 .. p0 + BLOCK_P as (valid, n, ho, wo)."""
    p = p0 + tl.arange(0, BLOCK_P)
    ok = p < p_end
    n = p // HOWO
    r = p - n * HOWO
    h = r // WO
    w = r - h * WO
    if BIG:
        n = n.to(tl.int64)
    return ok, n, h, w


@triton.jit
def _conv_row(acc, xa, wa, rm, wi0, tcm, W: tl.constexpr, SXW: tl.constexpr, SWT: tl.constexpr,
              K: tl.constexpr, PAD: tl.constexpr):
    """Add one kernel row's K taps to acc: xa, wa point at the row's input and weights."""
    for b in tl.static_range(K):
        wi = wi0 + b
        m = _tile_mask(rm & ((wi >= 0) & (wi < W)), tcm)
        xv = tl.load(xa + (b - PAD) * SXW, mask=m, other=0.0)
        acc += xv.to(tl.float32) * _load_channels(wa + b * SWT, tcm)[None, :]
    return acc


@triton.jit
def _dwconv(xp, wp, h, w, ok, tcm,
            H: tl.constexpr, W: tl.constexpr, SXH: tl.constexpr, SXW: tl.constexpr, SWT: tl.constexpr,
            K: tl.constexpr, S: tl.constexpr, UNROLL: tl.constexpr, BLOCK_P: tl.constexpr,
            BLOCK_C: tl.constexpr):
    """z for one tile. xp: pointers to each output's centre tap; (h, w): output coordinates;
    wp: pointers to the tile channels' first weight, SWT apart from tap to tap; tcm: tile
    channel mask (None: all channels exist). Each tap's offset within its row, and with
    UNROLL every tap's offset, is a compile-time constant the load takes as an immediate.
    Without UNROLL the rows are a loop: with a vector of channels per thread, unrolling
    all K*K taps lets the compiler hoist every load and spill."""
    PAD: tl.constexpr = K // 2
    hi0 = h * S - PAD
    wi0 = w * S - PAD
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    if UNROLL:
        for a in tl.static_range(K):
            hi = hi0 + a
            rm = ok & ((hi >= 0) & (hi < H))
            acc = _conv_row(acc, xp + (a - PAD) * SXH, wp + a * K * SWT, rm, wi0, tcm, W, SXW, SWT, K, PAD)
    else:
        for a in range(K):
            hi = hi0 + a
            rm = ok & ((hi >= 0) & (hi < H))
            acc = _conv_row(acc, xp + (a - PAD) * SXH, wp + a * K * SWT, rm, wi0, tcm, W, SXW, SWT, K, PAD)
    return acc


@triton.jit
def _tile_mask(ok, tcm):
    """[BLOCK_P, BLOCK_C] mask from the position mask and the tile channel mask (None: all there)."""
    if tcm is None:
        m = ok[:, None]
    else:
        m = ok[:, None] & tcm[None, :]
    return m


@triton.jit
def _tile_mask3(ok, tcm):
    """_tile_mask for [E, TP, BLOCK_C] tiles."""
    if tcm is None:
        m = ok[:, :, None]
    else:
        m = ok[:, :, None] & tcm[None, None, :]
    return m


@triton.jit
def _load_channels(ptr, tcm):
    if tcm is None:
        v = tl.load(ptr)
    else:
        v = tl.load(ptr, mask=tcm, other=0.0)
    return v


@triton.jit
def _cast_for(v, ptr):
    """v (float32) in the element type of ptr, rounded to nearest even."""
    if _ROUND_BF16_BY_HAND:
        if ptr.dtype.element_ty == tl.bfloat16:
            bits = v.to(tl.uint32, bitcast=True)
            bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
            v = bits.to(tl.float32, bitcast=True)
    return v.to(ptr.dtype.element_ty)


@triton.jit
def _act(u, ACT: tl.constexpr):
    """act(u), NaN kept as PyTorch does (Triton's default min/max return the other operand)."""
    if ACT == 2:
        u = tl.minimum(tl.maximum(u, 0.0, propagate_nan=tl.PropagateNan.ALL), 6.0,
                       propagate_nan=tl.PropagateNan.ALL)
    elif ACT == 1:
        u = tl.maximum(u, 0.0, propagate_nan=tl.PropagateNan.ALL)
    return u


@triton.jit
def _act_grad(u, g, ACT: tl.constexpr):
    """g * act'(u) as PyTorch's CPU backward kernels give it: 0 at the kinks; at u = NaN
    0 for relu6 (hardtanh_backward, vectorised: 0 < u < 6), 1 for relu (threshold_backward:
    zero only where u <= 0)."""
    if ACT == 2:
        g = tl.where((u > 0.0) & (u < 6.0), g, 0.0)
    elif ACT == 1:
        g = tl.where(u <= 0.0, 0.0, g)
    return g


@triton.jit
def _sum_partials(ptr, c, cm, NC, C: tl.constexpr, NC_PAD: tl.constexpr):
    """Sum over chunks of a (NC, C) partial buffer for channels c, in a fixed tree order."""
    k = tl.arange(0, NC_PAD)
    m = (k < NC)[:, None] & cm[None, :]
    v = tl.load(ptr + k[:, None] * C + c[None, :], mask=m, other=0.0)
    return tl.sum(v, axis=0)


@triton.jit
def _merge_stats(mean_ptr, m2_ptr, c, cm, NP, NC, CHUNK_P, C: tl.constexpr, NC_PAD: tl.constexpr):
    """Batch mean and biased variance from per-chunk (mean, M2) partials (Chan's parallel formula)."""
    k = tl.arange(0, NC_PAD)
    km = k < NC
    m = km[:, None] & cm[None, :]
    offs = k[:, None] * C + c[None, :]
    means = tl.load(mean_ptr + offs, mask=m, other=0.0)
    m2s = tl.load(m2_ptr + offs, mask=m, other=0.0)
    cnt = tl.where(km, tl.minimum(NP - k * CHUNK_P, CHUNK_P), 0).to(tl.float32)[:, None]
    total = NP * 1.0
    mean = tl.sum(cnt * means, axis=0) / total
    d = means - mean[None, :]
    var = tl.sum(m2s + cnt * d * d, axis=0) / total
    return mean, var


@triton.jit
def _bn_coefficients(gamma_ptr, beta_ptr, mean, var, eps, c, cm):
    inv = 1.0 / tl.sqrt(var + eps)
    scale = tl.load(gamma_ptr + c, mask=cm, other=0.0) * inv
    shift = tl.load(beta_ptr + c, mask=cm, other=0.0) - mean * scale
    return inv, scale, shift


# ----------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------
@triton.jit
def _fwd_stats(x_ptr, w_ptr, pmean_ptr, pm2_ptr, NP, NC, CHUNK_P,
               C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, HO: tl.constexpr, WO: tl.constexpr,
               SXN: tl.constexpr, SXC: tl.constexpr, SXH: tl.constexpr, SXW: tl.constexpr,
               SWC: tl.constexpr, SWT: tl.constexpr, K: tl.constexpr, S: tl.constexpr, BIG: tl.constexpr,
               EVEN_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    tcm = None if EVEN_C else cm
    wp = w_ptr + c * SWC
    for chunk in range(tl.program_id(1), NC, tl.num_programs(1)):
        p_start = chunk * CHUNK_P
        p_end = tl.minimum(p_start + CHUNK_P, NP)
        pivot = tl.zeros((BLOCK_C,), dtype=tl.float32)
        s1 = tl.zeros((BLOCK_C,), dtype=tl.float32)
        s2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for p0 in range(p_start, p_end, BLOCK_P):
            ok, n, h, w = _positions(p0, p_end, HO * WO, WO, BLOCK_P, BIG)
            xp = x_ptr + ((n * SXN + h * (S * SXH) + w * (S * SXW))[:, None] + (c * SXC)[None, :])
            z = _dwconv(xp, wp, h, w, ok, tcm, H, W, SXH, SXW, SWT, K, S, BLOCK_C == 1, BLOCK_P, BLOCK_C)
            # Sums of z - pivot, the pivot being the chunk's first tile mean: their rounding
            # scales with the spread of z, not with |mean|, however many tiles they run over
            # (a running mean updated per tile rounds by eps * |mean| at every tile).
            cnt = tl.minimum(p_end - p0, BLOCK_P).to(tl.float32)
            pivot = tl.where(p0 == p_start, tl.sum(z, axis=0) / cnt, pivot)  # masked positions give z = 0
            d = tl.where(ok[:, None], z - pivot[None, :], 0.0)
            s1 += tl.sum(d, axis=0)
            s2 += tl.sum(d * d, axis=0)
        count = (p_end - p_start).to(tl.float32)
        tl.store(pmean_ptr + chunk * C + c, pivot + s1 / count, mask=cm)
        tl.store(pm2_ptr + chunk * C + c, s2 - s1 * (s1 / count), mask=cm)


@triton.jit
def _fwd_apply(x_ptr, w_ptr, y_ptr, gamma_ptr, beta_ptr, rmean_ptr, rvar_ptr, pmean_ptr, pm2_ptr,
               smean_ptr, svar_ptr, eps, NP, NC, CHUNK_P,
               C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, HO: tl.constexpr, WO: tl.constexpr,
               SXN: tl.constexpr, SXC: tl.constexpr, SXH: tl.constexpr, SXW: tl.constexpr,
               SYN: tl.constexpr, SYC: tl.constexpr, SYH: tl.constexpr, SYW: tl.constexpr,
               SWC: tl.constexpr, SWT: tl.constexpr, K: tl.constexpr, S: tl.constexpr, BIG: tl.constexpr,
               EVEN_C: tl.constexpr, TRAINING: tl.constexpr, ACT: tl.constexpr,
               REVERSE: tl.constexpr, NC_PAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_c = _walk(tl.program_id(0), tl.num_programs(0), REVERSE)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    tcm = None if EVEN_C else cm
    wp = w_ptr + c * SWC
    if TRAINING:
        mean, var = _merge_stats(pmean_ptr, pm2_ptr, c, cm, NP, NC, CHUNK_P, C, NC_PAD)
    else:
        mean = tl.load(rmean_ptr + c, mask=cm, other=0.0)
        var = tl.load(rvar_ptr + c, mask=cm, other=1.0)
    if tl.program_id(1) == 0:
        tl.store(smean_ptr + c, mean, mask=cm)
        tl.store(svar_ptr + c, var, mask=cm)
    inv, scale, shift = _bn_coefficients(gamma_ptr, beta_ptr, mean, var, eps, c, cm)
    for step in range(tl.program_id(1), NC, tl.num_programs(1)):
        chunk = _walk(step, NC, REVERSE)
        p_start = chunk * CHUNK_P
        p_end = tl.minimum(p_start + CHUNK_P, NP)
        n_tiles = tl.cdiv(p_end - p_start, BLOCK_P)
        for t in range(0, n_tiles):
            p0 = p_start + _walk(t, n_tiles, REVERSE) * BLOCK_P
            ok, n, h, w = _positions(p0, p_end, HO * WO, WO, BLOCK_P, BIG)
            xp = x_ptr + ((n * SXN + h * (S * SXH) + w * (S * SXW))[:, None] + (c * SXC)[None, :])
            z = _dwconv(xp, wp, h, w, ok, tcm, H, W, SXH, SXW, SWT, K, S, BLOCK_C == 1, BLOCK_P, BLOCK_C)
            y = _act(z * scale[None, :] + shift[None, :], ACT)
            yo = (n * SYN + h * SYH + w * SYW)[:, None] + (c * SYC)[None, :]
            tl.store(y_ptr + yo, _cast_for(y, y_ptr), mask=_tile_mask(ok, tcm))


# ----------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------
@triton.jit
def _bwd_stats(x_ptr, w_ptr, dy_ptr, gamma_ptr, beta_ptr, smean_ptr, svar_ptr, pdb_ptr, pdg_ptr,
               eps, NP, NC, CHUNK_P,
               C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, HO: tl.constexpr, WO: tl.constexpr,
               SXN: tl.constexpr, SXC: tl.constexpr, SXH: tl.constexpr, SXW: tl.constexpr,
               SYN: tl.constexpr, SYC: tl.constexpr, SYH: tl.constexpr, SYW: tl.constexpr,
               SWC: tl.constexpr, SWT: tl.constexpr, K: tl.constexpr, S: tl.constexpr, BIG: tl.constexpr,
               EVEN_C: tl.constexpr, ACT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    tcm = None if EVEN_C else cm
    wp = w_ptr + c * SWC
    mean = tl.load(smean_ptr + c, mask=cm, other=0.0)
    var = tl.load(svar_ptr + c, mask=cm, other=1.0)
    inv, scale, shift = _bn_coefficients(gamma_ptr, beta_ptr, mean, var, eps, c, cm)
    for chunk in range(tl.program_id(1), NC, tl.num_programs(1)):
        p_start = chunk * CHUNK_P
        p_end = tl.minimum(p_start + CHUNK_P, NP)
        db = tl.zeros((BLOCK_C,), dtype=tl.float32)
        dg = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for p0 in range(p_start, p_end, BLOCK_P):
            ok, n, h, w = _positions(p0, p_end, HO * WO, WO, BLOCK_P, BIG)
            xp = x_ptr + ((n * SXN + h * (S * SXH) + w * (S * SXW))[:, None] + (c * SXC)[None, :])
            z = _dwconv(xp, wp, h, w, ok, tcm, H, W, SXH, SXW, SWT, K, S, BLOCK_C == 1, BLOCK_P, BLOCK_C)
            yo = (n * SYN + h * SYH + w * SYW)[:, None] + (c * SYC)[None, :]
            g = tl.load(dy_ptr + yo, mask=_tile_mask(ok, tcm), other=0.0).to(tl.float32)
            du = _act_grad(z * scale[None, :] + shift[None, :], g, ACT)
            db += tl.sum(du, axis=0)
            dg += tl.sum(du * (z - mean[None, :]), axis=0)
        tl.store(pdb_ptr + chunk * C + c, db, mask=cm)
        tl.store(pdg_ptr + chunk * C + c, dg * inv, mask=cm)


@triton.jit
def _bwd_dz(x_ptr, w_ptr, dy_ptr, dz_ptr, gamma_ptr, beta_ptr, smean_ptr, svar_ptr, pdb_ptr, pdg_ptr,
            eps, NP, NC, CHUNK_P,
            C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, HO: tl.constexpr, WO: tl.constexpr,
            SXN: tl.constexpr, SXC: tl.constexpr, SXH: tl.constexpr, SXW: tl.constexpr,
            SYN: tl.constexpr, SYC: tl.constexpr, SYH: tl.constexpr, SYW: tl.constexpr,
            SWC: tl.constexpr, SWT: tl.constexpr, K: tl.constexpr, S: tl.constexpr, BIG: tl.constexpr,
            EVEN_C: tl.constexpr, TRAINING: tl.constexpr, ACT: tl.constexpr,
            REVERSE: tl.constexpr, NC_PAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_c = _walk(tl.program_id(0), tl.num_programs(0), REVERSE)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    tcm = None if EVEN_C else cm
    wp = w_ptr + c * SWC
    mean = tl.load(smean_ptr + c, mask=cm, other=0.0)
    var = tl.load(svar_ptr + c, mask=cm, other=1.0)
    inv, scale, shift = _bn_coefficients(gamma_ptr, beta_ptr, mean, var, eps, c, cm)
    if TRAINING:
        # dz = scale * (du - dbeta / n - zhat * dgamma / n) = scale * du + zc * (z - mean) + z0
        total = NP * 1.0
        zc = -scale * inv * _sum_partials(pdg_ptr, c, cm, NC, C, NC_PAD) / total
        z0 = -scale * _sum_partials(pdb_ptr, c, cm, NC, C, NC_PAD) / total
    for step in range(tl.program_id(1), NC, tl.num_programs(1)):
        chunk = _walk(step, NC, REVERSE)
        p_start = chunk * CHUNK_P
        p_end = tl.minimum(p_start + CHUNK_P, NP)
        db = tl.zeros((BLOCK_C,), dtype=tl.float32)
        dg = tl.zeros((BLOCK_C,), dtype=tl.float32)
        n_tiles = tl.cdiv(p_end - p_start, BLOCK_P)
        for t in range(0, n_tiles):
            p0 = p_start + _walk(t, n_tiles, REVERSE) * BLOCK_P
            ok, n, h, w = _positions(p0, p_end, HO * WO, WO, BLOCK_P, BIG)
            xp = x_ptr + ((n * SXN + h * (S * SXH) + w * (S * SXW))[:, None] + (c * SXC)[None, :])
            z = _dwconv(xp, wp, h, w, ok, tcm, H, W, SXH, SXW, SWT, K, S, BLOCK_C == 1, BLOCK_P, BLOCK_C)
            yo = (n * SYN + h * SYH + w * SYW)[:, None] + (c * SYC)[None, :]
            m = _tile_mask(ok, tcm)
            g = tl.load(dy_ptr + yo, mask=m, other=0.0).to(tl.float32)
            du = _act_grad(z * scale[None, :] + shift[None, :], g, ACT)
            if TRAINING:
                dz = du * scale[None, :] + (z - mean[None, :]) * zc[None, :] + z0[None, :]
            else:
                dz = du * scale[None, :]
                db += tl.sum(du, axis=0)
                dg += tl.sum(du * (z - mean[None, :]), axis=0)
            tl.store(dz_ptr + yo, _cast_for(dz, dz_ptr), mask=m)
        if not TRAINING:
            tl.store(pdb_ptr + chunk * C + c, db, mask=cm)
            tl.store(pdg_ptr + chunk * C + c, dg * inv, mask=cm)


@triton.jit
def _bwd_dx(dz_ptr, x_ptr, w_ptr, dx_ptr, pdw_ptr, NP, NC, CHUNK_P,
            C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, HO: tl.constexpr, WO: tl.constexpr,
            SXN: tl.constexpr, SXC: tl.constexpr, SXH: tl.constexpr, SXW: tl.constexpr,
            SYN: tl.constexpr, SYC: tl.constexpr, SYH: tl.constexpr, SYW: tl.constexpr,
            SWC: tl.constexpr, SWT: tl.constexpr, K: tl.constexpr, S: tl.constexpr, BIG: tl.constexpr,
            EVEN_C: tl.constexpr, KK_PAD: tl.constexpr, TP: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dx, and per-chunk partials of dW from the same shifted dz values.

    Output position (n, i, j) owns the S x S input positions (S*i + ph, S*j + pw).
    Tap (a, b) reaches parity class (ph, pw) from dz at (i + (ph + PAD - a) / S,
    j + (pw + PAD - b) / S) when both divisions are exact, so with S = 2 each
    class visits only its own quarter of the taps.

    A tile is [E, TP, BLOCK_C] with E = BLOCK_P // TP, axis 0 within each thread.
    Each tap's dW products are summed over the tile at once (within the thread
    over E, then across threads) and added to a (K*K, BLOCK_C) accumulator spread
    over the threads: a per-thread accumulator for every tap would hold K*K
    registers per channel for the whole chunk and spill at K = 9, and would sum
    each thread's products in one long float32 run.
    """
    PAD: tl.constexpr = K // 2
    E: tl.constexpr = BLOCK_P // TP
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    tcm = None if EVEN_C else cm
    wp = w_ptr + c * SWC
    c3 = c[None, None, :]
    taps = tl.arange(0, KK_PAD)[:, None]
    for chunk in range(tl.program_id(1), NC, tl.num_programs(1)):
        dw = tl.zeros((KK_PAD, BLOCK_C), dtype=tl.float32)
        p_start = chunk * CHUNK_P
        p_end = tl.minimum(p_start + CHUNK_P, NP)
        for p0 in range(p_start, p_end, BLOCK_P):
            p = p0 + (tl.arange(0, E)[:, None] * TP + tl.arange(0, TP)[None, :])
            ok = p < p_end
            n = p // (HO * WO)
            i = p % (HO * WO) // WO
            j = p % WO
            if BIG:
                n = n.to(tl.int64)
            gp = dz_ptr + (n * SYN + i * SYH + j * SYW)[:, :, None] + c3 * SYC
            for ph in tl.static_range(S):
                hi = i * S + ph
                for pw in tl.static_range(S):
                    wi = j * S + pw
                    pm = ok & (hi < H) & (wi < W)
                    xo = (n * SXN + hi * SXH + wi * SXW)[:, :, None] + c3 * SXC
                    xm = _tile_mask3(pm, tcm)
                    xv = tl.load(x_ptr + xo, mask=xm, other=0.0).to(tl.float32)
                    acc = tl.zeros((E, TP, BLOCK_C), dtype=tl.float32)
                    # the rows a with (ph + PAD - a) divisible by S
                    for a in range((ph + PAD) % S, K, S):
                        acc, dw = _dx_row(acc, dw, gp, wp, xv, pm, i, j, a, tcm, taps, ph, pw, HO, WO, SYH, SYW,
                                          SWT, K, S)
                    tl.store(dx_ptr + xo, _cast_for(acc, dx_ptr), mask=xm)
        t2 = tl.arange(0, KK_PAD)[:, None]
        tl.store(pdw_ptr + chunk * (C * K * K) + c[None, :] * (K * K) + t2, dw, mask=(t2 < K * K) & cm[None, :])


@triton.jit
def _dx_row(acc, dw, gp, wp, xv, pm, i, j, a, tcm, taps, ph: tl.constexpr, pw: tl.constexpr,
            HO: tl.constexpr, WO: tl.constexpr, SYH: tl.constexpr, SYW: tl.constexpr, SWT: tl.constexpr,
            K: tl.constexpr, S: tl.constexpr):
    """Kernel row a's taps for parity class (ph, pw) of _bwd_dx: dx into acc, dW tile sums into dw."""
    PAD: tl.constexpr = K // 2
    di = (ph + PAD - a) // S
    ii = i + di
    rm = pm & ((ii >= 0) & (ii < HO))
    ga = gp + di * SYH
    wa = wp + a * K * SWT
    for b in tl.static_range(K):
        if (pw + PAD - b) % S == 0:
            jj = j + (pw + PAD - b) // S
            m = _tile_mask3(rm & ((jj >= 0) & (jj < WO)), tcm)
            g = tl.load(ga + (pw + PAD - b) // S * SYW, mask=m, other=0.0).to(tl.float32)
            acc += g * _load_channels(wa + b * SWT, tcm)[None, None, :]
            # masked: where the output lies in the padding there is no product, not 0 * x (NaN at x = inf)
            gx = tl.where(m, g * xv, 0.0)
            dw += tl.where(taps == a * K + b, tl.sum(tl.sum(gx, axis=0), axis=0)[None, :], 0.0)
    return acc, dw


@triton.jit
def _bwd_final(pdw_ptr, pdb_ptr, pdg_ptr, dw_ptr, db_ptr, dg_ptr, NC,
               C: tl.constexpr, KK: tl.constexpr, KK_PAD: tl.constexpr, NC_PAD: tl.constexpr,
               BLOCK_C: tl.constexpr):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    tl.store(db_ptr + c, _sum_partials(pdb_ptr, c, cm, NC, C, NC_PAD), mask=cm)
    tl.store(dg_ptr + c, _sum_partials(pdg_ptr, c, cm, NC, C, NC_PAD), mask=cm)
    taps = tl.arange(0, KK_PAD)
    offs = c[:, None] * KK + taps[None, :]
    m = cm[:, None] & (taps < KK)[None, :]
    acc = tl.zeros((BLOCK_C, KK_PAD), dtype=tl.float32)
    for k in range(0, NC):
        acc += tl.load(pdw_ptr + k * (C * KK) + offs, mask=m, other=0.0)
    tl.store(dw_ptr + offs, acc, mask=m)


# ----------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """How one call is tiled: BLOCK_P positions x BLOCK_C channels per tile, `chunks`
    ranges of `chunk_p` positions each (a multiple of BLOCK_P). The chunks fix the
    reduction order; a kernel's grid is (channel blocks, programs), each program
    walking every programs-th chunk, `programs` set at launch from occupancy
    unless fixed here."""
    block_p: int
    block_c: int
    chunks: int
    chunk_p: int
    num_warps: int
    programs: int | None = None

    @property
    def nc_pad(self) -> int:
        return triton.next_power_of_2(self.chunks)

    def dx_tile(self, itemsize: int) -> tuple[int, int]:
        """(BLOCK_P, TP) of B3. Its tiles are [E, TP, BLOCK_C], TP positions spanning the
        threads the channel vectors leave, so the first axis lies within each thread and
        each tap's dW products are summed there before crossing threads. E = 4 with one
        channel per program; 2 with channel vectors, whose K = 9 tiles spill at 4."""
        lanes_c = max(1, self.block_c // max(1, 16 // itemsize))
        tp = max(1, min(self.block_p, 32 * self.num_warps // lanes_c))
        return (4 if self.block_c == 1 else 2) * tp, tp

    def meta(self, C: int) -> dict:
        """Launch parameters shared by the tiled kernels."""
        return dict(BLOCK_P=self.block_p, BLOCK_C=self.block_c, EVEN_C=C % self.block_c == 0,
                    num_warps=self.num_warps)


def plan(x: torch.Tensor, positions: int, channels_last: bool, *, block_p: int | None = None,
         block_c: int | None = None, chunks: int | None = None, programs: int | None = None) -> Plan:
    """The tiling for x with `positions` = N * Ho * Wo outputs per channel.

    It depends on the shape, layout and dtype only, never on the device, so
    results are the same on every GPU. block_p, block_c, chunks and programs
    override the heuristics (tests use them to exercise several tiles, channel
    blocks, chunks and programs on small inputs); block_p and block_c must be
    powers of two.
    """
    C = x.shape[1]
    if block_c is None:
        # the interpreter pays per program and per operation, not per element:
        # one program for all channels and one tile per program keep it fast
        block_c = min(16, triton.next_power_of_2(C)) if (channels_last or INTERPRET) else 1
    if block_p is None:
        block_p = 64 if channels_last else 1024
        if INTERPRET:
            block_p = min(4096, triton.next_power_of_2(positions))
    block_p = max(block_p, 16)
    tiles = triton.cdiv(positions, block_p)
    chunks = max(1, min(MAX_CHUNKS if chunks is None else chunks, tiles))
    tiles_per_chunk = triton.cdiv(tiles, chunks)
    chunks = triton.cdiv(tiles, tiles_per_chunk)
    return Plan(block_p, block_c, chunks, tiles_per_chunk * block_p, num_warps=4, programs=programs)


_RESIDENT: dict = {}


def _resident_programs(kernel, x: torch.Tensor, args: tuple, meta: dict) -> int:
    """Programs of `kernel`, so specialised, the device runs at once: SM count x the
    programs one SM holds by the compiled kernel's registers, shared memory and
    threads (ESTIMATED_PROGRAMS_PER_SM where Triton does not report them). 1 off
    CUDA, where the interpreter pays per program."""
    if not x.is_cuda:
        return 1
    key = (kernel.fn.__name__, x.device, tuple(sorted(meta.items())),
           tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
    if key not in _RESIDENT:
        props = torch.cuda.get_device_properties(x.device)
        per_sm = ESTIMATED_PROGRAMS_PER_SM
        compiled = kernel.warmup(*args, grid=(1, 1), **meta, **LAUNCH_OPTIONS)
        compiled._init_handles()  # loads the module; n_regs is known only after
        n_regs, shared = getattr(compiled, "n_regs", 0), compiled.metadata.shared
        if n_regs:
            warps = compiled.metadata.num_warps
            regs_per_warp = triton.cdiv(n_regs * 32, 256) * 256  # allocated per warp, in units of 256
            per_sm = min(getattr(props, "regs_per_multiprocessor", 65536) // (regs_per_warp * warps),
                         getattr(props, "max_threads_per_multi_processor", 2048) // (32 * warps),
                         getattr(props, "shared_memory_per_multiprocessor", 2**30) // max(shared, 1), 32)
        _RESIDENT[key] = props.multi_processor_count * max(1, per_sm)
    return _RESIDENT[key]


def _launch(kernel, call: "_Call", *args, **meta) -> None:
    """kernel over (channel blocks, programs), with LAUNCH_OPTIONS."""
    p = call.plan
    programs = p.programs or triton.cdiv(_resident_programs(kernel, call.x, args, meta), call.grid[0])
    kernel[(call.grid[0], max(1, min(programs, p.chunks)))](*args, **meta, **LAUNCH_OPTIONS)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return torch.contiguous_format
    return torch.channels_last


def compute_format(x: torch.Tensor, layout: str | None = None) -> torch.memory_format:
    """The layout the kernels run x in: channels_last input stays so, NCHW input is
    converted when it has CHANNELS_LAST_MIN_C channels or more (a full channel vector).
    layout "nchw" or "channels_last" forces one (tests)."""
    if layout not in (None, "nchw", "channels_last"):
        raise ValueError(f"layout must be None, 'nchw' or 'channels_last'; got {layout!r}")
    if layout is None:
        channels_last = _memory_format(x) == torch.channels_last or x.shape[1] >= CHANNELS_LAST_MIN_C
    else:
        channels_last = layout == "channels_last"
    return torch.channels_last if channels_last else torch.contiguous_format


def _check(x: torch.Tensor, weight: torch.Tensor, stride: int, activation: str) -> None:
    if x.dim() != 4 or weight.dim() != 3 or weight.shape[0] != x.shape[1] or weight.shape[1] != weight.shape[2]:
        raise ValueError(f"expected x (N, C, H, W) and weight (C, K, K); "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    if weight.shape[-1] % 2 == 0:
        raise ValueError(f"kernel size must be odd; got {weight.shape[-1]}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2; got {stride}")
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {tuple(ACTIVATION_CODES)}; got {activation!r}")
    N, C, H, W = x.shape
    positions = N * ((H - 1) // stride + 1) * ((W - 1) // stride + 1)
    if positions >= INDEX_LIMIT:
        raise ValueError(f"x {tuple(x.shape)} with stride {stride} has {positions} output positions per channel; "
                         f"the Triton kernels index them in 32 bits (< 2**31): split the batch")
    if C * H * W >= INDEX_LIMIT:
        raise ValueError(f"x {tuple(x.shape)} has {C * H * W} elements per sample; the Triton kernels index a "
                         f"sample in 32 bits (< 2**31): use fewer channels or smaller planes")


@dataclass
class _Call:
    """What the kernels of one forward or backward call share."""
    x: torch.Tensor  # in the compute layout
    fmt: torch.memory_format  # the compute layout
    out_fmt: torch.memory_format  # the caller's layout, that y and dx are returned in
    weight: torch.Tensor  # float32, (C, K*K) or, channels_last, (K*K, C)
    plan: Plan
    args: dict  # compile-time shape, stride and tiling arguments
    grid: tuple  # (channel blocks, chunks)
    positions: int


def _prepare(x, weight, stride: int, activation: str, tiling: dict) -> _Call:
    _check(x, weight, stride, activation)
    out_fmt = _memory_format(x)
    tiling = dict(tiling)
    fmt = compute_format(x, tiling.pop("layout", None))
    channels_last = fmt == torch.channels_last
    x = x.contiguous(memory_format=fmt)
    N, C, H, W = x.shape
    K = weight.shape[-1]
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    weight = weight.to(torch.float32).reshape(C, K * K)
    # channels_last reads W as (K*K, C): a tap's weights for a channel block are one vector load
    weight = (weight.t() if channels_last else weight).contiguous()
    swc, swt = (1, C) if channels_last else (K * K, 1)
    p = plan(x, N * Ho * Wo, channels_last, **tiling)
    out_strides = torch.empty((N, C, Ho, Wo), device="meta", memory_format=fmt).stride()
    args = dict(C=C, H=H, W=W, HO=Ho, WO=Wo, K=K, S=stride, SWC=swc, SWT=swt, BIG=x.numel() >= INDEX_LIMIT,
                **p.meta(C))
    args.update({f"SX{d}": st for d, st in zip("NCHW", x.stride())})
    args.update({f"SY{d}": st for d, st in zip("NCHW", out_strides)})
    return _Call(x, fmt, out_fmt, weight, p, args, (triton.cdiv(C, p.block_c), p.chunks), N * Ho * Wo)


def _device_guard(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _without_outputs(args: dict) -> dict:
    return {k: v for k, v in args.items() if not k.startswith("SY")}


def forward(x, weight, bn_weight, bn_bias, running_mean, running_var, stride: int, training: bool, eps: float,
            activation: str, **tiling):
    """(y, save_mean, save_var) per compiled_op.py's schema; y in x's dtype and memory format.

    tiling: block_p, block_c, chunks, programs overrides for `plan`, and layout for
    `compute_format` (tests)."""
    call = _prepare(x, weight, stride, activation, tiling)
    x, p, NP = call.x, call.plan, call.positions
    N, C = x.shape[:2]
    y = torch.empty((N, C, call.args["HO"], call.args["WO"]), dtype=x.dtype, device=x.device,
                    memory_format=call.fmt)
    save_mean = torch.empty(C, dtype=torch.float32, device=x.device)
    save_var = torch.empty(C, dtype=torch.float32, device=x.device)
    with _device_guard(x):
        if training:
            pmean = torch.empty((p.chunks, C), dtype=torch.float32, device=x.device)
            pm2 = torch.empty_like(pmean)
            _launch(_fwd_stats, call, x, call.weight, pmean, pm2, NP, p.chunks, p.chunk_p,
                    **_without_outputs(call.args))
        else:
            pmean = pm2 = save_mean  # not read in eval
        _launch(_fwd_apply, call, x, call.weight, y, bn_weight, bn_bias, running_mean, running_var, pmean, pm2,
                save_mean, save_var, eps, NP, p.chunks, p.chunk_p, **call.args,
                TRAINING=training, ACT=ACTIVATION_CODES[activation], REVERSE=training, NC_PAD=p.nc_pad)
    return y.contiguous(memory_format=call.out_fmt), save_mean, save_var


def backward(dy, x, weight, bn_weight, bn_bias, save_mean, save_var, stride: int, training: bool, eps: float,
             activation: str, **tiling):
    """(dx, dweight, dbn_weight, dbn_bias) per compiled_op.py's schema; dx in x's dtype and memory format.

    tiling: as for `forward`."""
    call = _prepare(x, weight, stride, activation, tiling)
    x, p, NP, args = call.x, call.plan, call.positions, call.args
    N, C = x.shape[:2]
    K = args["K"]
    dy = dy.to(x.dtype).contiguous(memory_format=call.fmt)
    dev = x.device
    act = ACTIVATION_CODES[activation]
    dz = torch.empty_like(dy, dtype=torch.float32)  # float32: see "dz" in the module docstring
    dx = torch.empty_like(x)
    pdb = torch.empty((p.chunks, C), dtype=torch.float32, device=dev)
    pdg = torch.empty_like(pdb)
    pdw = torch.empty((p.chunks, C, K * K), dtype=torch.float32, device=dev)
    dweight = torch.empty((C, K, K), dtype=torch.float32, device=dev)
    dgamma = torch.empty(C, dtype=torch.float32, device=dev)
    dbeta = torch.empty(C, dtype=torch.float32, device=dev)
    kk_pad = triton.next_power_of_2(K * K)
    with _device_guard(x):
        if training:
            _launch(_bwd_stats, call, x, call.weight, dy, bn_weight, bn_bias, save_mean, save_var, pdb, pdg, eps,
                    NP, p.chunks, p.chunk_p, **args, ACT=act)
        _launch(_bwd_dz, call, x, call.weight, dy, dz, bn_weight, bn_bias, save_mean, save_var, pdb, pdg, eps, NP,
                p.chunks, p.chunk_p, **args, TRAINING=training, ACT=act, REVERSE=training, NC_PAD=p.nc_pad)
        dx_block, dx_tp = p.dx_tile(x.element_size())
        _launch(_bwd_dx, call, dz, x, call.weight, dx, pdw, NP, p.chunks, p.chunk_p,
                **{**args, "BLOCK_P": dx_block}, KK_PAD=kk_pad, TP=dx_tp)
        final_block = min(32, triton.next_power_of_2(C))
        _bwd_final[(triton.cdiv(C, final_block),)](pdw, pdb, pdg, dweight, dbeta, dgamma, p.chunks, C=C, KK=K * K,
                                                   KK_PAD=kk_pad, NC_PAD=p.nc_pad, BLOCK_C=final_block,
                                                   **LAUNCH_OPTIONS)
    return dx.contiguous(memory_format=call.out_fmt), dweight, dgamma, dbeta
