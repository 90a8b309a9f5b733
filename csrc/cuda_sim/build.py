"""Builds the CPU simulator of csrc/cuda (README.md here) with the system C++ compiler.

The real .cu sources are compiled unchanged except for two mechanical rewrites
that no macro can express: `kernel<<<grid, block, smem, stream>>>(args)`
becomes `::sim::launch(kernel, "kernel", grid, block, smem, stream)(args)` and
`extern __shared__ T name[];` becomes a pointer to the block's dynamic shared
memory. `#line` keeps every message pointing into csrc/cuda. Builds are cached
under build/cuda_sim/<hash of sources and flags>.

    python csrc/cuda_sim/build.py [--sanitize]   # prints the harness binary's path
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
CACHE = ROOT / "build" / "cuda_sim"

LAUNCH = re.compile(r"(\b\w+(?:<[^<>;(){}]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
DYNAMIC_SMEM = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?(\w+)\s+(\w+)\s*\[\s*\]\s*;")

# The kernels pun types as CUDA allows (uint2 as __half2): no strict aliasing.
COMMON = ["-std=c++20", "-fno-strict-aliasing", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function", "-Wno-unused-variable",
          "-Wno-maybe-uninitialized", "-Werror"]
FLAGS = {
    # Alignment is checked in every build: a misaligned float4 must fail here, not fault on a GPU.
    "fast": ["-O2", "-march=native", "-fsanitize=alignment", "-fno-sanitize-recover=all"],
    "sanitize": ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                 "-fno-sanitize-recover=all"],
}


class BuildError(RuntimeError):
    pass


def compiler() -> str | None:
    """The C++ compiler to use: $CXX, else g++ or c++ on PATH; None when there is none."""
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def translate(source: str, name: str) -> str:
    """The .cu text as host C++ for the simulator (see the module docstring)."""
    launches = source.count("<<<")
    out, n = LAUNCH.subn(lambda m: f'::sim::launch({m[1]}, "{m[1]}", {m[2]})(', source)
    if n != launches or "<<<" in out:
        raise BuildError(f"{name}: {launches - n} kernel launches not in the form kernel<<<...>>>(...)")
    out = DYNAMIC_SMEM.sub(lambda m: f"{m[1]}* const {m[2]} = ::sim::dynamic_smem<{m[1]}>();", out)
    return f'#line 1 "csrc/cuda/{name}"\n{out}'


def _inputs() -> list[Path]:
    files = sorted(CUDA_DIR.glob("*.cu")) + sorted(CUDA_DIR.glob("*.cuh")) + sorted(CUDA_DIR.glob("*.h"))
    files += sorted(HERE.glob("*.cpp")) + sorted(HERE.glob("*.h")) + sorted((HERE / "shim").glob("*")) + [Path(__file__)]
    return files


def build(sanitize: bool = False, jobs: int | None = None) -> Path:
    """Builds (or finds in the cache) the simulator harness; returns the binary's path."""
    cxx = compiler()
    if cxx is None:
        raise BuildError("no C++ compiler found: install g++ or set CXX")
    mode = "sanitize" if sanitize else "fast"
    flags = COMMON + FLAGS[mode]
    digest = hashlib.sha256(" ".join([cxx] + flags).encode())
    for f in _inputs():
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    out = CACHE / f"{mode}-{digest.hexdigest()[:16]}"
    binary = out / "harness"
    if binary.exists():
        return binary
    src = out / "src"
    src.mkdir(parents=True, exist_ok=True)
    units = []
    for cu in sorted(CUDA_DIR.glob("*.cu")):
        unit = src / f"{cu.stem}.sim.cpp"
        unit.write_text(translate(cu.read_text(), cu.name))
        units.append(unit)
    units += [HERE / "sim.cpp", HERE / "harness.cpp"]
    includes = ["-iquote", str(HERE / "shim"), "-I", str(HERE / "shim"), "-I", str(CUDA_DIR), "-I", str(HERE)]

    def compile_one(unit: Path) -> Path:
        obj = src / f"{unit.stem}.o"
        proc = subprocess.run([cxx, *flags, *includes, "-c", str(unit), "-o", str(obj)], capture_output=True,
                              text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise BuildError(f"compiling {unit.name} failed:\n{proc.stderr[-6000:]}")
        return obj

    with ThreadPoolExecutor(max_workers=jobs or min(4, os.cpu_count() or 1)) as pool:
        objects = list(pool.map(compile_one, units))
    tmp = out / "harness.tmp"
    proc = subprocess.run([cxx, *flags, *map(str, objects), "-o", str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"linking the simulator failed:\n{proc.stderr[-4000:]}")
    tmp.rename(binary)  # last: a cached binary is always a complete one
    return binary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sanitize", action="store_true", help="AddressSanitizer + UBSan build")
    args = parser.parse_args()
    try:
        print(build(sanitize=args.sanitize))
    except BuildError as e:
        print(f"cuda_sim build: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
