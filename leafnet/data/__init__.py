"""leafnet's data side: reading images (`images`), the synthetic set (`synthetic`), splits,
the disk cache and `LeafDataModule` (`datamodule`).

Names are imported lazily, so `python -m leafnet.data.synthetic` does not import itself twice.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CLASS_NAMES": "leafnet.data.synthetic",
    "BadImage": "leafnet.data.images",
    "LeafDataModule": "leafnet.data.datamodule",
    "Preprocessing": "leafnet.data.images",
    "load_for_model": "leafnet.data.images",
    "read_image": "leafnet.data.images",
    "resize": "leafnet.data.images",
    "to_float": "leafnet.data.images",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'leafnet.data' has no attribute {name!r}")
