"""benchmarks/gpu_check.sh --dry-run: the GPU machine's check script is well-formed and finds what it needs."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["versions", "install", "harness", "memcheck", "racecheck", "synccheck", "pytest", "report", "table"]


def _dry_run(tmp_path, *args):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)


def test_dry_run_lists_every_step_and_passes(tmp_path):
    proc = _dry_run(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    listed = [line.split()[2] for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert listed == STEPS
    assert "dry run OK" in proc.stdout
    # The harness's case files are written where the logs go, and every case has the harness's 13 fields.
    for name in ("cases.txt", "tiny.txt"):
        lines = (tmp_path / "gpu_check" / "work" / name).read_text().splitlines()
        assert lines and all(len(line.split()) == 13 for line in lines)


def test_unknown_option_is_refused(tmp_path):
    proc = _dry_run(tmp_path, "--dryrun")
    assert proc.returncode == 2
    assert "unknown option '--dryrun'" in proc.stderr
