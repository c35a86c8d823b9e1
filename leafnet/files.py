"""Writing files: atomically, durably, and never over a user's file unless told to.

Every file leafnet writes goes through `atomic_path`: the content is written to a temporary file
beside the target, flushed to disk (fsync) and renamed over the target, so a reader or a crash
never sees half a file, and a failed write leaves no temporary file behind. A folder or file that
cannot be written gets one line naming it (`LeafnetError`), not a traceback. A new file gets the
mode `open()` would give it (0o666 less the umask: 0644 under umask 022).

Commands that write an output a user names (export, predict, evaluate, import_keras) first call
`refuse_existing`: an existing file is replaced only with `overwrite=true`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from leafnet.errors import LeafnetError

# The process's umask, read once at import (reading it means setting it, which is not
# thread-safe later on): a new file gets 0o666 less the umask, as open() would give it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _cannot_write(path: Path, err: OSError) -> LeafnetError:
    return LeafnetError(f"cannot write {path} ({err.strerror or err}); choose a writable location")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (not possible on every platform or file system)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to; committed when the block ends cleanly.

    `replace=False` commits only if `path` does not exist at that moment (a hard link, which
    fails when the name is taken), so a file that appeared meanwhile is never replaced."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _cannot_write(path, err) from None
    try:  # mkstemp makes it owner-only; colleagues sharing the run folder must read it too
        os.fchmod(fd, 0o666 & ~_UMASK)
    finally:
        os.close(fd)
    tmp = Path(name)
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)
        except FileExistsError:
            raise LeafnetError(
                f"{path} appeared while leafnet was writing it; it is kept (add overwrite=true "
                "to replace it)"
            ) from None
        except OSError as err:  # a full disk, a folder made read-only meanwhile
            raise _cannot_write(path, err) from None
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str, replace: bool = True) -> Path:
    """Write `text` to `path` atomically (UTF-8); `replace` as for `atomic_path`."""
    with atomic_path(path, replace) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def refuse_existing(path: str | os.PathLike, overwrite: bool, key: str) -> None:
    """One line when `path` exists and `overwrite` is not true: a user's file is kept."""
    if not isinstance(overwrite, bool):
        raise LeafnetError(f"overwrite={overwrite!r}: use true or false")
    if Path(path).exists() and not overwrite:
        raise LeafnetError(
            f"{key}={path} exists; add overwrite=true to replace it, or choose another {key}"
        )
