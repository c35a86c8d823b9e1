"""Stratified, seeded splits: train/val/test, K-fold, and `split.csv` files to re-use them.

Every function works on a list of labels (one per image, in scan order) and returns a list of
subset names in the same order, so the caller keeps paths and tensors where they are. Each class
is shuffled with its own generator seeded from (seed, class), so adding a class or an image to
one class does not reshuffle the others.

K-fold: the test subset is held out first, exactly as in a plain split with the same seed and
`test_fraction`, and the remaining images are dealt into K stratified folds; fold I is the
validation subset. Every fold of a K-fold study therefore reports on the same untouched test
images, and each non-test image is validation in exactly one fold.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from leafnet.errors import LeafnetError
from leafnet.files import atomic_path

SUBSETS = ("train", "val", "test")


def _class_order(labels: Sequence[int], label: int, seed: int) -> np.ndarray:
    idx = np.flatnonzero(np.asarray(labels) == label)
    return idx[np.random.default_rng([seed, label]).permutation(len(idx))]


def _counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) for a class of n images: rounded, at least one where the fraction is > 0."""
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    return n_val, n_test


def _grouped(order: np.ndarray, groups: Sequence[int] | None) -> list[list[int]]:
    """A class's shuffled images as groups, in the order each group first appears (single
    images without `groups`, so an ungrouped split is the per-image one)."""
    if groups is None:
        return [[int(i)] for i in order]
    members: dict[int, list[int]] = {}
    for i in order:
        members.setdefault(groups[int(i)], []).append(int(i))
    return list(members.values())


def stratified_split(
    labels: Sequence[int],
    class_names: Sequence[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    groups: Sequence[int] | None = None,
) -> list[str]:
    """train/val/test per image, the same fractions within every class. With `groups` (a group
    id per image: duplicates, the same leaf) every group lands whole in one subset, the subset of
    its first image in shuffled order."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise LeafnetError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be "
            "in [0, 1) and leave room for training images"
        )
    subsets = ["train"] * len(labels)
    for label, name in enumerate(class_names):
        order = _class_order(labels, label, seed)
        n_val, n_test = _counts(len(order), val_fraction, test_fraction)
        if len(order) - n_val - n_test < 1:
            raise LeafnetError(
                f"class {name!r} has {len(order)} usable image(s); the split "
                f"(val {val_fraction}, test {test_fraction}) needs at least {n_val + n_test + 1}: "
                "add images or lower data.val_fraction / data.test_fraction"
            )
        taken = {"test": 0, "val": 0}
        for members in _grouped(order, groups):
            if any(subsets[i] != "train" for i in members):
                continue  # a group spanning classes: placed with its first class
            if taken["test"] < n_test:
                subset = "test"
            elif taken["val"] < n_val:
                subset = "val"
            else:
                continue
            for i in members:
                subsets[i] = subset
            taken[subset] += len(members)
    return subsets


def kfold_split(
    labels: Sequence[int],
    class_names: Sequence[str],
    k: int,
    fold: int,
    test_fraction: float,
    seed: int,
    groups: Sequence[int] | None = None,
) -> list[str]:
    """Stratified K-fold after holding out the test subset: fold `fold` is validation. Groups
    stay whole: in the test subset or dealt to one fold."""
    if k < 2:
        raise LeafnetError(f"data.kfold={k}: K-fold needs K >= 2 (or kfold=null for a plain split)")
    if not 0 <= fold < k:
        raise LeafnetError(f"data.fold={fold} is out of range for data.kfold={k}; use 0..{k - 1}")
    subsets = stratified_split(labels, class_names, 0.0, test_fraction, seed, groups)
    for label, name in enumerate(class_names):
        order = np.array([i for i in _class_order(labels, label, seed) if subsets[i] != "test"])
        rest = _grouped(order, groups)
        if len(rest) < k:
            raise LeafnetError(
                f"class {name!r} has {len(rest)} image(s) outside the test subset; "
                f"{k}-fold needs at least {k}: lower data.kfold or add images"
            )
        # Deal round-robin in shuffled order: fold sizes within a class differ by at most one
        # (by a group's size, with groups).
        for j, members in enumerate(rest):
            if j % k == fold:
                for i in members:
                    subsets[i] = "val"
    return subsets


def write_split(path: str | Path, rows: Sequence[tuple[str, str, str]]) -> Path:
    """Write (path, class, subset) rows as CSV, atomically."""
    path = Path(path)
    # surrogateescape: a file name that is not UTF-8 is written back as the bytes it was.
    with (
        atomic_path(path) as tmp,
        tmp.open("w", newline="", encoding="utf-8", errors="surrogateescape") as fh,
    ):
        writer = csv.writer(fh)
        writer.writerow(["path", "class", "subset"])
        writer.writerows(rows)
    return path


def read_split(path: str | Path) -> dict[str, tuple[str, str]]:
    """A split.csv as {path: (class, subset)}; raises LeafnetError if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise LeafnetError(
            f"data.split_file={path} does not exist; give a split.csv from a run dir"
        )
    try:
        with path.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"path", "class", "subset"} <= set(
                reader.fieldnames
            ):
                raise LeafnetError(f"{path}: a split file needs the columns path,class,subset")
            out = {}
            for row in reader:
                if row["subset"] not in SUBSETS:
                    raise LeafnetError(
                        f"{path}: subset {row['subset']!r} is not one of {', '.join(SUBSETS)}"
                    )
                out[row["path"]] = (row["class"], row["subset"])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise LeafnetError(f"{path}: cannot read split file ({err})") from None
    if not out:
        raise LeafnetError(f"{path}: the split file lists no images")
    return out
