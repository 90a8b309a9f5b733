"""Compile the Triton kernels ahead of time for a GPU target and report registers and spills.

No GPU is needed: each kernel is specialised exactly as one forward and backward
call would launch it (the launches are recorded on CPU tensors, not run), then
compiled with `triton.compile` for `GPUTarget("cuda", ARCH, 64)`, and its PTX is
assembled with Triton's bundled `ptxas -v`.

    python -m mixpath.kernels.sm90_check                 # default cases, sm_90
    python -m mixpath.kernels.sm90_check --arch 80 --fail-on-spills
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("sm90_check compiles real kernels: unset TRITON_INTERPRET")

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
from triton.compiler import ASTSource

from mixpath.kernels import fused_dwconv_bn as fk

# (N, C, H, W, K, stride, compute layout, dtype): the shapes the review looked at, both layouts
CASES = [
    (8, 32, 56, 56, 9, 1, "channels_last", torch.float32),
    (8, 32, 56, 56, 9, 2, "nchw", torch.float32),
    (8, 32, 56, 56, 9, 2, "channels_last", torch.float32),
    (8, 32, 56, 56, 9, 1, "nchw", torch.bfloat16),
    (8, 32, 56, 56, 3, 1, "channels_last", torch.bfloat16),
]
_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _record_launches(case) -> list:
    """(kernel, args by name, launch options) of every launch one training forward + backward makes."""
    N, C, H, W, K, stride, layout, dtype = case
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(N, C, H, W).to(dtype).contiguous(memory_format=fmt)
    w, g, b, rm, rv = torch.randn(C, K, K), torch.ones(C), torch.zeros(C), torch.zeros(C), torch.ones(C)
    launches = []

    class Recorder:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            def record(*args, **kwargs):
                options = {k: kwargs.pop(k) for k in list(kwargs) if k not in self.fn.arg_names}
                named = dict(zip(self.fn.arg_names, args), **kwargs)
                launches.append((self.fn, named, options))
            return record

    kernels = {name: fn for name, fn in vars(fk).items() if isinstance(fn, triton.runtime.JITFunction)}
    try:
        for name, fn in kernels.items():
            setattr(fk, name, Recorder(fn))
        Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
        y, mean, var = fk.forward(x, w, g, b, rm, rv, stride, True, 1e-5, "relu6", layout=layout)
        fk.backward(torch.randn(N, C, Ho, Wo).to(dtype).contiguous(memory_format=fmt), x, w, g, b,
                    torch.zeros(C), torch.ones(C), stride, True, 1e-5, "relu6", layout=layout)
    finally:
        for name, fn in kernels.items():
            setattr(fk, name, fn)
    return launches


def _signature(fn, named: dict):
    signature, constexprs = {}, {}
    for p in fn.params:
        v = named[p.name]
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constexprs[p.name] = v
        elif isinstance(v, torch.Tensor):
            signature[p.name] = "*" + _TYPES.get(v.dtype, "fp32")
        elif isinstance(v, bool):
            signature[p.name] = "i1"
        elif isinstance(v, int):
            signature[p.name] = "i32" if abs(v) < 2**31 else "i64"
        else:
            signature[p.name] = "fp32"
    return signature, constexprs


def ptxas_report(fn, named: dict, options: dict, arch: int) -> tuple[int, int, int]:
    """(registers, spill stores, spill loads) of fn specialised on `named`, for sm_<arch>."""
    signature, constexprs = _signature(fn, named)
    compiled = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 64),
                              options=options)
    # the ptxas and flags Triton's own make_cubin uses for this target
    ptxas = get_ptxas(arch).path
    fmad = [] if compiled.metadata.enable_fp_fusion else ["--fmad=false"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(compiled.asm["ptx"])
        f.flush()
        out = subprocess.run([ptxas, "-v", *fmad, "--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(arch)}",
                              f.name, "-o", os.devnull], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"ptxas failed on {fn.__name__}: {out.stderr.strip()}")
    out = out.stderr
    regs = int(re.search(r"Used (\d+) registers", out).group(1))
    stores, loads = map(int, re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out).groups())
    return regs, stores, loads


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--fail-on-spills", action="store_true")
    args = ap.parse_args(argv)
    spilled = False
    for case in CASES:
        N, C, H, W, K, stride, layout, dtype = case
        print(f"N{N} C{C} {H}x{W} K{K} s{stride} {layout} {_TYPES[dtype]}")
        seen = set()
        for fn, named, options in _record_launches(case):
            if fn.__name__ in seen:
                continue
            seen.add(fn.__name__)
            regs, stores, loads = ptxas_report(fn, named, options, args.arch)
            spilled |= stores > 0
            print(f"  {fn.__name__:12s} {regs:4d} registers, {stores:5d} B spill stores, {loads:5d} B spill loads")
    return 1 if spilled and args.fail_on_spills else 0


if __name__ == "__main__":
    sys.exit(main())
