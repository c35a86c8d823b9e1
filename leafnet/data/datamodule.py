"""`LeafDataModule`: scan an image folder, validate and resize each file once, split, serve batches.

    LeafDataModule(**cfg.data, batch_size=cfg.batch_size, seed=cfg.seed, run_dir=run_dir)

Pipeline (in `setup`): scan `dir` in image-folder layout (class = sub-folder, sorted as Keras
sorts them) -> read each file once with `images.load_for_model` (or take it from the disk cache)
-> skip and report bad files -> stratified seeded split (or `split_file`, or K-fold) -> one uint8
tensor [N, 3, S, S] in memory. Loaders index that tensor, so after the first run an epoch costs
no decoding at all; float scaling happens per batch on the training device (`images.to_float`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from leafnet.data import splits
from leafnet.data.cache import DiskCache, cache_key
from leafnet.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    BadImage,
    Preprocessing,
    load_for_model,
    to_display,
)
from leafnet.data.synthetic import STYLES, ensure_synthetic
from leafnet.errors import LeafnetError
from leafnet.files import write_text

log = logging.getLogger("leafnet.data")

AUGMENT_MODES = ("none", "basic")


def scan_folder(root: str | Path) -> tuple[list[str], list[list[Path]]]:
    """Class names (sorted) and each class's image files (sorted), in image-folder layout.

    Hidden files and folders and files without an image extension are ignored; sub-folders
    inside a class folder are searched too, as Keras does.
    """
    root = Path(root)
    if not root.exists():
        raise LeafnetError(
            f"data.dir={root} does not exist; point data.dir at a folder with one sub-folder per class"
        )
    if not root.is_dir():
        raise LeafnetError(f"data.dir={root} is a file, not a folder of class sub-folders")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise LeafnetError(
            f"no class sub-folders in {root}; expected image-folder layout {root}/<class>/<image>"
        )
    if len(classes) < 2:
        raise LeafnetError(
            f"only one class sub-folder in {root} ({classes[0]}); a classifier needs at least two"
        )
    files = []
    for name in classes:
        found = []
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found.extend(
                Path(dirpath, f)
                for f in filenames
                if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
            )
        files.append(sorted(found))
    return classes, files


def _collate(batch: Any) -> Any:
    """Batches from `ImageTensors.__getitems__` are already (x, y); anything else: default."""
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], Tensor):
        return batch
    return default_collate(batch)


class EpochIndices(Sampler):
    """The training order, each index paired with the epoch: `(epoch, i)`.

    The order is drawn from `seed + epoch` alone (as DataLoader(shuffle=True) draws it from a
    generator seeded so: one int64 for the workers' base seed, then a permutation), so it is the
    same with or without persistent workers, straight or resumed. The dataset seeds a sample's
    augmentation by (seed, epoch, image). Lightning calls `set_epoch` before each epoch.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        generator = torch.Generator().manual_seed(self.seed + epoch)
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # DataLoader's draw
        return ((epoch, i) for i in torch.randperm(self.n, generator=generator).tolist())


def _split_keys(keys: Sequence[Any]) -> tuple[list[int], list[int]]:
    """Positions and epochs of loader keys: `(epoch, i)` from EpochIndices, else plain `i`."""
    epochs = [int(k[0]) if isinstance(k, tuple) else 0 for k in keys]
    positions = [int(k[1]) if isinstance(k, tuple) else int(k) for k in keys]
    return positions, epochs


class ImageTensors(Dataset):
    """A subset of the in-memory uint8 images, optionally augmented per sample."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        index: Tensor,
        transform: Any = None,
        seed: int = 0,
    ) -> None:
        self.images, self.labels, self.index, self.transform = images, labels, index, transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.index)

    def _augmented(self, j: int, epoch: int) -> Tensor:
        # Seeded by (seed, epoch, image), not by a worker's running RNG: persistent workers,
        # another worker count or a resume draw the same flips and rotations.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_003 + j) % 2**63)
            return self.transform(self.images[j])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
        (i,), (epoch,) = _split_keys([key])
        j = int(self.index[i])
        x = self._augmented(j, epoch) if self.transform else self.images[j]
        return x, self.labels[j]

    def __getitems__(self, keys: Sequence[Any]) -> tuple[Tensor, Tensor]:
        # One gather per batch instead of 32 small copies and a stack, into a channels_last
        # batch like the stored images: the step's float conversion then needs no permute.
        positions, epochs = _split_keys(keys)
        sel = self.index[torch.as_tensor(positions, dtype=torch.long)]
        out = torch.empty(
            (len(sel), *self.images.shape[1:]),
            dtype=self.images.dtype,
            memory_format=torch.channels_last,
        )
        if self.transform is None:
            torch.index_select(self.images, 0, sel, out=out)
        else:
            augmented = [self._augmented(j, e) for j, e in zip(sel.tolist(), epochs, strict=True)]
            torch.stack(augmented, out=out)
        return out, self.labels.index_select(0, sel)


def basic_augmentation(pad_color: Sequence[int]) -> Any:
    """Flips, small rotations and colour jitter on uint8 [3, S, S] tensors (train subset only).

    The transforms run on PIL's uint8 kernels (8 ms per 640 px image on one core, against 19 ms
    for the same transforms on tensors, which go through float), and rotation uses torchvision's
    default nearest-neighbour sampling (PIL's bilinear alone costs 10 ms). On a small set the
    first batch of every epoch waits for one worker to augment it, so this cost is data wait.
    """
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.ToPILImage(),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomRotation(15, interpolation=v2.InterpolationMode.NEAREST, fill=list(pad_color)),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            v2.PILToTensor(),
        ]
    )


class LeafDataModule(L.LightningDataModule):
    """Image folder -> validated, cached, split uint8 batches `(x [B,3,S,S], y int64 [B])`."""

    def __init__(
        self,
        dir: str | Path | None = None,
        synthetic: bool = False,
        image_size: int = 640,
        resize: str = "letterbox",
        pad_color: Sequence[int] = (0, 0, 0),
        normalize: str = "rescale",
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_file: str | Path | None = None,
        kfold: int | None = None,
        fold: int = 0,
        strict: bool = False,
        min_size: int = 32,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        num_workers: int | str = "auto",
        augment: str = "none",
        limit_per_class: int | None = None,
        synthetic_seed: int = 0,
        synthetic_style: str = "lab",
        split_seed: int | None = None,
        batch_size: int = 32,
        seed: int = 42,
        run_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        if dir is None or str(dir) in ("", "???"):
            raise LeafnetError(
                "data.dir is not set; give data.dir=/path/to/leaves (one sub-folder per class)"
            )
        self.dir = Path(str(dir)).expanduser()
        self.synthetic = bool(synthetic)
        self._prep = Preprocessing(
            image_size, resize, list(pad_color), normalize, list(mean), list(std)
        )
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.split_file = None if split_file in (None, "") else Path(str(split_file))
        self.kfold = None if kfold in (None, 0) else int(kfold)
        self.fold = int(fold)
        if self.split_file is not None and self.kfold is not None:
            raise LeafnetError("data.split_file and data.kfold exclude each other; set one of them")
        self.strict = bool(strict)
        self.min_size, self.max_pixels = int(min_size), int(max_pixels)
        self.cache = DiskCache(cache_dir if cache and cache_dir not in (None, "") else None)
        if str(num_workers) != "auto" and (not str(num_workers).isdigit()):
            raise LeafnetError(f"data.num_workers={num_workers!r}: use auto or a number >= 0")
        self.num_workers_setting = str(num_workers)
        if augment not in AUGMENT_MODES:
            raise LeafnetError(
                f"data.augment={augment!r} is unknown; use one of {', '.join(AUGMENT_MODES)}"
            )
        self.augment = str(augment)
        if limit_per_class is not None and int(limit_per_class) < 1:
            raise LeafnetError(f"data.limit_per_class={limit_per_class}: use a number >= 1 or null")
        self.limit_per_class = None if limit_per_class is None else int(limit_per_class)
        self.synthetic_seed = int(synthetic_seed)
        if synthetic_style not in STYLES:
            raise LeafnetError(
                f"data.synthetic_style={synthetic_style!r} is unknown; use one of {', '.join(STYLES)}"
            )
        self.synthetic_style = str(synthetic_style)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise LeafnetError(f"batch_size={batch_size}: use a number >= 1")
        self.seed = int(seed)
        self.split_seed = self.seed if split_seed is None else int(split_seed)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._classes: list[str] | None = None
        self._files: list[list[Path]] | None = None
        self._ready = False
        self.report: dict[str, Any] = {"scanned": 0, "used": 0, "skipped": []}
        self.subsets: list[str] = []
        self.paths_used: list[Path] = []

    # ------------------------------------------------------------------ what checkpoints carry
    @property
    def preprocessing(self) -> Preprocessing:
        return self._prep

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (sorted folder names); scans the folder if needed."""
        if self._classes is None:
            self._scan()
        assert self._classes is not None
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ------------------------------------------------------------------ scanning and loading
    def prepare_data(self) -> None:
        if self.synthetic:
            self._ensure_synthetic()

    def _ensure_synthetic(self) -> None:
        # A missing folder is written into only under the set's own name: a mistyped data.dir
        # must not quietly become 300 generated images.
        own_name = f"synthetic-{self.synthetic_style}"
        if not self.dir.exists() and self.dir.name != own_name:
            raise LeafnetError(
                f"data.dir={self.dir} does not exist; for your own photos use data=folder "
                f"data.dir=<your folder>; the synthetic set is written only into a folder named "
                f"{own_name}"
            )
        if ensure_synthetic(self.dir, seed=self.synthetic_seed, style=self.synthetic_style):
            log.info("wrote the synthetic leaf set to %s (first use)", self.dir)

    def _scan(self) -> None:
        if self.synthetic:
            self._ensure_synthetic()
        self._classes, self._files = scan_folder(self.dir)

    def _load_one(self, path: Path) -> Tensor | BadImage:
        try:
            key = cache_key(path, self._prep)
        except OSError as err:
            return BadImage(f"cannot read file ({err.strerror or err})", path)
        x = self.cache.get(key, self._prep.image_size)
        if x is None:
            try:
                # The keras modes give floats; training holds uint8 (a 0.5/255 rounding).
                x = to_display(
                    load_for_model(path, self._prep, self.max_pixels, self.min_size), self._prep
                )
            except BadImage as err:
                return err
            self.cache.put(key, x)
        return x

    def _load(self) -> tuple[list[Tensor], list[int], list[Path]]:
        """Read every file once (threads: PIL releases the GIL while decoding and resizing)."""
        assert self._classes is not None and self._files is not None
        xs: list[Tensor] = []
        ys: list[int] = []
        used: list[Path] = []
        skipped: list[dict[str, str]] = []
        scanned = 0
        limit = self.limit_per_class
        with ThreadPoolExecutor(max_workers=max(1, min(4, (os.cpu_count() or 1)))) as pool:
            for label, files in enumerate(self._files):
                got, pending = 0, list(files)
                while pending and (limit is None or got < limit):
                    n = len(pending) if limit is None else limit - got
                    chunk, pending = pending[:n], pending[n:]
                    scanned += len(chunk)
                    for path, result in zip(chunk, pool.map(self._load_one, chunk), strict=True):
                        if isinstance(result, BadImage):
                            skipped.append({"file": str(path), "reason": result.reason})
                            continue
                        xs.append(result)
                        ys.append(label)
                        used.append(path)
                        got += 1
        self.report = {"scanned": scanned, "used": len(xs), "skipped": skipped}
        return xs, ys, used

    def _write_report(self) -> None:
        skipped = self.report["skipped"]
        where = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            where = self.run_dir / "data_report.json"
            write_text(where, json.dumps(self.report, indent=1) + "\n")
        if skipped:
            first = f"{skipped[0]['file']}: {skipped[0]['reason']}"
            if self.strict:
                raise LeafnetError(
                    f"data.strict=true and {len(skipped)} of {self.report['scanned']} files are "
                    f"bad (first: {first}); fix or remove them, or set data.strict=false"
                )
            see = f"see {where}" if where else f"first: {first}"
            log.warning("skipped %d of %d files, %s", len(skipped), self.report["scanned"], see)

    # ------------------------------------------------------------------ splitting
    def _split(self, labels: list[int], used: list[Path]) -> list[str]:
        assert self._classes is not None
        if self.split_file is not None:
            return self._split_from_file(labels, used)
        if self.kfold is not None:
            return splits.kfold_split(
                labels, self._classes, self.kfold, self.fold, self.test_fraction, self.split_seed
            )
        return splits.stratified_split(
            labels, self._classes, self.val_fraction, self.test_fraction, self.split_seed
        )

    def _relpath(self, path: Path) -> str:
        try:
            return path.relative_to(self.dir).as_posix()
        except ValueError:
            return path.as_posix()

    def _split_from_file(self, labels: list[int], used: list[Path]) -> list[str]:
        assert self._classes is not None and self.split_file is not None
        table = splits.read_split(self.split_file)
        subsets = []
        for label, path in zip(labels, used, strict=True):
            rel = self._relpath(path)
            cls, subset = table.pop(rel, (self._classes[label], "none"))
            if cls != self._classes[label]:
                raise LeafnetError(
                    f"{self.split_file}: {rel} is listed as class {cls!r}, its folder says {self._classes[label]!r}"
                )
            subsets.append(subset)
        if table:
            first = next(iter(table))
            raise LeafnetError(
                f"{self.split_file} lists {len(table)} image(s) missing or unreadable in {self.dir} "
                f"(first: {first}); runs on this split would not compare"
            )
        left_out = subsets.count("none")
        if left_out:
            log.warning("%d image(s) not in %s are left out of this run", left_out, self.split_file)
        return subsets

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        self._scan()
        xs, ys, used = self._load()
        self._write_report()
        if not xs:
            raise LeafnetError(
                f"no valid images left in {self.dir} ({self.report['scanned']} scanned, all skipped); "
                "see data_report.json"
            )
        subsets = self._split(ys, used)
        keep = [i for i, s in enumerate(subsets) if s != "none"]
        # Held channels_last (pixel-interleaved, as decoded): a per-sample augmentation hands
        # PIL an HWC view without a copy (4 -> 1 ms per 640 px image); a batch gather costs 3 ms more.
        size = xs[keep[0]].shape
        self.images = torch.empty(
            (len(keep), *size), dtype=torch.uint8, memory_format=torch.channels_last
        )
        torch.stack([xs[i] for i in keep], out=self.images)
        del xs
        self.labels = torch.tensor([ys[i] for i in keep], dtype=torch.long)
        self.paths_used = [used[i] for i in keep]
        self.subsets = [subsets[i] for i in keep]
        if self.run_dir is not None:
            rows = [
                (self._relpath(p), self._classes[int(y)], s)
                for p, y, s in zip(self.paths_used, self.labels, self.subsets, strict=True)
            ]  # type: ignore[index]
            splits.write_split(self.run_dir / "split.csv", sorted(rows))
        counts = {s: self.subsets.count(s) for s in splits.SUBSETS}
        log.info(
            "data: %d images in %d classes from %s (train %d, val %d, test %d)",
            len(self.subsets),
            len(self.class_names),
            self.dir,
            counts["train"],
            counts["val"],
            counts["test"],
        )
        self._loader_gen = torch.Generator().manual_seed(self.seed)
        self._ready = True

    def _index(self, subset: str) -> Tensor:
        return torch.tensor(
            [i for i, s in enumerate(self.subsets) if s == subset], dtype=torch.long
        )

    def paths(self, subset: str) -> list[Path]:
        """The files of one subset (train | val | test), in dataset order."""
        return [p for p, s in zip(self.paths_used, self.subsets, strict=True) if s == subset]

    def dataset(self, subset: str) -> ImageTensors:
        self.setup()
        transform = (
            basic_augmentation(self._prep.pad_color)
            if subset == "train" and self.augment == "basic"
            else None
        )
        return ImageTensors(self.images, self.labels, self._index(subset), transform, self.seed)

    def workers_for(self, augmented: bool) -> int:
        """auto: no workers while a batch is one in-memory gather (measured fastest); workers
        only when per-sample augmentation has real CPU work to overlap with the step."""
        if self.num_workers_setting != "auto":
            return int(self.num_workers_setting)
        if not augmented:
            return 0
        return max(0, min(4, (os.cpu_count() or 1) - 1))

    def _pin(self) -> bool:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            try:
                return trainer.strategy.root_device.type == "cuda"
            except (AttributeError, RuntimeError):
                pass
        return torch.cuda.is_available()

    def _loader(self, subset: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(subset)
        workers = self.workers_for(ds.transform is not None)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=EpochIndices(len(ds), self.seed) if shuffle else None,
            # Its own generator for the workers' base seed, which the DataLoader would otherwise
            # draw from the global RNG (and so shift what a step draws, e.g. dropout masks).
            generator=self._loader_gen if shuffle else None,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self._pin(),
            collate_fn=_collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
