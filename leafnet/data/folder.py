"""An image folder's layout, read without opening a photo: `check_data_dir` (one line for a
folder that cannot be trained on), `scan_folder` (class names as Keras sorts them, each class's
image files). The layout is Keras' `image_dataset_from_directory`: one sub-folder per class."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from leafnet.data.images import IMAGE_EXTENSIONS
from leafnet.errors import LeafnetError

log = logging.getLogger("leafnet.data")


def check_data_dir(root: str | Path) -> list[str]:
    """The class folders of `root`, or one line saying what is wrong with it."""
    root = Path(root)
    if not root.exists():
        raise LeafnetError(
            f"data.dir={root} does not exist; point data.dir at a folder with one sub-folder per class"
        )
    if not root.is_dir():
        raise LeafnetError(f"data.dir={root} is a file, not a folder of class sub-folders")
    try:
        classes = sorted(
            p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
    except OSError as err:
        raise LeafnetError(f"data.dir={root} cannot be read ({err.strerror})") from None
    if not classes:
        raise LeafnetError(
            f"no class sub-folders in {root}; expected image-folder layout {root}/<class>/<image>"
        )
    if len(classes) < 2:
        raise LeafnetError(
            f"only one class sub-folder in {root} ({classes[0]}); a classifier needs at least two"
        )
    return classes


def image_files(folder: Path, skipped: list[dict[str, str]]) -> list[Path]:
    """Image files under `folder`, walked without recursion (a tree of any depth); hidden
    entries ignored; what cannot be read or is not a regular file (a FIFO, a device, which would
    block or never end) noted in `skipped` with the reason."""
    found: list[Path] = []
    stack = [folder]
    while stack:
        here = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError as err:
            skipped.append({"file": str(here), "reason": f"folder not readable ({err.strerror})"})
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    stack.append(Path(entry.path))
                    continue
                if Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                if not stat.S_ISREG(entry.stat().st_mode):
                    skipped.append({"file": entry.path, "reason": "not a regular file"})
                    continue
            except OSError as err:
                skipped.append({"file": entry.path, "reason": f"cannot read ({err.strerror})"})
                continue
            found.append(Path(entry.path))
    return sorted(found)


def scan_folder(
    root: str | Path, skipped: list[dict[str, str]] | None = None
) -> tuple[list[str], list[list[Path]]]:
    """Class names (sorted) and each class's image files (sorted), in image-folder layout.

    Hidden files and folders and files without an image extension are ignored; sub-folders
    inside a class folder are searched too, as Keras does. What cannot be read, or is not a
    regular file, is appended to `skipped` with the reason.
    """
    classes = check_data_dir(root)
    noted: list[dict[str, str]] = [] if skipped is None else skipped
    return classes, [image_files(Path(root) / name, noted) for name in classes]
