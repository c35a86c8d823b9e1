"""Images read per batch: the cold pass that fills the disk cache, and the dataset that reads it.

Memory does not grow with the number of photos. `prepare(files, ...)` makes sure each file has a
cache entry (its resized uint8 pixels and fingerprints, or the reason it is not a usable image): a
warm start only stats files and reads the small notes, a cold pass decodes the missing ones in parallel processes with a progress bar, and
an interrupted pass keeps what it finished. `CachedImages` then makes each batch from its entries:
their pages mapped as the batch where they can be (no copy), else read from disk (the page cache,
after the first epoch); where an entry is missing (cache off, a read-only or full cache disk) it
decodes the file instead: slower, same pixels.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate, get_worker_info

from leafnet.data.cache import DiskCache, cache_key
from leafnet.data.duplicates import fingerprint
from leafnet.data.images import BadImage, Preprocessing, load_for_model, to_display
from leafnet.errors import LeafnetError

# Below this many files to decode, worker processes cost more to start than they save.
_PROCESS_MIN_FILES = 64


def decode(path: Path, prep: Preprocessing, max_pixels: int, min_size: int) -> Tensor:
    """The file as training holds it: uint8 [3, S, S] (the keras modes' floats rounded)."""
    return to_display(load_for_model(path, prep, max_pixels, min_size), prep)


Prepared = tuple[str, str | None, dict[str, Any] | None]  # (cache key, reason, fingerprints)


def _prepare_one(job: tuple[Path, Preprocessing, str | None, int, int]) -> Prepared:
    """A file's cache key, and the reason it is not usable (None when it is) or its fingerprints
    (duplicates.py); decodes only what the cache does not already hold."""
    path, prep, root, max_pixels, min_size = job
    cache = DiskCache(root)
    try:
        key = cache_key(path, prep)
    except OSError as err:
        return "", f"cannot read file ({err.strerror or err})", None
    reason = cache.bad(key)
    if reason is not None:
        return key, reason, None
    try:
        if not cache.has(key):
            cache.put(key, decode(path, prep, max_pixels, min_size))
        prints = fingerprint(path, max_pixels)
    except BadImage as err:
        cache.put_bad(key, err.reason)
        return key, err.reason, None
    cache.put_meta(key, prints)
    return key, None, prints


def _worker_init() -> None:
    torch.set_num_threads(1)  # one decode per process; the pool is the parallelism


def prepare(
    files: Sequence[Path],
    prep: Preprocessing,
    cache: DiskCache,
    max_pixels: int,
    min_size: int,
    progress: bool = True,
) -> tuple[list[Prepared], int]:
    """`(key, reason, fingerprints)` per file, in order (reason None for a usable image), and how
    many files were decoded or fingerprinted. Files the cache already knows cost a stat or two and
    a small read; the rest are decoded (in parallel processes when there are many)."""
    root = None if cache.root is None else str(cache.root)
    jobs = [(Path(f), prep, root, max_pixels, min_size) for f in files]
    results: list[Prepared | None] = [None] * len(jobs)
    missing = []
    for i, (path, *_rest) in enumerate(jobs):
        try:
            key = cache_key(path, prep)
        except OSError as err:
            results[i] = ("", f"cannot read file ({err.strerror or err})", None)
            continue
        if (reason := cache.bad(key)) is not None:
            results[i] = (key, reason, None)
        elif cache.has(key) and (prints := cache.meta(key)) is not None:
            results[i] = (key, None, prints)
        else:
            missing.append(i)
    if missing:
        results = _decode_missing(jobs, missing, results, progress)
    return [r for r in results if r is not None], len(missing)


def _decode_missing(
    jobs: list[Any], missing: list[int], results: list[Any], progress: bool
) -> list[Any]:
    from tqdm.auto import tqdm

    cpus = os.cpu_count() or 1
    bar = tqdm(
        total=len(missing),
        desc="decoding photos (first use; cached for later runs)",
        unit="img",
        disable=not progress or len(missing) < _PROCESS_MIN_FILES,
        file=sys.stderr,
        leave=False,
    )
    todo = [jobs[i] for i in missing]
    with bar:
        if cpus == 1 or len(missing) < _PROCESS_MIN_FILES:
            done: Iterator[Any] = map(_prepare_one, todo)
            for i, result in zip(missing, done, strict=True):
                results[i] = result
                bar.update()
        else:
            workers = min(cpus, 8)
            with ProcessPoolExecutor(workers, initializer=_worker_init) as pool:
                done = pool.map(_prepare_one, todo, chunksize=8)
                for i, result in zip(missing, done, strict=True):
                    results[i] = result
                    bar.update()
    return results


def _split_keys(keys: Sequence[Any]) -> tuple[list[int], list[int]]:
    """Positions and epochs of loader keys: `(epoch, i)` from EpochIndices, else plain `i`."""
    epochs = [int(k[0]) if isinstance(k, tuple) else 0 for k in keys]
    positions = [int(k[1]) if isinstance(k, tuple) else int(k) for k in keys]
    return positions, epochs


def collate(batch: Any) -> Any:
    """Batches from `CachedImages.batch` are already (x, y); anything else: default."""
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], Tensor):
        return batch
    return default_collate(batch)


