"""Images read per batch from the disk cache: the cold pass, a warm start that decodes nothing,
a cache that cannot be written, and the command that reports and clears a cache."""

from __future__ import annotations

import mmap
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import page_filling_side, tiny_data_cfg, write_odd_image
from torch.utils.data import DataLoader

from leafnet.data import cache as cache_code
from leafnet.data import stream
from leafnet.data.cache import DiskCache
from leafnet.data.cache import main as cache_main
from leafnet.data.datamodule import LeafDataModule
from leafnet.data.images import Preprocessing
from leafnet.data.synthetic import CLASS_NAMES


@pytest.fixture
def own_dir(tmp_path: Path, tiny_image_dir: Path) -> Path:
    return shutil.copytree(tiny_image_dir, tmp_path / "leaves")


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files decoded in this process from now on."""
    calls: list[str] = []
    real = stream.load_for_model

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(stream, "load_for_model", counting)
    return calls


def make(folder: Path, cache: Path | None, **overrides) -> LeafDataModule:
    on = {"cache": True, "cache_dir": str(cache)} if cache else {}
    dm = LeafDataModule(**tiny_data_cfg(folder, **on, **overrides))
    dm.setup()
    return dm


def every_image(dm: LeafDataModule) -> torch.Tensor:
    return dm.dataset().batch(range(len(dm.paths_used)))[0]


def test_a_warm_start_decodes_nothing_not_even_bad_files(
    own_dir: Path, tmp_path: Path, decodes: list[str]
) -> None:
    write_odd_image(own_dir / CLASS_NAMES[0] / "broken.png", "corrupt")
    cache = tmp_path / "cache"
    first = make(own_dir, cache)
    assert "broken.png" in decodes and first.report["decoded"]["images"] == 37
    assert [s["file"] for s in first.report["skipped"]] == [
        str(own_dir / CLASS_NAMES[0] / "broken.png")
    ]
    decodes.clear()
    second = make(own_dir, cache)
    x = every_image(second)
    assert decodes == [] and second.report["decoded"]["images"] == 0
    assert second.report["skipped"] == first.report["skipped"]  # the reason came from the cache
    assert torch.equal(x, every_image(first))
    assert second.report["cache"]["images"] == 36 and second.report["cache"]["bytes"] > 36 * 768


def test_the_cold_pass_in_worker_processes_gives_the_same_images(
    own_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_process = every_image(make(own_dir, tmp_path / "a"))
    monkeypatch.setattr(stream, "_PROCESS_MIN_FILES", 4)  # 12 files a class: processes
    in_workers = make(own_dir, tmp_path / "b")
    assert in_workers.report["decoded"]["images"] == 36
    assert torch.equal(every_image(in_workers), in_process)


def test_cache_entries_are_channels_last_and_older_ones_are_still_read(tmp_path: Path) -> None:
    """An entry is stored [S, S, 3], the batches' layout, and read back as the [3, S, S] image it
    was given; an entry written [3, S, S] by an earlier version reads the same; another size or
    type is a miss."""
    cache, new, old, small = DiskCache(tmp_path), "a" * 40, "b" * 40, "c" * 40
    x = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8)
    assert cache.put(new, x)
    assert np.load(tmp_path / "aa" / f"{new}.npy").shape == (12, 12, 3)
    got = cache.get(new, 12)
    assert got is not None and torch.equal(got, x) and got.stride() == (1, 36, 3)
    (tmp_path / "bb").mkdir()
    np.save(tmp_path / "bb" / f"{old}.npy", x.numpy())
    assert torch.equal(cache.get(old, 12), x)
    assert cache.get(new, 13) is None and cache.get(old, 11) is None
    (tmp_path / "cc").mkdir()
    np.save(tmp_path / "cc" / f"{small}.npy", x.numpy().astype(np.int16))
    assert cache.get(small, 12) is None


def test_a_batch_row_is_read_straight_from_its_entry_and_other_entries_are_refused(
    tmp_path: Path,
) -> None:
    """`read_into` fills a channels-last batch row from a [S, S, 3] entry; an older [3, S, S]
    entry, another size or type, a truncated file, a header it does not know (format 2.0) or a
    miss leave it to `get` (False)."""
    cache = DiskCache(tmp_path)
    x = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8)
    keys = {name: name * 40 for name in "abcdef"}
    assert cache.put(keys["a"], x)
    for name, array in (("b", x.numpy()), ("c", x.permute(1, 2, 0).numpy().astype(np.int16))):
        (tmp_path / (name * 2)).mkdir()
        np.save(tmp_path / (name * 2) / f"{keys[name]}.npy", array)
    (tmp_path / "dd").mkdir()
    whole = (tmp_path / "aa" / f"{keys['a']}.npy").read_bytes()
    (tmp_path / "dd" / f"{keys['d']}.npy").write_bytes(whole[:-1])
    (tmp_path / "ff").mkdir()
    with (tmp_path / "ff" / f"{keys['f']}.npy").open("wb") as fh:
        np.lib.format.write_array(fh, x.permute(1, 2, 0).numpy(), version=(2, 0))
    batch = torch.zeros((2, 12, 12, 3), dtype=torch.uint8).permute(0, 3, 1, 2)  # channels-last
    assert cache.read_into(keys["a"], batch[1]) and torch.equal(batch[1], x)
    assert not cache.read_into(keys["a"], torch.zeros((3, 12, 12), dtype=torch.uint8))
    small = torch.zeros((1, 11, 11, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    assert not cache.read_into(keys["a"], small[0])
    for name in "bcdef":
        assert not cache.read_into(keys[name], batch[0]), name
    assert torch.equal(cache.get(keys["f"], 12), x)


def test_an_interrupted_cold_pass_continues_where_it_stopped(own_dir: Path, tmp_path: Path) -> None:
    files = sorted(own_dir.rglob("*.jpg"))
    prep, cache = Preprocessing(image_size=16), DiskCache(tmp_path / "cache")
    _, decoded = stream.prepare(files[:20], prep, cache, 10**8, 16)  # stopped after 20
    results, decoded_after = stream.prepare(files, prep, cache, 10**8, 16)
    assert (decoded, decoded_after) == (20, 16)
    assert all(reason is None and prints for _, reason, prints in results)


def test_a_cache_that_cannot_be_written_costs_speed_not_correctness(
    own_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a_file").write_text("")
    unwritable = tmp_path / "a_file" / "cache"  # its parent is a file: nothing can be made
    dm = make(own_dir, unwritable)
    assert "could not store 36 images" in caplog.text
    assert torch.equal(every_image(dm), every_image(make(own_dir, tmp_path / "cache")))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 16, 16) and y.shape == (8,)


def test_the_datamodule_holds_no_pixels(own_dir: Path, tmp_path: Path) -> None:
    """Memory flat in the number of photos: paths, keys and labels only, no image tensor."""
    dm = make(own_dir, tmp_path / "cache")
    big = [
        name for name, value in vars(dm).items()
        if isinstance(value, torch.Tensor) and value.numel() > len(dm.paths_used)
    ]  # fmt: skip
    assert big == []
    ds = dm.dataset("train")
    assert [v for v in vars(ds).values() if isinstance(v, torch.Tensor)] == [ds.labels]


def test_the_cache_command_reports_and_clears_only_its_entries(
    own_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    make(own_dir, cache)
    (cache / "README.txt").write_text("mine")
    cache_main([f"dir={cache}"])
    said = capsys.readouterr().out
    assert f"cache {cache}: 36 images," in said
    cache_main([f"dir={cache}", "clear=true"])
    assert list(DiskCache(cache).entries()) == [] and (cache / "README.txt").read_text() == "mine"


def _mapped_file(address: int) -> tuple[str, int] | None:
    """The file (and offset) mapped at `address` in this process, from /proc/self/maps."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, _perms, offset, _dev, _inode, *path = line.split()
        start, end = (int(a, 16) for a in span.split("-"))
        if start <= address < end:
            return (path[0] if path else "", int(offset, 16) + address - start)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_a_batch_is_the_cache_files_own_pages_unmapped_with_it(
    own_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries whose pixels fill whole pages start them on a page (still a .npy), and `map_batch`
    returns such entries as one channels-last batch whose rows are the files mapped, not copies;
    writing into it leaves the files alone, and freeing it unmaps them. An entry in np.save's
    layout among the keys, a truncated entry, a miss or a row the system fails to map: None, and
    the dataset reads them. An image that is not square keeps np.save's layout. The dataset's
    batches at a mapped size are the same pixels, in a worker too."""
    side, page = page_filling_side(), mmap.PAGESIZE
    cache = DiskCache(tmp_path / "cache")
    images = torch.randint(0, 256, (3, 3, side, side), dtype=torch.uint8)
    keys = [c * 40 for c in "abcdef"]
    for key, x in zip(keys, images, strict=False):
        assert cache.put(key, x)
    entry = tmp_path / "cache" / "aa" / f"{keys[0]}.npy"
    assert entry.stat().st_size == page + side * side * 3
    first = images[0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.load(entry, max_header_size=page), first)

    batch = cache.map_batch([keys[2], keys[0]], side)
    assert batch is not None and torch.equal(batch, images[[2, 0]])
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert _mapped_file(batch[1].data_ptr()) == (str(entry), page)
    batch[1].fill_(0)
    assert np.array_equal(np.load(entry, max_header_size=page), first)
    del batch
    assert str(tmp_path) not in Path("/proc/self/maps").read_text()

    failing = cache_code._MMAP
    calls: list[int] = []

    def second_row_fails(at: int, size: int, prot: int, flags: int, fd: int, offset: int) -> int:
        calls.append(fd)
        return 0 if len(calls) == 2 else failing(at, size, prot, flags, fd, offset)

    monkeypatch.setattr(cache_code, "_MMAP", second_row_fails)
    assert cache.map_batch(keys[:3], side) is None
    assert calls[2] == -1  # the failed row's place filled again (anonymous) before the range goes
    monkeypatch.setattr(cache_code, "_MMAP", failing)
    assert str(tmp_path) not in Path("/proc/self/maps").read_text()
    assert cache.put("9" * 40, torch.zeros((3, side, side + 1), dtype=torch.uint8))
    oblong = tmp_path / "cache" / "99" / f"{'9' * 40}.npy"
    pixels = side * (side + 1) * 3  # np.save's 128-byte header, not a page
    assert oblong.stat().st_size == 128 + pixels and np.load(oblong).shape == (side, side + 1, 3)

    (tmp_path / "cache" / "dd").mkdir()
    np.save(tmp_path / "cache" / "dd" / f"{keys[3]}.npy", images[0].permute(1, 2, 0).numpy())
    (tmp_path / "cache" / "ee").mkdir()
    (tmp_path / "cache" / "ee" / f"{keys[4]}.npy").write_bytes(entry.read_bytes()[:-1])
    for other in keys[3:]:
        assert cache.map_batch([keys[0], other], side) is None, other
    assert str(tmp_path) not in Path("/proc/self/maps").read_text()

    dm = make(own_dir, tmp_path / "cache", image_size=side, min_size=8)
    ds = dm.dataset()
    rows = list(range(len(ds)))
    mapped = ds.batch(rows)[0]
    assert _mapped_file(mapped.data_ptr())[0].startswith(str(tmp_path / "cache"))
    assert torch.equal(mapped, torch.stack([ds.read(i) for i in rows]))
    loader = DataLoader(ds, batch_size=len(ds), num_workers=1, collate_fn=stream.collate)
    assert torch.equal(next(iter(loader))[0], mapped)


@pytest.mark.skipif(cache_code._MMAP is None, reason="batches are mapped through libc's mmap")
def test_a_mapped_entry_header_is_read_once_while_its_file_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`map_batch` reads each entry's header for its first batch only; an entry replaced by a
    file of the same size with another header (a new file, as `put` writes) is read again and
    refused."""
    side = page_filling_side()
    cache = DiskCache(tmp_path / "cache")
    keys = ["a" * 40, "b" * 40]
    for key in keys:
        assert cache.put(key, torch.zeros((3, side, side), dtype=torch.uint8))
    reads: list[int] = []
    real_pread = cache_code.os.pread

    def counted(fd: int, n: int, offset: int) -> bytes:
        reads.append(fd)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(cache_code.os, "pread", counted)
    for _ in range(3):
        assert cache.map_batch(keys, side) is not None
    assert len(reads) == 2

    entry = tmp_path / "cache" / "aa" / f"{keys[0]}.npy"
    other = bytearray(entry.read_bytes())
    other[other.index(b"'shape'")] = ord('"')  # the same size, not the header `put` writes
    (tmp_path / "new").write_bytes(bytes(other))
    (tmp_path / "new").replace(entry)
    assert cache.map_batch(keys, side) is None
    assert len(reads) == 3
