"""`LeafDataModule`: scan an image folder, validate and resize each file once, split, serve batches.

    LeafDataModule(**cfg.data, batch_size=cfg.batch_size, seed=cfg.seed, run_dir=run_dir)

Pipeline (in `setup`): scan `dir` in image-folder layout (class = sub-folder, sorted as Keras
sorts them) -> make sure each file has a disk-cache entry (`stream.prepare`: decoded once, in
parallel processes, on first use) -> skip and report bad files -> stratified seeded split (or
`split_file`, or K-fold). Loaders read each batch's entries from the cache (`stream.CachedImages`),
so memory stays flat in the number of photos and a warm epoch decodes nothing; float scaling
happens per batch on the training device (`images.to_float`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from leafnet.data import duplicates, splits
from leafnet.data.cache import DiskCache
from leafnet.data.folder import scan_folder
from leafnet.data.images import DEFAULT_MAX_PIXELS, Preprocessing
from leafnet.data.sampling import EpochIndices, EvalShard, balanced_weights
from leafnet.data.stream import CachedImages, basic_augmentation, collate, prepare
from leafnet.data.synthetic import PER_CLASS, SIZE, ensure_synthetic, folder_name
from leafnet.errors import LeafnetError
from leafnet.files import write_text

log = logging.getLogger("leafnet.data")


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
        sampler: str = "shuffle",
        limit_per_class: int | None = None,
        synthetic_seed: int = 0,
        synthetic_style: str = "lab",
        synthetic_per_class: int = PER_CLASS,
        synthetic_size: int = SIZE,
        split_seed: int | None = None,
        duplicates: str = "near",
        group_pattern: str | None = None,
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
        # The values' types and ranges were checked with the config's (`leafnet.schema`).
        self.num_workers_setting = str(num_workers)
        self.augment = str(augment)
        self.sampler = str(sampler)
        self.limit_per_class = None if limit_per_class is None else int(limit_per_class)
        self.synthetic_seed, self.synthetic_style = int(synthetic_seed), str(synthetic_style)
        self.synthetic_per_class = int(synthetic_per_class)
        self.synthetic_size = int(synthetic_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.split_seed = self.seed if split_seed is None else int(split_seed)
        self.duplicates = str(duplicates)
        self.group_pattern = None if group_pattern in (None, "") else str(group_pattern)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._classes: list[str] | None = None
        self._scan_skipped: list[dict[str, str]] = []
        self._files: list[list[Path]] | None = None
        self._ready = False
        self.report: dict[str, Any] = {"scanned": 0, "used": 0, "skipped": []}
        self.subsets: list[str] = []
        self.paths_used: list[Path] = []
        self.keys: list[str] = []  # each used image's cache entry

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
        n, size = self.synthetic_per_class, self.synthetic_size
        own_name = folder_name(self.synthetic_style, n, size)
        if not self.dir.exists() and self.dir.name != own_name:
            raise LeafnetError(
                f"data.dir={self.dir} does not exist; for your own photos use data=folder "
                f"data.dir=<your folder>; the synthetic set is written only into a folder named "
                f"{own_name}"
            )
        if ensure_synthetic(self.dir, n, size, self.synthetic_seed, self.synthetic_style):
            log.info("wrote the synthetic leaf set to %s (first use)", self.dir)

    def _scan(self) -> None:
        if self.synthetic:
            self._ensure_synthetic()
        self._scan_skipped: list[dict[str, str]] = []
        self._classes, self._files = scan_folder(self.dir, self._scan_skipped)

    def _load(self) -> tuple[list[str], list[int], list[Path], list[dict[str, Any]]]:
        """Each file's cache entry (decoded on first use), in class order; bad files reported.
        With `limit_per_class`, files are taken in order until that many are usable."""
        assert self._classes is not None and self._files is not None
        keys: list[str] = []
        ys: list[int] = []
        used: list[Path] = []
        prints: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = list(self._scan_skipped)  # unreadable folders, FIFOs
        scanned = decoded = 0
        started = time.perf_counter()
        limit = self.limit_per_class
        for label, files in enumerate(self._files):
            got, pending = 0, list(files)
            while pending and (limit is None or got < limit):
                n = len(pending) if limit is None else limit - got
                chunk, pending = pending[:n], pending[n:]
                scanned += len(chunk)
                results, new = prepare(
                    chunk, self._prep, self.cache, self.max_pixels, self.min_size
                )
                decoded += new
                for path, (key, reason, fp) in zip(chunk, results, strict=True):
                    if reason is not None or fp is None:
                        skipped.append({"file": str(path), "reason": reason or "unreadable"})
                        continue
                    keys.append(key)
                    prints.append(fp)
                    ys.append(label)
                    used.append(path)
                    got += 1
        seconds = max(time.perf_counter() - started, 1e-3)
        self.report = {
            "scanned": scanned,
            "used": len(keys),
            "skipped": skipped,
            "decoded": {"images": decoded, "seconds": round(seconds, 3)},
        }
        if decoded:
            log.info("decoded %d photos in %.1f s (%.0f/s)", decoded, seconds, decoded / seconds)
        return keys, ys, used, prints

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
    def _group(
        self, used: list[Path], labels: list[int], prints: list[dict[str, Any]]
    ) -> list[int]:
        """Duplicate photos (and same-leaf names) joined into groups the split keeps together."""
        assert self._classes is not None
        if self.duplicates == "off":
            return list(range(len(used)))
        groups, found = duplicates.group_images(
            used, labels, self._classes, prints, self.group_pattern, near=self.duplicates == "near"
        )
        self.report["duplicates"] = found
        if found["groups"]:
            log.warning(
                "%d groups of duplicate or same-leaf photos (%d files; %d exact copies): each "
                "group is kept in one split; see data_report.json",
                len(found["groups"]), sum(len(g) for g in found["groups"]), found["exact_copies"],
            )  # fmt: skip
        return groups

    def _split(self, labels: list[int], used: list[Path], groups: list[int]) -> list[str]:
        assert self._classes is not None
        if self.split_file is not None:
            return self._split_from_file(labels, used)
        if self.kfold is not None:
            return splits.kfold_split(
                labels, self._classes, self.kfold, self.fold, self.test_fraction, self.split_seed,
                groups,
            )  # fmt: skip
        return splits.stratified_split(
            labels, self._classes, self.val_fraction, self.test_fraction, self.split_seed, groups
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
        keys, ys, used, prints = self._load()
        self._report_cache(keys)
        if not keys:
            self._write_report()
            raise LeafnetError(
                f"no valid images left in {self.dir} ({self.report['scanned']} scanned, all skipped); "
                "see data_report.json"
            )
        groups = self._group(used, ys, prints)
        self._write_report()
        subsets = self._split(ys, used, groups)
        keep = [i for i, s in enumerate(subsets) if s != "none"]
        self.keys = [keys[i] for i in keep]
        self.labels = torch.tensor([ys[i] for i in keep], dtype=torch.long)
        self.paths_used = [used[i] for i in keep]
        self.subsets = [subsets[i] for i in keep]
        if self.run_dir is not None:
            rows = [
                (self._relpath(p), self._classes[int(y)], s)
                for p, y, s in zip(self.paths_used, self.labels, self.subsets, strict=True)
            ]  # type: ignore[index]
            splits.write_split(self.run_dir / "split.csv", sorted(rows))
        per_subset = {s: self._counts(s) for s in splits.SUBSETS}
        self.report["classes"] = {
            name: {s: per_subset[s][label] for s in splits.SUBSETS}
            for label, name in enumerate(self._classes)
        }
        if self.run_dir is not None:
            write_text(self.run_dir / "data_report.json", json.dumps(self.report, indent=1) + "\n")
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

    def _positions(self, subset: str | None) -> list[int]:
        return [i for i, s in enumerate(self.subsets) if subset is None or s == subset]

    def class_counts(self, subset: str = "train") -> list[int]:
        """Images per class (in label order) in one subset."""
        self.setup()
        return self._counts(subset)

    def _counts(self, subset: str) -> list[int]:
        counts = [0] * len(self.class_names)
        for i in self._positions(subset):
            counts[int(self.labels[i])] += 1
        return counts

    def paths(self, subset: str) -> list[Path]:
        """The files of one subset (train | val | test), in dataset order."""
        return [self.paths_used[i] for i in self._positions(subset)]

    def dataset(self, subset: str | None = None) -> CachedImages:
        """One subset (train | val | test), or every used image (None), read from the cache."""
        self.setup()
        transform = (
            basic_augmentation(self._prep.pad_color)
            if subset == "train" and self.augment == "basic"
            else None
        )
        at = self._positions(subset)
        return CachedImages(
            [self.paths_used[i] for i in at],
            [self.keys[i] for i in at],
            self.labels[at],
            self._prep,
            self.cache,
            self.max_pixels,
            self.min_size,
            transform,
            self.seed,
        )

    def _report_cache(self, keys: list[str]) -> None:
        """The cache's place and size in the log and data_report.json; a cache that could not
        store every image (read-only or full disk) is named, since its images are decoded per
        batch."""
        if self.cache.root is None:
            log.info("data cache off (data.cache=false): every batch is decoded from its files")
            return
        cached = sum(self.cache.has(k) for k in keys)
        size = self.cache.size_bytes(keys)
        where = str(self.cache.root.resolve())
        self.report["cache"] = {"dir": where, "images": cached, "bytes": size}
        log.info(
            "data cache: %d of %d images, %.2f GB in %s", cached, len(keys), size / 2**30, where
        )
        if cached < len(keys):
            log.warning(
                "data cache %s could not store %d images (read-only or full?): they are decoded "
                "in every epoch, which is slower", where, len(keys) - cached,
            )  # fmt: skip

    def workers_for(self, augmented: bool) -> int:
        """auto: no workers while a batch is a read of cached entries (a few ms a batch); workers
        when per-sample augmentation or decoding (cache off or incomplete) has real CPU work to
        overlap with the step."""
        if self.num_workers_setting != "auto":
            return int(self.num_workers_setting)
        decoding = self.cache.root is None or not all(self.cache.has(k) for k in self.keys)
        if not augmented and not decoding:
            return 0
        return max(0, min(4, (os.cpu_count() or 1) - 1))

    def _pin(self) -> bool:
        trainer = self.trainer
        if trainer is not None:
            try:
                return trainer.strategy.root_device.type == "cuda"
            except (AttributeError, RuntimeError):
                pass
        return torch.cuda.is_available()

    def _first_epoch(self) -> int:
        """The epoch this fit runs first: a resumed run's, restored before loaders are made, is
        the fit loop's processed count (what Lightning later passes to `set_epoch`). Worker
        processes draw their first batches as soon as the loader is iterated, which Lightning
        does before it calls `set_epoch`."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_progress.current.processed

    def _sampler(self, ds: CachedImages, shuffle: bool) -> EpochIndices | EvalShard:
        trainer = self.trainer  # under DDP each process reads its own shard of every subset
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        if not shuffle:
            return EvalShard(len(ds), world, rank)
        weights = balanced_weights(ds.labels) if self.sampler == "balanced" else None
        return EpochIndices(len(ds), self.seed, self._first_epoch(), world, rank, weights)

    def _loader(self, subset: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(subset)
        workers = self.workers_for(ds.transform is not None)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=self._sampler(ds, shuffle),
            # Its own generator for the workers' base seed, which the DataLoader would otherwise
            # draw from the global RNG (and so shift what a step draws, e.g. dropout masks).
            generator=self._loader_gen if shuffle else None,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self._pin(),
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
