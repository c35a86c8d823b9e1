"""What the commands that use a trained model share: their arguments, the model, the input files.

predict, evaluate, export and explain parse `key=value` arguments with their own
`conf/<command>.yaml` (no run directory), load the checkpoint through `runs.load_classifier` (the
one safe way) and, for images, go through `data.images` (the one way to preprocess).
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from leafnet.data.images import IMAGE_EXTENSIONS, BadImage, load_for_model
from leafnet.errors import LeafnetError
from leafnet.module import LeafClassifier
from leafnet.perf import auto_device

PROGRESS_MIN_FILES = 64  # below this a progress bar is noise


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` is the GPU when there is one, else the CPU; anything else must be available."""
    name = str(name)
    if name == "auto":
        return auto_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LeafnetError(f"device={name} is not a device; use auto, cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LeafnetError(f"device={name}: no CUDA GPU here; use device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise LeafnetError(f"device={name}: MPS is not available here; use device=cpu")
    return device


def load_model(cfg: DictConfig, device: str | None = None) -> tuple[LeafClassifier, torch.device]:
    """The checkpoint named by `cfg.ckpt` (file or run dir), in eval mode on `device` or
    `cfg.device`."""
    from leafnet.runs import load_classifier

    try:
        from leafnet.perf import tune_process

        tune_process()  # allocator thresholds and physical-core threads, as training sets them
    except ImportError:
        pass
    where = resolve_device(device or cfg.get("device", "auto"))
    return load_classifier(str(cfg.ckpt), map_location=where), where


def expand_inputs(spec: Any) -> list[Path]:
    """An image file, a folder (searched recursively for image files) or a glob pattern."""
    text = os.path.expanduser(str(spec))
    path = Path(text)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
        if not found:
            raise LeafnetError(
                f"input={spec}: the folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        return sorted(found)
    if glob.has_magic(text):
        # pathlib's `**` does not descend into symlinked folders (glob.glob does, and a link
        # loop makes it run forever): match from the folder before the first wildcard.
        parts = path.parts
        first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        base = Path(*parts[:first]) if first else Path(".")
        found = sorted(p for p in base.glob("/".join(parts[first:])) if p.is_file())
        if not found:
            raise LeafnetError(f"input={spec} matches no files")
        return found
    raise LeafnetError(
        f"input={spec} not found; give an image, a folder or a glob such as 'dir/*.jpg'"
    )


def printable(name: str) -> str:
    """A file name any terminal can print: bytes that are not UTF-8 shown as U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def display_names(files: Sequence[Path]) -> list[str]:
    """File names as short as stays unambiguous: relative to the files' common folder."""
    if len(files) == 1:
        return [printable(files[0].name)]
    absolute = [f.resolve() for f in files]
    root = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    return [printable(p.relative_to(root).as_posix()) for p in absolute]


def _batches(files: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(files), size):
        yield files[start : start + size]


def iter_predictions(
    classifier: LeafClassifier,
    files: Sequence[Path],
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    workers: int = 4,
    progress: bool | None = None,
    keep_inputs: bool = False,
) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, str]]]]:
    """Per batch of files: predictions `{file, predicted, probabilities}` for the readable ones
    and `{file, reason}` for the rest. Memory stays that of one batch, however many files.
    `keep_inputs`: each prediction also holds `input`, the image as the network read it (for a
    caller that needs the photo again, without decoding it twice)."""
    from tqdm.auto import tqdm

    names = list(classifier.hparams.class_names)
    prep = classifier.prep
    show = len(files) >= PROGRESS_MIN_FILES if progress is None else progress
    bar = tqdm(total=len(files), unit="img", disable=not show, file=sys.stderr, leave=False)

    def load(path: Path) -> torch.Tensor | BadImage:
        try:
            return load_for_model(path, prep)
        except BadImage as err:
            return err

    # Threads: PIL releases the GIL while decoding and resizing.
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool, bar:
        for chunk in _batches(files, batch_size):
            results: list[dict[str, Any]] = []
            skipped: list[dict[str, str]] = []
            good: list[tuple[Path, torch.Tensor]] = []
            for path, item in zip(chunk, pool.map(load, chunk), strict=True):
                if isinstance(item, BadImage):
                    skipped.append({"file": str(path), "reason": item.reason})
                    if len(files) > 1:  # a single file's reason goes into the caller's error
                        bar.write(f"leafnet: skipped {path}: {item.reason}", file=sys.stderr)
                else:
                    good.append((path, item))
            if good:
                x = torch.stack([t for _, t in good]).to(device)
                with torch.inference_mode():
                    probs = classifier.predict_proba(x).float().cpu()
                for (path, image), p in zip(good, probs, strict=True):
                    results.append(
                        {
                            "file": str(path),
                            "predicted": names[int(p.argmax())],
                            "probabilities": {n: float(v) for n, v in zip(names, p, strict=True)},
                        }
                    )
                    if keep_inputs:
                        results[-1]["input"] = image
            bar.update(len(chunk))
            yield results, skipped
