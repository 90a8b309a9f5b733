#!/usr/bin/env bash
# One pass over everything a GPU machine can check, in about 8 minutes on an
# H200, failing fast at the first failed step:
#   1. versions and nvidia-smi;
#   2. the offline install (no network, no pymoo) and the build, sm_90 only, all cores;
#   3. the simulator's harness (csrc/cuda_sim/harness.cpp) built by nvcc and run on the
#      GPU: plain, then under compute-sanitizer memcheck, racecheck and synccheck (tiny shapes);
#   4. pytest tests/ -x -k "cuda or triton";
#   5. python -m benchmarks.report --device cuda --quick;
#   6. a short table: copy bandwidth, and per case the time, the speed-up over
#      `reference` and `merged`, and the % of the roofline floor.
# Logs: one file per step under $OUT/gpu_check (a temporary folder when OUT is
# unset), plus the report's CSV and RESULTS.md. PYTHON overrides the
# interpreter (default: .venv/bin/python if present, else python3);
# GPU_CHECK_BUDGET_S the whole run's time (default 470 s): each step's limit
# is cut to what is left of it.
#
#   bash benchmarks/gpu_check.sh [--dry-run]
# --dry-run prints the steps and checks what needs no GPU: the tools, the
# Python packages, the report's flags, the harness's case list.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dry=0
case "${1:-}" in
  --dry-run) dry=1 ;;
  "") ;;
  *) echo "gpu_check: unknown option '$1'; use --dry-run or nothing" >&2; exit 2 ;;
esac
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
logs="${OUT:-$(mktemp -d)}/gpu_check"
mkdir -p "$logs"
work="$logs/work"
mkdir -p "$work"
jobs="$(nproc 2>/dev/null || echo 4)"
budget="${GPU_CHECK_BUDGET_S:-470}"
start=$SECONDS

# The harness's cases on the GPU: every layout, dtype class, K and stride once,
# three runs each (bit-identical), at the device's multiprocessor count.
cat >"$work/cases.txt" <<'CASES'
2 12 9 11 3 1 f32 nchw train relu6 3 0 0
2 10 10 12 9 2 bf16 nchw eval relu 3 0 0
2 12 11 13 1 1 f16 nchw train none 3 0 0
2 12 9 11 7 2 bf16 nhwc train relu6 3 0 0
2 10 12 10 5 1 f32 nhwc eval none 3 0 0
1 6 130 121 3 1 f32 nchw train relu6 3 0 0
1 6 97 99 9 2 f32 nhwc train relu6 3 0 0
8 192 32 32 9 1 bf16 nchw train relu6 3 0 0
8 1152 7 7 9 2 bf16 nhwc train relu6 3 0 0
CASES
# compute-sanitizer runs each launch many times slower: tiny shapes, one run.
cat >"$work/tiny.txt" <<'CASES'
2 8 9 9 3 1 f32 nchw train relu6 1 0 0
2 8 9 9 9 2 bf16 nchw train relu6 1 0 0
2 8 9 9 5 1 f32 nhwc train relu6 1 0 0
2 6 9 9 7 2 f16 nhwc eval relu 1 0 0
CASES

nvcc_flags=(-O3 -std=c++17 --use_fast_math -lineinfo -gencode arch=compute_90,code=sm_90
            -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
            -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr -Icsrc/cuda)

# step NAME SECONDS COMMAND...: runs COMMAND with a time limit, its output in $logs/NAME.log.
n=0
step() {
  local name="$1" limit="$2"
  shift 2
  n=$((n + 1))
  local log="$logs/$(printf '%02d' "$n")-$name.log"
  if [ "$dry" = 1 ]; then
    printf 'step %d %-10s (limit %ss): %s\n' "$n" "$name" "$limit" "$*"
    return 0
  fi
  local left=$((budget - (SECONDS - start)))
  if [ "$left" -le 0 ]; then
    echo "gpu_check: out of time (GPU_CHECK_BUDGET_S=$budget) before step '$name'" >&2
    exit 1
  fi
  [ "$limit" -le "$left" ] || limit="$left"
  printf '== %d %s (limit %ss, at %ss)\n' "$n" "$name" "$limit" "$((SECONDS - start))"
  local status=0
  timeout --kill-after=10 "$limit" bash -c "$*" >"$log" 2>&1 || status=$?
  tail -n 15 "$log"
  if [ "$status" != 0 ]; then
    echo "gpu_check: step '$name' failed (exit $status); full log: $log" >&2
    exit 1
  fi
}

