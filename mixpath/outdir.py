"""Output folders that never lose a result: one job at a time, no silent overwrite, no litter.

Every command that writes into `--out DIR` goes through `OutputFolder`:

- a lock (`DIR/.lock`, held with `fcntl.flock`) refuses a second job on the same
  folder; the kernel drops the lock when its process dies, so a killed job never
  leaves the folder stuck;
- `claim(outputs, resume, force)` refuses a folder that already holds one of the
  command's outputs unless the user said `--resume` (continue) or `--force`
  (replace);
- temporary files of writes that a kill interrupted (`.NAME.*.tmp`, see
  `checkpoint.atomic_write`) are removed when the next job starts there;
- a folder this job created is removed again if the job ends before writing
  anything into it (the lock file stays in a folder that holds results).
"""
from __future__ import annotations

import errno
import itertools
import os
import time
from pathlib import Path

__all__ = ["OutputError", "OutputFolder", "disk_full_message", "new_run_dir"]

LOCK_NAME = ".lock"


class OutputError(ValueError):
    """An output folder is busy, holds results the job would overwrite, or is not a folder."""


def disk_full_message(error: OSError) -> str | None:
    """The one line for a full disk (ENOSPC, EDQUOT), or None for any other OSError."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    where = f" writing {error.filename}" if error.filename else ""
    return (f"no space left on the device{where}; the files written before are intact: free some space and "
            "continue with --resume")


class OutputFolder:
    """`with OutputFolder(path) as out:` locks `path` (creating it) for this job; see the module docstring."""

    def __init__(self, path: str | os.PathLike, flag: str = "--out"):
        self.path = Path(path).expanduser()
        self.flag = flag
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> "OutputFolder":
        import fcntl

        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"{self.flag} {self.path} is a file, not a folder: choose another {self.flag}")
        self._created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputError(f"{self.flag} {self.path} is in use by another job (pid {holder}): wait for it to "
                              f"finish or choose another {self.flag}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        for tmp in self.path.glob(".*.tmp"):  # left by writes that a kill interrupted
            tmp.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        # The lock file stays in a folder that holds results: unlinking it could let two later jobs lock
        # two different files of the same name. A folder this job made and left empty goes.
        if self._created and [p.name for p in self.path.iterdir()] == [LOCK_NAME]:
            (self.path / LOCK_NAME).unlink()
            self.path.rmdir()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def claim(self, outputs, *, resume: bool = False, force: bool = False, hint: str = "") -> list[str]:
        """Check that writing `outputs` (names in the folder) loses nothing; return those already there.

        Existing outputs are refused unless `resume` (the job continues them) or
        `force` (the job replaces them) is set.
        """
        held = [name for name in outputs if (self.path / name).exists()]
        if held and not (resume or force):
            raise OutputError(f"{self.flag} {self.path} already holds {', '.join(held)}; "
                              f"{hint or 'pass --resume to continue it, --force to replace it'}, "
                              f"or choose another {self.flag}")
        return held

    def free_name(self, name: str) -> str:
        """`name` if the folder lacks it, else the first free `stem.N.suffix` (N = 2, 3, ...)."""
        if not (self.path / name).exists():
            return name
        stem, dot, suffix = name.partition(".")
        n = 2
        while (self.path / f"{stem}.{n}{dot}{suffix}").exists():
            n += 1
        return f"{stem}.{n}{dot}{suffix}"


def new_run_dir() -> Path:
    """A free runs/<timestamp> name; OutputFolder creates it (and removes it if the run writes nothing)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in itertools.count():
        out = Path("runs") / (stamp if i == 0 else f"{stamp}-{i}")
        if not out.exists():
            return out
