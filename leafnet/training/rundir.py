"""A run directory in use: one training process at a time, and never a new run over an old one.

`claim(run_dir, resuming)` is held for the whole of a run, and taken before Hydra or leafnet
writes anything into the directory. It refuses, in one line:
- a new run in a directory that already holds a run (a checkpoint, or a summary of a run that
  finished): the earlier run is kept; `resume=` continues it, or another `hydra.run.dir` starts
  a new one. A run stopped or failed before its first checkpoint left nothing to keep: its
  directory can be used again;
- a new run in a folder of the user's that is not a run directory (files, none of them a
  leafnet run's `summary.json` or `train.log`): leafnet writes `metrics.csv`, `split.csv`,
  `.hydra/` and more, and would replace the user's files of those names;
- any run in a directory another live process is training in.
The lock is an `flock` on `.leafnet.lock` (which also holds the pid, for the message): the kernel
drops it when its process ends, however it ends, so a killed run's lock is simply free again and
no two processes can both take one over. A claim this process already holds is held again as is.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from leafnet.errors import LeafnetError

LOCK = ".leafnet.lock"

_held: dict[Path, int] = {}  # run directories this process holds, and how many claims deep


def _holder(lock: Path) -> str:
    """The pid written in a lock file, for the message ('?' while it is being written)."""
    try:
        return lock.read_text().strip() or "?"
    except OSError:
        return "?"


def _take(lock: Path) -> int:
    """Lock `lock` for this process; returns its descriptor. The lock file is never removed while
    a process may wait on it, so a lock is always taken on the file that others see."""
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LeafnetError(
                f"{lock.parent} is in use by another training process (pid {_holder(lock)}); "
                "wait for it to end or stop it, then try again"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file an earlier holder removed between our open and our lock
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def holds_a_run(run_dir: Path) -> bool:
    """A checkpoint, or a summary.json whose run finished (not one stopped or failed before its
    first checkpoint)."""
    if any((run_dir / "checkpoints").glob("*.ckpt")):
        return True
    try:
        status = json.loads((run_dir / "summary.json").read_text()).get("status")
    except FileNotFoundError:
        return False
    except (OSError, ValueError, AttributeError):
        return True  # unreadable: keep it, whatever it is
    return status not in ("interrupted", "failed")


def _foreign(run_dir: Path) -> list[str]:
    """The entries of a non-empty folder that no leafnet run left (none when it is empty or a
    run's: a run writes train.log at its start and summary.json however it ends)."""
    names = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)
    return [] if {"summary.json", "train.log"} & set(names) else names


@contextlib.contextmanager
def claim(run_dir: str | os.PathLike, resuming: bool) -> Iterator[None]:
    """Hold `run_dir` for one training process; see the module docstring for what is refused."""
    key = Path(run_dir).absolute()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    try:
        key.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LeafnetError(
            f"cannot create the run directory {run_dir} ({err.strerror}); choose a writable "
            "hydra.run.dir or paths.output_dir"
        ) from None
    if not os.access(key, os.W_OK):
        raise LeafnetError(
            f"run directory {run_dir} is not writable; choose another hydra.run.dir or "
            "paths.output_dir"
        )
    lock = key / LOCK
    fd = _take(lock)
    try:
        if not resuming and holds_a_run(key):
            raise LeafnetError(
                f"{run_dir} already holds a run; continue it with resume={run_dir}, or start a "
                "new one in another hydra.run.dir (the earlier run is kept)"
            )
        foreign = [] if resuming else _foreign(key)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise LeafnetError(
                f"{run_dir} is a folder with other files ({shown}), not a run directory; a run "
                "would write over files of its own names there. Give hydra.run.dir a new or "
                "empty folder"
            )
        _held[key] = 1
        yield
    finally:
        _held.pop(key, None)
        lock.unlink(missing_ok=True)  # before the unlock: a waiter then sees a new file
        os.close(fd)