class CachedImages(Dataset):
    """Images read per batch from the disk cache: `files[i]` with `keys[i]` and `labels[i]`,
    optionally augmented per sample. Holds paths and keys only, so workers start at once."""

    def __init__(
        self,
        files: Sequence[Path],
        keys: Sequence[str],
        labels: Tensor,
        prep: Preprocessing,
        cache: DiskCache,
        max_pixels: int,
        min_size: int,
        transform: Any = None,
        seed: int = 0,
    ) -> None:
        self.files, self.keys, self.labels = list(files), list(keys), labels
        self.prep, self.cache = prep, cache
        self.max_pixels, self.min_size = max_pixels, min_size
        self.transform, self.seed = transform, seed

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> Tensor:
        """Image `i` as uint8 [3, S, S]: its cache entry, or the file decoded again."""
        x = self.cache.get(self.keys[i], self.prep.image_size)
        if x is not None:
            return x
        try:
            return decode(self.files[i], self.prep, self.max_pixels, self.min_size)
        except BadImage as err:
            raise LeafnetError(
                f"{self.files[i]} changed during the run and is no longer usable ({err.reason}); "
                "restore it, or start the run again to leave it out"
            ) from None

    def _augmented(self, i: int, epoch: int) -> Tensor:
        # Seeded by (seed, epoch, image), not by a worker's running RNG: persistent workers,
        # another worker count or a resume draw the same flips and rotations.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_003 + i) % 2**63)
            return self.transform(self.read(i))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
        (i,), (epoch,) = _split_keys([key])
        x = self._augmented(i, epoch) if self.transform else self.read(i)
        return x, self.labels[i]

    def batch(self, keys: Sequence[Any]) -> tuple[Tensor, Tensor]:
        """Images and labels for loader keys (positions, or `(epoch, i)` from EpochIndices) as one
        channels_last uint8 batch, the layout the step's float conversion wants: the cache
        entries' pages mapped where they can be (no copy; DiskCache.map_batch), else read into
        the batch row by row."""
        positions, epochs = _split_keys(keys)
        labels = self.labels[torch.as_tensor(positions, dtype=torch.long)]
        side = self.prep.image_size
        # Not in a loader worker: its batch is copied into shared memory anyway.
        if not self.transform and get_worker_info() is None:
            mapped = self.cache.map_batch([self.keys[i] for i in positions], side)
            if mapped is not None:
                return mapped, labels
        out = torch.empty(
            (len(positions), 3, side, side), dtype=torch.uint8, memory_format=torch.channels_last
        )
        for row, (i, epoch) in enumerate(zip(positions, epochs, strict=True)):
            if self.transform:
                out[row] = self._augmented(i, epoch)
            elif not self.cache.read_into(self.keys[i], out[row]):
                out[row] = self.read(i)
        return out, labels

    __getitems__ = batch  # the DataLoader asks for whole batches through this name


def basic_augmentation(pad_color: Sequence[int]) -> Any:
    """Flips, small rotations and colour jitter on uint8 [3, S, S] tensors (train subset only).

    The transforms run on PIL's uint8 kernels (faster than the same transforms on tensors, which
    go through float; see docs/performance.md), and rotation uses torchvision's default
    nearest-neighbour sampling. On a small set the first batch of every epoch waits for one worker
    to augment it, so this cost is data wait.
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
