"""The on-disk cache of resized images: one `.npy` (uint8 [S, S, 3], no pickle) per file.

Entries are channels-last, the layout of the batches the step reads: a batch row is then one
contiguous copy of the entry, where a [3, S, S] entry cost a transposing copy seven times as
long (docs/performance.md). Entries written as [3, S, S] before are still read. Where an image's
pixels fill whole memory pages (a side that is a multiple of 64, such as 640), the entry's header
is padded to one page, so its pixels start on a page and `map_batch` can hand the step the
page cache's own pages as a batch instead of copying them. Such a file is a valid `.npy`; with
4 KiB pages np.load reads it as it is, with larger ones only with a larger `max_header_size`
(leafnet reads its entries itself).

The key hashes the file's absolute path, size and mtime with every setting that changes the
pixels (side, resize mode, pad colour), so a changed file or a different setting is simply a miss
and the old entry is never read again. A file that is not a usable image gets a small `.bad`
entry holding the reason, and a usable one a `.json` note of its fingerprints (duplicates.py), so
a warm start decodes nothing at all. Entries are written atomically,
so parallel sweep jobs (and the cold pass's worker processes) can share one cache directory, and
an interrupted cold pass keeps every entry it finished.

`python -m leafnet.data.cache [dir=data/.cache] [clear=true]` reports (or clears) a cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import mmap
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from leafnet.data.images import Preprocessing
from leafnet.errors import LeafnetError, cli_errors
from leafnet.files import atomic_path, write_text

CACHE_VERSION = 1  # bump when read_image/resize change what they produce
_ENTRY = re.compile(r"[0-9a-f]{40}\.(npy|bad|json)")


def cache_key(path: str | Path, prep: Preprocessing) -> str:
    """Hex digest naming the resized version of `path` under `prep` (stat at call time)."""
    path = Path(path).resolve()
    st = path.stat()
    text = "|".join(
        str(part)
        for part in (
            CACHE_VERSION,
            path,
            st.st_size,
            st.st_mtime_ns,
            prep.image_size,
            prep.resize,
            prep.pad_color,
        )
    )
    return hashlib.sha1(
        text.encode("utf-8", "surrogateescape")
    ).hexdigest()  # any file name, UTF-8 or not


# The start of a .npy file in format 1.0, which np.save writes for headers this small; then the
# header's length (2 bytes, little-endian) and the header, a dict as numpy writes it.
_NPY_MAGIC = b"\x93NUMPY\x01\x00"


def _npy_header(side: int) -> str:
    """The header `np.save` writes for a uint8 [side, side, 3] entry, without its padding."""
    return f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({side}, {side}, 3), }}"


@functools.cache
def _page_header(side: int) -> bytes | None:
    """The start of an entry whose pixels begin on a page: magic, length and the header padded
    with spaces to one page (valid .npy). None where the pixels do not fill whole pages."""
    page = mmap.PAGESIZE
    if (side * side * 3) % page or not 64 <= page <= 2**16:
        return None
    text = _npy_header(side).ljust(page - len(_NPY_MAGIC) - 3) + "\n"
    return _NPY_MAGIC + len(text).to_bytes(2, "little") + text.encode("latin1")


# mmap(2) through the C library, which can place a mapping at a given address (Python's mmap
# cannot); MAP_FIXED is 0x10 on Linux and macOS alike. None elsewhere (Windows).
_MAP_FIXED = 0x10


def _libc_mmap() -> Any:
    # 64-bit only: the offset is passed as a 64-bit off_t.
    if os.name != "posix" or ctypes.sizeof(ctypes.c_void_p) < 8:
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).mmap
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_void_p
    fn.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
        ctypes.c_int64,
    ]  # fmt: skip
    return fn


_MMAP = _libc_mmap()


class DiskCache:
    """uint8 tensors under `root/<key[:2]>/<key>.npy`, reasons under `<key>.bad`; `root=None`
    disables it. A full or read-only disk makes `put` a no-op: speed lost, never correctness."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = None if root is None else Path(root)
        self._checked: set[tuple[int, ...]] = set()  # entry versions whose header was read

    def _name(self, key: str, kind: str = "npy") -> str:
        """The entry's file as text: a batch opens every entry's file, and joining `Path`s cost
        a third to half as much as the opens (docs/performance.md)."""
        assert self.root is not None
        return os.path.join(self.root, key[:2], f"{key}.{kind}")

    def _file(self, key: str, kind: str = "npy") -> Path:
        return Path(self._name(key, kind))

    def has(self, key: str) -> bool:
        return self.root is not None and self._file(key).is_file()

    def get(self, key: str, side: int) -> Tensor | None:
        """The entry as uint8 [3, S, S] (channels-last strides), or None for a miss."""
        if self.root is None:
            return None
        row = torch.empty((side, side, 3), dtype=torch.uint8).permute(2, 0, 1)
        if self.read_into(key, row):
            return row
        try:
            arr = np.load(self._file(key), allow_pickle=False)
        except (OSError, ValueError):  # missing, or half-written by a killed process
            return None
        if arr.dtype != np.uint8:
            return None
        if arr.shape == (side, side, 3):
            return torch.from_numpy(arr).permute(2, 0, 1)
        if arr.shape == (3, side, side):  # written before entries were channels-last
            return torch.from_numpy(arr)
        return None

    def read_into(self, key: str, out: Tensor) -> bool:
        """Read the entry straight into `out`, a uint8 [3, S, S] tensor with channels-last strides
        (a row of a batch): one read, no array in between. False (out untouched or partly
        written) for a miss, a header other than the one `put` writes (another layout, size, type
        or writer) or a short file; `get` then decides."""
        if self.root is None or not out.permute(1, 2, 0).is_contiguous():
            return False
        side = out.shape[-1]
        try:
            # Unbuffered, and the header compared as text rather than parsed: numpy's header
            # parser took as long as the read itself (docs/performance.md).
            with open(self._name(key), "rb", buffering=0) as fh:
                magic = fh.read(len(_NPY_MAGIC) + 2)
                if magic[: len(_NPY_MAGIC)] != _NPY_MAGIC:
                    return False
                header = fh.read(int.from_bytes(magic[len(_NPY_MAGIC) :], "little"))
                if header.decode("latin1").strip() != _npy_header(side):
                    return False
                # The row's own memory as a buffer (not Tensor.numpy(), which reads as a host
                # sync to the step's sync check); `out` outlives the read.
                size = out.numel()
                return fh.readinto((ctypes.c_char * size).from_address(out.data_ptr())) == size
        except (OSError, UnicodeDecodeError):
            return False

    def map_batch(self, keys: Sequence[str], side: int) -> Tensor | None:
        """The entries as one uint8 [n, 3, S, S] channels-last batch whose rows are the files' own
        pages, mapped copy-on-write: no copy now, and the step's float conversion reads the page
        cache directly. None (nothing mapped) unless every entry starts its pixels on a page
        (`put` writes them so where they fill whole pages) and the system can map them; the
        caller then reads the entries. The batch unmaps itself when freed. A cache file
        truncated in place while its batch lives would fault; leafnet only ever replaces or
        removes entries whole."""
        head = _page_header(side)
        if self.root is None or _MMAP is None or head is None or not keys:
            return None
        row = side * side * 3
        fds: list[int] = []
        try:
            for key in keys:
                fds.append(os.open(self._name(key), os.O_RDONLY))
                if not self._page_entry(fds[-1], head, row):
                    return None
            # An untouched anonymous range of the batch's size, then each entry mapped over its
            # row; the range (and so every row) is unmapped when the tensor's memory is freed.
            region = mmap.mmap(-1, len(keys) * row, flags=mmap.MAP_PRIVATE)
            batch = torch.frombuffer(region, dtype=torch.uint8)
            base, prot = batch.data_ptr(), mmap.PROT_READ | mmap.PROT_WRITE
            for i, fd in enumerate(fds):
                at = base + i * row
                if _MMAP(at, row, prot, mmap.MAP_PRIVATE | _MAP_FIXED, fd, len(head)) != at:
                    # A failed MAP_FIXED may have unmapped the row: fill the gap again, so that
                    # freeing the range never unmaps memory something else placed there.
                    anonymous = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED
                    _MMAP(at, row, prot, anonymous, -1, 0)
                    return None
        except OSError:  # a missing entry, or too many open files: read them instead
            return None
        finally:
            for fd in fds:
                os.close(fd)
        return batch.view(len(keys), side, side, 3).permute(0, 3, 1, 2)

    def _page_entry(self, fd: int, head: bytes, row: int) -> bool:
        """Whether the open file is `head` then `row` bytes. Its header is read once per version
        of the file (device, inode, change time): reading it for every batch cost a quarter of
        mapping the batch (docs/performance.md). A rewrite changes the change time, and `put`
        replaces entries with new files."""
        st = os.fstat(fd)
        if st.st_size != len(head) + row:
            return False
        version = (st.st_dev, st.st_ino, st.st_ctime_ns, st.st_size)
        if version not in self._checked:
            if os.pread(fd, len(head), 0) != head:
                return False
            self._checked.add(version)
        return True

    def put(self, key: str, x: Tensor) -> bool:
        if self.root is None:
            return False
        pixels = x.permute(1, 2, 0).contiguous().numpy()
        square = x.shape[0] == 3 and x.shape[1] == x.shape[2] and x.dtype == torch.uint8
        head = _page_header(x.shape[-1]) if square else None
        try:
            with atomic_path(self._file(key)) as tmp, tmp.open("wb") as fh:
                if head is None:
                    np.save(fh, pixels, allow_pickle=False)
                else:
                    fh.write(head)
                    fh.write(pixels.data)
        except (LeafnetError, OSError):
            return False
        return True

    def bad(self, key: str) -> str | None:
        """The recorded reason a file is not a usable image, or None."""
        if self.root is None:
            return None
        try:
            return self._file(key, "bad").read_text(encoding="utf-8")[:500] or "unreadable"
        except (OSError, UnicodeError):
            return None

    def put_bad(self, key: str, reason: str) -> None:
        if self.root is None:
            return
        with contextlib.suppress(LeafnetError, OSError):
            write_text(self._file(key, "bad"), reason)

    def meta(self, key: str) -> dict[str, Any] | None:
        """What was noted beside an image (its fingerprints), or None."""
        if self.root is None:
            return None
        try:
            value = json.loads(self._file(key, "json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def put_meta(self, key: str, value: dict[str, Any]) -> None:
        if self.root is None:
            return
        with contextlib.suppress(LeafnetError, OSError):
            write_text(self._file(key, "json"), json.dumps(value))

    def entries(self) -> Iterator[Path]:
        """Every entry file of this cache (nothing else under `root` is ever touched)."""
        if self.root is None or not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if sub.is_dir() and re.fullmatch(r"[0-9a-f]{2}", sub.name):
                yield from (f for f in sorted(sub.iterdir()) if _ENTRY.fullmatch(f.name))

    def size_bytes(self, keys: Sequence[str] = ()) -> int:
        """Bytes on disk of `keys`' image entries, or of the whole cache when none are given."""
        files = (self._file(k) for k in keys) if keys else self.entries()
        total = 0
        for f in files:
            with contextlib.suppress(OSError):
                total += f.stat().st_size
        return total

    def clear(self) -> int:
        """Remove every entry; returns how many. Other files under `root` are left alone."""
        removed = 0
        for f in list(self.entries()):
            f.unlink(missing_ok=True)
            removed += 1
        return removed


@cli_errors
def main(argv: Sequence[str] | None = None) -> None:
    """`dir=<cache> [clear=true]`: the cache's place, entries and size; clear removes them."""
    from leafnet.config import command_config

    cfg = command_config("data.cache", sys.argv[1:] if argv is None else argv, conf="cache")
    cache = DiskCache(Path(str(cfg.dir)).expanduser())
    entries = list(cache.entries())
    size = cache.size_bytes()
    images = sum(1 for e in entries if e.suffix == ".npy")
    print(
        f"leafnet: cache {cache.root.resolve()}: {images} images, "  # type: ignore[union-attr]
        f"{len(entries) - images} bad-file notes, {size / 2**30:.2f} GB"
    )
    if cfg.clear:
        removed = cache.clear()
        print(f"leafnet: removed {removed} entries ({size / 2**30:.2f} GB)")


if __name__ == "__main__":
    main()
