"""A run directory in use: one training process at a time, and never a new run over an old one.

`claim(run_dir, resuming)` is held for the whole of a run. It refuses, in one line:
- a new run in a directory that already holds a run (its checkpoints or summary.json): the
  earlier run is kept; `resume=` continues it, or another `hydra.run.dir` starts a new one;
- any run in a directory another live process is training in (`.leafnet.lock` holds its pid).
A lock left by a process that no longer exists (killed) is taken over.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from leafnet.errors import LeafnetError

LOCK = ".leafnet.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _holder(lock: Path) -> int | None:
    """The pid in a lock file, or None when it is unreadable (half-written)."""
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None


def _take(lock: Path) -> None:
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _holder(lock)
            if pid is not None and pid != os.getpid() and _alive(pid):
                raise LeafnetError(
                    f"{lock.parent} is in use by another training process (pid {pid}); wait for "
                    "it to end or stop it, then try again"
                ) from None
            lock.unlink(missing_ok=True)  # left by a process that is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return
    raise LeafnetError(f"{lock}: could not take the run directory's lock; try again")


@contextlib.contextmanager
def claim(run_dir: Path, resuming: bool) -> Iterator[None]:
    """Hold `run_dir` for one training process; see the module docstring for what is refused."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LeafnetError(
            f"cannot create the run directory {run_dir} ({err.strerror}); choose a writable "
            "hydra.run.dir or paths.output_dir"
        ) from None
    if not os.access(run_dir, os.W_OK):
        raise LeafnetError(
            f"run directory {run_dir} is not writable; choose another hydra.run.dir or "
            "paths.output_dir"
        )
    lock = run_dir / LOCK
    _take(lock)
    try:
        if not resuming and (
            (run_dir / "summary.json").exists() or (run_dir / "checkpoints").exists()
        ):
            raise LeafnetError(
                f"{run_dir} already holds a run; continue it with resume={run_dir}, or start a "
                "new one in another hydra.run.dir (the earlier run is kept)"
            )
        yield
    finally:
        if _holder(lock) == os.getpid():
            lock.unlink(missing_ok=True)
