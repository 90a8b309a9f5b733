#!/usr/bin/env bash
# Compiles every csrc/cuda/*.cu for sm_80 and sm_90 with the build's nvcc
# flags plus ptxas -v, prints one line per kernel (registers, spills, stack),
# and exits non-zero on a compile error, a warning, or any spilled register.
# Needs nvcc only (no GPU, no torch). NVCC overrides the compiler; JOBS the
# number of parallel compilations (default: the CPU count).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
nvcc_bin="${NVCC:-nvcc}"
if ! command -v "$nvcc_bin" >/dev/null 2>&1; then
  echo "nvcc_check: $nvcc_bin not found; install the CUDA toolkit or set NVCC" >&2
  exit 2
fi
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

shopt -s nullglob
sources=("$here"/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "nvcc_check: no .cu files in $here" >&2
  exit 2
fi

# One compilation per (file, arch), run in parallel; each writes its log and
# exit status. Flags: setup.py's, torch's CUDAExtension defaults (the
# __CUDA_NO_HALF* defines), warnings as errors, ptxas -v. The host code does
# not depend on the arch: only the sm_90 job compiles it (host warnings as
# errors too), sm_80 builds the device code alone.
compile() {
  local src="$1" arch="$2" out="$3"
  local status=0 mode=(-c -o "$out.o")
  if [ "$arch" != 90 ]; then mode=(-cubin -o "$out.cubin"); fi
  "$nvcc_bin" "${mode[@]}" -O3 -std=c++17 --use_fast_math -DMIXPATH_WITH_CUDA \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
    -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr -Werror all-warnings -Xcompiler -Wall,-Werror \
    -Xptxas -v -gencode "arch=compute_${arch},code=sm_${arch}" "$src" >"$out.log" 2>&1 || status=$?
  echo "$status" >"$out.status"
}
export -f compile
export nvcc_bin

for src in "${sources[@]}"; do
  for arch in 80 90; do
    printf '%s\0%s\0%s\0' "$src" "$arch" "$tmp/$(basename "$src" .cu).sm_$arch"
  done
done | xargs -0 -n 3 -P "$jobs" bash -c 'compile "$@"' _

demangle() { if command -v c++filt >/dev/null 2>&1; then c++filt; else cat; fi; }

failed=0
: >"$tmp/summary.raw"
for src in "${sources[@]}"; do
  for arch in 80 90; do
    base="$tmp/$(basename "$src" .cu).sm_$arch"
    status="$(cat "$base.status")"
    if [ "$status" != 0 ]; then
      echo "FAIL $(basename "$src") sm_$arch: nvcc exited with $status"
      grep -v '^ptxas info' "$base.log" | head -40
      failed=1
      continue
    fi
    if grep -qi 'warning' "$base.log"; then
      echo "FAIL $(basename "$src") sm_$arch: warnings"
      grep -i 'warning' "$base.log" | head -20
      failed=1
    fi
    # ptxas -v: "Compiling entry function 'NAME' for 'sm_XX'", then the
    # stack/spill line, then "Used N registers".
    awk -v file="$(basename "$src")" '
      /Compiling entry function/ {
        match($0, /function \x27[^\x27]+\x27/); name = substr($0, RSTART + 10, RLENGTH - 11)
        arch = $NF; gsub(/\x27/, "", arch); entry = 1; next
      }
      entry && /bytes stack frame/ { stack = $1; spill_st = $5; spill_ld = $9 }
      entry && /Used [0-9]+ registers/ {
        match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
        printf "%s\t%s\tregs=%-3s spill=%s/%s stack=%s\t%s\n", arch, file, regs, spill_st, spill_ld, stack, name
        entry = 0
      }' "$base.log" >>"$tmp/summary.raw"
  done
done

while IFS=$'\t' read -r arch file stats name; do
  pretty="$(printf '%s' "$name" | demangle | sed -E 's/mixpath::cuda_kernels::detail::\(anonymous namespace\):://g; s/\(mixpath::cuda_kernels::detail::[^)]*\)//')"
  printf '%-6s %-28s %-34s %s\n' "$arch" "$file" "$stats" "$pretty"
  case "$stats" in
    *spill=0/0*) ;;
    *) failed=1 ;;
  esac
done <"$tmp/summary.raw"

kernels="$(wc -l <"$tmp/summary.raw" | tr -d ' ')"
if [ "$failed" != 0 ]; then
  echo "nvcc_check: FAILED ($kernels kernel builds checked)"
  exit 1
fi
echo "nvcc_check: OK, $kernels kernel builds for sm_80 and sm_90, no spills"