harness_ok() {  # every result line of the harness is 'ok' with bit-identical runs
  printf '! grep -Eq "^error|identical=0" %q && grep -q "^ok" %q' "$1" "$1"
}

step versions 30 "$py -c 'import sys, torch; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda)';
  $py -c 'import triton; print(\"triton\", triton.__version__)' || true; nvcc --version; nvidia-smi;
  compute-sanitizer --version | head -2"
step install 300 "MIXPATH_SKIP_EXT=1 $py -m pip install --no-deps --no-build-isolation -e . &&
  MIXPATH_CUDA_ARCHS=9.0 MAX_JOBS=$jobs $py setup.py -q build_ext --inplace &&
  $py -c 'from mixpath.ops import backend_status; s = backend_status(\"cuda\"); print(s); assert s[\"cuda\"] == \"available\", s'"
step harness 240 "ls csrc/cuda/*.cu | xargs -P $jobs -I{} sh -c 'nvcc ${nvcc_flags[*]} -c {} -o $work/\$(basename {}).o' &&
  nvcc ${nvcc_flags[*]} -x cu csrc/cuda_sim/harness.cpp $work/*.cu.o -o $work/harness &&
  $work/harness <$work/cases.txt | tee $work/harness.out && $(harness_ok "$work/harness.out")"
for tool in memcheck racecheck synccheck; do
  step "$tool" 120 "compute-sanitizer --tool $tool --error-exitcode 1 $work/harness <$work/tiny.txt | tee $work/$tool.out &&
    $(harness_ok "$work/$tool.out")"
done
step pytest 300 "$py -m pytest tests/ -x -q -p no:randomly -k 'cuda or triton'"
step report 420 "$py -m benchmarks.report --device cuda --quick && cp benchmarks/results_cuda.csv benchmarks/RESULTS.md $logs/"
step table 30 "$py - <<'PY'
import csv
rows = list(csv.DictReader(open('benchmarks/results_cuda.csv')))
print(f\"copy bandwidth: {float(rows[0]['copy_GBps']):.0f} GB/s\" if rows else 'no rows')
print(f\"{'case':32} {'backend':10} {'fwd+bwd ms':>10} {'x ref':>7} {'x merged':>8} {'% floor':>8}\")
for r in rows:
    f = lambda k: float(r[k]) if r.get(k) else float('nan')
    print(f\"{r['label']:32} {r['backend']:10} {f('fwdbwd_ms'):10.3f} {f('x_ref_fwdbwd'):7.2f} {f('x_merged_fwdbwd'):8.2f} {f('pct_floor_fwdbwd'):8.1f}\")
PY"

if [ "$dry" = 1 ]; then
  # What can be checked without a GPU.
  missing=0
  for tool in nvcc nvidia-smi compute-sanitizer timeout; do
    if command -v "$tool" >/dev/null 2>&1; then echo "found $tool"; else echo "missing $tool (needed on the GPU machine)"; fi
  done
  for f in setup.py csrc/cuda_sim/harness.cpp benchmarks/report.py; do
    [ -f "$f" ] || { echo "gpu_check: $f is missing" >&2; missing=1; }
  done
  "$py" -m benchmarks.report --help | grep -q -- "--quick" || { echo "gpu_check: benchmarks.report has no --quick" >&2; missing=1; }
  "$py" -c "import torch, numpy, scipy, matplotlib, tqdm, PIL" ||
    { echo "gpu_check: $py lacks a package the GPU machine has (torch numpy scipy matplotlib tqdm pillow)" >&2; missing=1; }
  awk 'NF != 13 { bad = 1 } END { exit bad }' "$work/cases.txt" "$work/tiny.txt" ||
    { echo "gpu_check: a harness case does not have 13 fields" >&2; missing=1; }
  [ "$missing" = 0 ] || exit 1
  echo "gpu_check: dry run OK ($n steps); logs would go to $logs"
  exit 0
fi
echo "gpu_check: all $n steps passed in $((SECONDS - start)) s; logs in $logs"
