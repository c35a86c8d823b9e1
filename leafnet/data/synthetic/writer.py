"""Writing the synthetic set: the images in parallel, the marker that names the set, the
contact sheet, and the command line."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

from leafnet.config import command_config
from leafnet.data.synthetic.paint import CLASS_NAMES, image_rng
from leafnet.data.synthetic.render import render
from leafnet.errors import LeafnetError, cli_errors
from leafnet.files import atomic_path, refuse_existing

# Images per class in the embedded set, and their side in pixels; a smaller set is its first n,
# a set painted at another size the same scenes, each in a folder of its own.
PER_CLASS = 100
SIZE = 640


def folder_name(style: str, n_per_class: int = PER_CLASS, size: int = SIZE) -> str:
    """The folder the set (its first `n_per_class` per class, painted `size` px) is written into."""
    name = f"synthetic-{style}" + ("" if n_per_class == PER_CLASS else f"-{n_per_class}")
    return name + ("" if size == SIZE else f"-{size}px")


def _write_one(args: tuple[Path, int, int, int, int, str]) -> Path:
    out_dir, label, index, size, seed, style = args
    img, quality = render(label, image_rng(seed, label, index), size, style)
    path = out_dir / CLASS_NAMES[label] / f"{index:03d}.jpg"
    img.save(path, "JPEG", quality=quality)
    return path


def generate(
    out_dir: str | Path,
    n_per_class: int = PER_CLASS,
    size: int = 640,
    seed: int = 0,
    workers: int = 1,
    style: str = "lab",
) -> list[Path]:
    """Write `n_per_class` JPEGs per class to `out_dir/<class>/NNN.jpg`; returns the paths."""
    out_dir = Path(out_dir)
    for name in CLASS_NAMES:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    jobs = [
        (out_dir, label, i, size, seed, style)
        for label in range(len(CLASS_NAMES))
        for i in range(n_per_class)
    ]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn" if sys.platform != "linux" else "fork").Pool(workers) as pool:
            return pool.map(_write_one, jobs, chunksize=8)
    return [_write_one(job) for job in jobs]


MARKER = ".leafnet-synthetic.json"


# Raised whenever a style's images change, so a set written by an older leafnet is not taken
# for the current one.
VERSIONS = {"lab": 1, "field": 1}


def _marker(n_per_class: int, size: int, seed: int, style: str) -> dict:
    return {
        "style": style,
        "version": VERSIONS[style],
        "seed": seed,
        "n_per_class": n_per_class,
        "size": size,
    }


def ensure_synthetic(
    out_dir: str | Path,
    n_per_class: int = PER_CLASS,
    size: int = SIZE,
    seed: int = 0,
    style: str = "lab",
) -> bool:
    """Generate the set into `out_dir` unless it is already there; True if it was written.

    The set is written into a temporary sibling with a marker file and renamed into place, so an
    interrupted run or a parallel sweep job never sees a half-written set. A folder that exists
    and holds anything (hidden files included) without the marker of this very set is refused
    with a LeafnetError: nothing of the user's is ever deleted or written into.
    """
    out_dir = Path(out_dir)
    wanted = _marker(n_per_class, size, seed, style)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        marker = out_dir / MARKER
        found = json.loads(marker.read_text()) if marker.is_file() else None
        if found == wanted:
            return False
        if found:
            raise LeafnetError(
                f"data.dir={out_dir} holds another synthetic set ({found}); delete that folder "
                "to have it written again, or point data.dir at a new folder"
            )
        raise LeafnetError(
            f"data.dir={out_dir} holds files leafnet did not write; to train on your own photos "
            f"use data=folder data.dir={out_dir}, else point data.dir at a new folder"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise LeafnetError(f"data.dir={out_dir} is a file; point data.dir at a folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        generate(tmp, n_per_class, size, seed, workers=min(4, os.cpu_count() or 1), style=style)
        (tmp / MARKER).write_text(json.dumps(wanted) + "\n")
        try:
            tmp.rename(out_dir)  # replaces only an empty folder; fails over a non-empty one
        except OSError:  # another process finished first: its set is the same
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder, if still there


def contact_sheet(
    data_dir: str | Path,
    out_png: str | Path,
    per_class: int = 6,
    thumb: int = 200,
    replace: bool = True,
) -> Path:
    """A PNG with the first `per_class` images of each class in a row, labelled; an existing
    `out_png` is replaced only with `replace`."""
    data_dir = Path(data_dir)
    label_h = 18
    sheet = Image.new(
        "RGB", (per_class * thumb, len(CLASS_NAMES) * (thumb + label_h)), (255, 255, 255)
    )
    draw = ImageDraw.Draw(sheet)
    for row, name in enumerate(CLASS_NAMES):
        top = row * (thumb + label_h)
        draw.text((4, top + 3), name, fill=(0, 0, 0))
        for col, path in enumerate(sorted((data_dir / name).glob("*.jpg"))[:per_class]):
            with Image.open(path) as img:
                sheet.paste(
                    img.convert("RGB").resize((thumb, thumb), Image.Resampling.LANCZOS),
                    (col * thumb, top + label_h),
                )
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png, replace=replace) as tmp:
        sheet.save(tmp, "PNG")
    return out_png


@cli_errors
def main(argv: list[str] | None = None) -> None:
    """`key=value` arguments (conf/synthetic.yaml): write the set, and a contact sheet if asked."""
    cfg = command_config("data.synthetic", sys.argv[1:] if argv is None else argv, conf="synthetic")
    if cfg.preview:  # checked before minutes of writing the set
        if Path(str(cfg.preview)).suffix.lower() != ".png":
            raise LeafnetError(f"preview={cfg.preview}: the contact sheet is a PNG; end it in .png")
        refuse_existing(str(cfg.preview), cfg.overwrite, "preview")
    root = Path(os.environ.get("LEAFNET_ROOT", "."))
    out = (
        Path(str(cfg.out))
        if cfg.out
        else root / "data" / folder_name(cfg.style, cfg.n_per_class, cfg.size)
    )
    start = time.perf_counter()
    if ensure_synthetic(out, cfg.n_per_class, cfg.size, cfg.seed, cfg.style):
        print(f"wrote the {cfg.style} set to {out} in {time.perf_counter() - start:.1f} s")
    else:
        print(f"{out} already holds this set")
    if cfg.preview:
        print(f"preview: {contact_sheet(out, Path(str(cfg.preview)), replace=cfg.overwrite)}")
