"""`python -m leafnet.lab.scale`'s photo writer: camera-sized JPEGs, each different, resumable."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from leafnet.lab.scale import write_photos


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.jpg"))
    }


def test_photos_are_distinct_and_an_interrupted_write_finishes_to_the_same_set(
    tmp_path: Path,
) -> None:
    straight = tmp_path / "straight"
    write_photos(straight, 7, (96, 64))
    digests = _digests(straight)
    assert len(digests) == 7 and len(set(digests.values())) == 7
    assert sorted({k.split("/")[0] for k in digests}) == ["blighted", "healthy", "spotted"]
    with Image.open(straight / "healthy" / "000000.jpg") as photo:
        assert photo.size == (96, 64) and photo.format == "JPEG"

    resumed = tmp_path / "resumed"
    write_photos(resumed, 7, (96, 64))
    for name in ("healthy/000003.jpg", "spotted/000004.jpg"):  # as if stopped before these
        (resumed / name).unlink()
    (resumed / ".complete-7").unlink()
    write_photos(resumed, 7, (96, 64))
    assert _digests(resumed) == digests
