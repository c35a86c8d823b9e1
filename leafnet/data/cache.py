"""The on-disk cache of resized images: one `.npy` (uint8 [3, S, S], no pickle) per file.

The key hashes the file's absolute path, size and mtime with every setting that changes the
pixels (side, resize mode, pad colour), so a changed file or a different setting is simply a miss
and the old entry is never read again. Entries are written atomically, so parallel sweep jobs
can share one cache directory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from leafnet.data.images import Preprocessing
from leafnet.errors import LeafnetError
from leafnet.files import atomic_path

CACHE_VERSION = 1  # bump when read_image/resize change what they produce


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


class DiskCache:
    """uint8 tensors under `root/<key[:2]>/<key>.npy`; `root=None` disables it."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = None if root is None else Path(root)

    def _file(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str, side: int) -> Tensor | None:
        if self.root is None:
            return None
        try:
            arr = np.load(self._file(key), allow_pickle=False)
        except (OSError, ValueError):  # missing, or half-written by a killed process
            return None
        if arr.dtype != np.uint8 or arr.shape != (3, side, side):
            return None
        return torch.from_numpy(arr)

    def put(self, key: str, x: Tensor) -> None:
        if self.root is None:
            return
        target = self._file(key)
        try:
            with atomic_path(target) as tmp, tmp.open("wb") as fh:
                np.save(fh, x.numpy(), allow_pickle=False)
        except LeafnetError:
            pass  # a read-only or full disk costs speed on the next run, not correctness
