"""Duplicate photos, found at scan time and kept in one split so that they cannot inflate accuracy.

Real leaf sets hold the same photo twice (copied, re-saved, flipped, resized) and several photos
of one leaf. A random split scatters them over train and test, and the test then partly measures
memory. Each image gets two fingerprints when it is first cached:
- `sha1`: the file's bytes; equal bytes are an exact duplicate;
- `dhash`: imagehash's 16 x 16 difference hash (256 bits) of the photo (upright, decoded at
  about 256 px), for each of its 8 flips and quarter turns; two images are near duplicates when
  one's hash is within `NEAR_BITS` bits of any of the other's 8.

`NEAR_BITS = 40` was measured on PlantVillage's potato photos (216 of them, 23,000 pairs, leaves
on one grey background, so distinct photos look alike): distinct leaves were at least 74 bits
apart; the same photo re-encoded or resized stayed within 5, flipped or turned within 0, rotated
by 2 degrees within 38 and by 3 degrees within 48. So re-saves, resizes, flips, quarter turns and
rotations up to about 2 degrees are caught; larger rotations and other photos of the same leaf
are not (name-based grouping, `data.group_pattern`, covers those where file names say the leaf).

`group_images` joins duplicates (and same-pattern names) into groups; the split keeps each group
in one subset. A photo whose exact copy stands in another class folder is refused in one line.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from leafnet.data.images import read_image
from leafnet.errors import LeafnetError

HASH_SIZE = 16  # 16 x 16 = 256 bits
NEAR_BITS = 40
# The blocks of the pair search: 1,024 later photos' 8 hashes against 1,024 photos' upright hashes
# (a 32 MB block of dot products).
_COLUMNS = 1024
_ROWS = 1024


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dihedral_dhashes(photo: Image.Image) -> list[str]:
    """imagehash's dhash (hex) of a photo in its 8 flips and quarter turns."""
    import imagehash

    gray = photo.convert("L")
    turns = [
        None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM,
        Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270,
        Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE,
    ]  # fmt: skip
    return [
        str(imagehash.dhash(gray if t is None else gray.transpose(t), hash_size=HASH_SIZE))
        for t in turns
    ]


def fingerprint(path: Path, max_pixels: int) -> dict[str, Any]:
    """The file's fingerprints; raises BadImage as `read_image` does."""
    photo = read_image(path, max_pixels, draft=256)  # JPEGs decode at 1/2..1/8 scale: fast
    return {"sha1": file_sha1(path), "dhash": dihedral_dhashes(photo)}


def _signs(hexes: Sequence[str]) -> np.ndarray:
    """256-bit hex hashes as rows of +-1 [n, 256], float32."""
    packed = np.frombuffer(bytes.fromhex("".join(hexes)), np.uint8).reshape(len(hexes), 32)
    return np.unpackbits(packed, axis=1).astype(np.float32) * 2 - 1


def _near_pairs(dhashes: Sequence[Sequence[str]]) -> list[tuple[int, int]]:
    """Pairs (i < j) whose hashes are within NEAR_BITS bits in some flip or turn: photo i's
    upright hash against each later photo's 8.

    As +-1 vectors two 256-bit hashes at Hamming distance d have the dot product 256 - 2d, so
    every distance comes out of one matrix product (exact in float32), a block at a time: the
    search is quadratic in the photos, and a BLAS product does it at the CPU's arithmetic speed."""
    n = len(dhashes)
    if n < 2:
        return []
    upright = _signs([h[0] for h in dhashes])  # [n, 256]
    least_dot = 256 - 2 * NEAR_BITS
    pairs: list[tuple[int, int]] = []
    for c0 in range(1, n, _COLUMNS):  # later photos, 8 hashes each
        c1 = min(c0 + _COLUMNS, n)
        turns = _signs([h[k] for k in range(8) for h in dhashes[c0:c1]])  # [8 * (c1 - c0), 256]
        turns = np.ascontiguousarray(turns.T)
        for r0 in range(0, c1 - 1, _ROWS):
            r1 = min(r0 + _ROWS, c1 - 1)
            dots = (upright[r0:r1] @ turns).reshape(r1 - r0, 8, c1 - c0).max(axis=1)
            i, j = np.nonzero(dots >= least_dot)
            a, b = r0 + i, c0 + j
            keep = a < b
            pairs += zip(a[keep].tolist(), b[keep].tolist(), strict=True)
    return sorted(pairs)


def _union_find(n: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [root(i) for i in range(n)]


def group_images(
    paths: Sequence[Path],
    labels: Sequence[int],
    class_names: Sequence[str],
    prints: Sequence[dict[str, Any]],
    group_pattern: str | None = None,
    near: bool = True,
) -> tuple[list[int], dict[str, Any]]:
    """A group id per image (the lowest index in its group) and the report of what was joined."""
    n = len(paths)
    by_sha: dict[str, list[int]] = {}
    for i, fp in enumerate(prints):
        by_sha.setdefault(fp["sha1"], []).append(i)
    exact = [ix for ix in by_sha.values() if len(ix) > 1]
    for ix in exact:
        classes = sorted({class_names[labels[i]] for i in ix})
        if len(classes) > 1:
            raise LeafnetError(
                f"{paths[ix[0]]} and {paths[ix[1]]} are the same photo in two classes "
                f"({', '.join(classes)}); keep it in one class folder"
            )
    pairs = [(ix[0], i) for ix in exact for i in ix[1:]]
    near_pairs = _near_pairs([fp["dhash"] for fp in prints]) if near else []
    pairs += near_pairs
    if group_pattern:
        try:
            pattern = re.compile(group_pattern)
        except re.error as err:
            raise LeafnetError(f"data.group_pattern={group_pattern!r}: {err}") from None
        by_name: dict[str, int] = {}
        for i, path in enumerate(paths):
            match = pattern.search(path.name)
            if match:
                name = match.group(1) if pattern.groups else match.group(0)
                pairs.append((by_name.setdefault(name, i), i))
    groups = _union_find(n, pairs)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    joined = [m for m in members.values() if len(m) > 1]
    report = {
        "exact_copies": sum(len(ix) - 1 for ix in exact),
        "near_pairs": len(near_pairs),
        "groups": [[str(paths[i]) for i in m] for m in joined],
        "near_bits": NEAR_BITS,
    }
    return groups, report
