"""Fixtures that write tiny image folders for the tests (owned by the data tests).

- `tiny_image_dir`: session-scoped, 3 classes in the seed's names, 12 small JPEGs each (48x40),
  drawn so that a model can learn something (each class has its own mark, on varied greens).
- `write_odd_image(path, kind)`: writes one unusual or broken file (see `ODD_KINDS`).
- `tiny_data_cfg(dir, **overrides)`: keyword arguments for `LeafDataModule` with test-friendly
  defaults (16 px, no disk cache unless asked).
"""

from __future__ import annotations

import io
import mmap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from leafnet.data.synthetic import CLASS_NAMES

TINY_PER_CLASS = 12
TINY_SIZE = (48, 40)  # width, height: not square, so letterboxing is exercised

ODD_KINDS = (
    "corrupt",
    "truncated",
    "zero_byte",
    "text_as_jpg",
    "too_small",
    "bomb",
    "grayscale",
    "palette",
    "rgba",
    "cmyk",
    "16bit",
    "exif_rotated",
)


def tiny_leaf(label: int, index: int, size: tuple[int, int] = TINY_SIZE) -> Image.Image:
    """A small green blob with its class's mark: brown dots, a ringed spot, or a pale trail."""
    rng = np.random.default_rng([7, label, index])
    w, h = size
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(150, 230, 3)))
    draw = ImageDraw.Draw(img)
    green = (int(rng.integers(30, 90)), int(rng.integers(110, 180)), int(rng.integers(20, 70)))
    draw.ellipse((w * 0.1, h * 0.15, w * 0.9, h * 0.85), fill=green)
    cx, cy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65)
    if label == 0:
        for _ in range(4):
            x, y = cx + rng.uniform(-10, 10), cy + rng.uniform(-6, 6)
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(90, 50, 30))
    elif label == 1:
        draw.ellipse((cx - 7, cy - 7, cx + 7, cy + 7), fill=(220, 200, 60))
        draw.ellipse((cx - 4, cy - 4, cx + 4, cy + 4), fill=(100, 60, 30))
    else:
        draw.line((w * 0.2, cy, w * 0.5, cy - 6, w * 0.8, cy + 4), fill=(230, 240, 210), width=3)
    return img


def write_tiny_dir(root: Path, per_class: int = TINY_PER_CLASS) -> Path:
    for label, name in enumerate(CLASS_NAMES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            tiny_leaf(label, i).save(root / name / f"{i:02d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def tiny_image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 class folders (the seed's names) x 12 JPEGs of 48x40 px. Do not modify: shared."""
    return write_tiny_dir(tmp_path_factory.mktemp("tiny_leaves"))


def _jpeg_bytes(img: Image.Image, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def write_odd_image(path: str | Path, kind: str, size: tuple[int, int] = (64, 48)) -> Path:
    """Write one odd file of `kind` (one of ODD_KINDS) at `path`; returns the path.

    Broken kinds: corrupt (a PNG with scrambled pixel data), truncated (a JPEG cut in half), zero_byte,
    text_as_jpg, too_small (8x8), bomb (a valid PNG header claiming 100000x100000 px).
    Odd but usable kinds: grayscale, palette, rgba (transparent left half), cmyk, 16bit
    (grayscale PNG, mid-grey 0x8000), exif_rotated (a 64x48 image tagged "rotate 90": upright it
    is 48x64, with a red band at the top after transposing).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = tiny_leaf(0, 0, size)
    if kind == "corrupt":
        buf = io.BytesIO()
        tiny_leaf(1, 0, (128, 128)).save(buf, "PNG")
        data = bytearray(buf.getvalue())
        start = data.index(b"IDAT") + 40  # scramble compressed pixels: the header stays valid
        data[start : start + 200] = bytes(
            np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8)
        )
        path.write_bytes(bytes(data))
    elif kind == "truncated":
        good = _jpeg_bytes(tiny_leaf(1, 0, (256, 256)), quality=95)
        path.write_bytes(good[: len(good) // 2])
    elif kind == "zero_byte":
        path.write_bytes(b"")
    elif kind == "text_as_jpg":
        path.write_text("this is not an image\n")
    elif kind == "too_small":
        base.resize((8, 8)).save(path)
    elif kind == "bomb":
        path.write_bytes(_bomb_png(100_000, 100_000))
    elif kind == "grayscale":
        base.convert("L").save(path)
    elif kind == "palette":
        base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path)
    elif kind == "rgba":
        rgba = base.convert("RGBA")
        rgba.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
        rgba.save(path)
    elif kind == "cmyk":
        base.convert("CMYK").save(path, "JPEG")
    elif kind == "16bit":
        Image.fromarray(np.full((size[1], size[0]), 0x8000, np.uint16)).save(path)
    elif kind == "exif_rotated":
        img = Image.new("RGB", size, (0, 128, 0))
        ImageDraw.Draw(img).rectangle((0, 0, 7, size[1]), fill=(255, 0, 0))  # left edge -> top
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90 CW to display
        img.save(path, "JPEG", exif=exif, quality=95)
    else:
        raise ValueError(f"unknown odd image kind {kind!r}; use one of {ODD_KINDS}")
    return path


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with a tiny (invalid) body."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def odd_image() -> Any:
    """The `write_odd_image(path, kind)` helper, as a fixture."""
    return write_odd_image


def tiny_data_cfg(data_dir: str | Path, **overrides: Any) -> dict[str, Any]:
    """LeafDataModule keyword arguments for tests: 16 px letterbox, no disk cache, batch 8."""
    cfg: dict[str, Any] = {
        "dir": str(data_dir),
        "synthetic": False,
        "image_size": 16,
        "min_size": 16,
        "cache": False,
        "cache_dir": None,
        "batch_size": 8,
        "seed": 0,
        "duplicates": "exact",  # the tiny blobs are near duplicates of each other at 48x40 px
    }
    cfg.update(overrides)
    return cfg


def page_filling_side() -> int:
    """The smallest image side (a multiple of 64) whose uint8 rows fill whole memory pages here,
    where the disk cache's entries can be mapped as batches: 64 with 4 KiB pages."""
    return next(s for s in (64, 128, 256) if s * s * 3 % mmap.PAGESIZE == 0)
