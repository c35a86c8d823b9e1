"""LeafDataModule: scanning, validation and report, errors, splits, K-fold, cache, loaders."""

from __future__ import annotations

import csv
import inspect
import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from fixtures_data import TINY_PER_CLASS, tiny_data_cfg, tiny_leaf, write_odd_image, write_tiny_dir
from PIL import Image

from leafnet.data import stream as stream_module
from leafnet.data.datamodule import LeafDataModule
from leafnet.data.folder import scan_folder
from leafnet.data.synthetic import CLASS_NAMES, ensure_synthetic
from leafnet.errors import LeafnetError


def all_images(dm: LeafDataModule) -> torch.Tensor:
    """Every used image, read from the cache as the loaders read them."""
    return dm.dataset().batch(range(len(dm.paths_used)))[0]


def make(data_dir, **overrides) -> LeafDataModule:
    dm = LeafDataModule(**tiny_data_cfg(data_dir, **overrides))
    dm.setup()
    return dm


@pytest.fixture
def own_dir(tmp_path, tiny_image_dir):
    """A private copy of the tiny set, free to modify."""
    return shutil.copytree(tiny_image_dir, tmp_path / "leaves")


# --------------------------------------------------------------------------- scanning
def test_scan_sorts_classes_and_ignores_hidden_and_non_images(own_dir):
    cls = own_dir / CLASS_NAMES[0]
    (cls / "notes.txt").write_text("hello")
    (cls / ".DS_Store").write_bytes(b"\0")
    (cls / "Thumbs.db").write_bytes(b"\0")
    (cls / ".hidden.jpg").write_bytes(b"junk")
    (own_dir / ".git").mkdir()
    tiny_leaf(0, 99).save(cls / "UPPER.JPEG")
    tiny_leaf(0, 98).save(cls / "mixed.Png")
    (cls / "sub").mkdir()
    tiny_leaf(0, 97).save(cls / "sub" / "nested.webp")
    tiny_leaf(0, 96).save(cls / "t.TIF")
    tiny_leaf(0, 95).save(cls / "b.bmp")
    names, files = scan_folder(own_dir)
    assert names == sorted(CLASS_NAMES)
    assert len(files[0]) == TINY_PER_CLASS + 5
    assert {p.suffix for p in files[0]} == {".jpg", ".JPEG", ".Png", ".webp", ".TIF", ".bmp"}
    dm = make(own_dir)
    assert dm.report["scanned"] == dm.report["used"] == 3 * TINY_PER_CLASS + 5


def test_class_names_sorted_like_keras(tmp_path):
    for name in ["b_class", "A_class", "a_class"]:
        (tmp_path / name).mkdir()
        for i in range(4):
            tiny_leaf(0, i).save(tmp_path / name / f"{i}.png")
    dm = LeafDataModule(**tiny_data_cfg(tmp_path))
    assert dm.class_names == ["A_class", "a_class", "b_class"]  # Python's sorted(), as Keras


# --------------------------------------------------------------------------- bad files
def test_bad_files_are_skipped_and_reported(own_dir, tmp_path, caplog):
    cls = own_dir / CLASS_NAMES[1]
    broken = ["corrupt", "truncated", "zero_byte", "text_as_jpg", "too_small", "bomb"]
    for kind in broken:
        write_odd_image(cls / f"bad_{kind}.jpg", kind)
    usable = ["grayscale", "palette", "rgba", "cmyk", "16bit", "exif_rotated"]
    for kind in usable:
        write_odd_image(
            cls / f"odd_{kind}.{'jpg' if kind in ('cmyk', 'exif_rotated') else 'png'}", kind
        )
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="leafnet.data"):
        dm = make(own_dir, run_dir=run_dir)
    total = 3 * TINY_PER_CLASS + len(broken) + len(usable)
    summary = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert summary == [f"skipped 6 of {total} files, see {run_dir / 'data_report.json'}"]
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["scanned"] == total and report["used"] == total - 6
    reasons = {os.path.basename(s["file"]): s["reason"] for s in report["skipped"]}
    assert set(reasons) == {f"bad_{k}.jpg" for k in broken}
    assert "too many pixels" in reasons["bad_bomb.jpg"]
    assert "empty" in reasons["bad_zero_byte.jpg"]
    assert dm.report == report
    assert all_images(dm).shape == (total - 6, 3, 16, 16)


def test_strict_turns_a_bad_file_into_an_error(own_dir):
    write_odd_image(own_dir / CLASS_NAMES[0] / "zero.jpg", "zero_byte")
    with pytest.raises(
        LeafnetError, match=r"data.strict=true and 1 of 37 files are bad .*zero.jpg: empty file"
    ):
        make(own_dir, strict=True)


# --------------------------------------------------------------------------- user errors
def test_missing_dir(tmp_path):
    with pytest.raises(LeafnetError, match=r"data.dir=.*nope does not exist; point data.dir"):
        make(tmp_path / "nope")


def test_dir_not_set():
    with pytest.raises(LeafnetError, match=r"data.dir is not set"):
        LeafDataModule(dir="???")


def test_no_class_folders(tmp_path):
    tiny_leaf(0, 0).save(tmp_path / "loose.jpg")
    with pytest.raises(
        LeafnetError, match=r"no class sub-folders in .*expected image-folder layout"
    ):
        make(tmp_path)


def test_one_class_is_not_enough(tmp_path):
    (tmp_path / "only").mkdir()
    tiny_leaf(0, 0).save(tmp_path / "only" / "a.jpg")
    with pytest.raises(
        LeafnetError,
        match=r"only one class sub-folder in .* \(only\); a classifier needs at least two",
    ):
        make(tmp_path)


def test_class_too_small_for_the_split(tmp_path):
    write_tiny_dir(tmp_path, per_class=2)
    with pytest.raises(
        LeafnetError,
        match=r"class 'Broad_beans_Urahi-Cercospora_leaf_spot' has 2 usable image.*needs at least 3",
    ):
        make(tmp_path)


def test_nothing_valid_left(tmp_path):
    for name in CLASS_NAMES[:2]:
        write_odd_image(tmp_path / name / "a.jpg", "zero_byte")
    with pytest.raises(
        LeafnetError, match=r"no valid images left in .* \(2 scanned, all skipped\)"
    ):
        make(tmp_path)


def test_errors_are_one_line(tmp_path):
    with pytest.raises(LeafnetError) as info:
        make(tmp_path / "nope")
    assert "\n" not in str(info.value)


def test_settings_that_exclude_each_other(tiny_image_dir):
    with pytest.raises(LeafnetError, match=r"exclude each other"):
        LeafDataModule(**tiny_data_cfg(tiny_image_dir, kfold=3, split_file="x.csv"))
    with pytest.raises(LeafnetError, match=r"data.fold=3 is out of range"):
        make(tiny_image_dir, kfold=3, fold=3)


# --------------------------------------------------------------------------- splits
def subsets_by_path(dm: LeafDataModule) -> dict[str, str]:
    return {p.name + p.parent.name: s for p, s in zip(dm.paths_used, dm.subsets, strict=True)}


def test_split_is_stratified(tiny_image_dir):
    dm = make(tiny_image_dir, val_fraction=0.25, test_fraction=0.25)
    counts = Counter((int(y), s) for y, s in zip(dm.labels, dm.subsets, strict=True))
    for label in range(3):
        assert (counts[(label, "train")], counts[(label, "val")], counts[(label, "test")]) == (
            6,
            3,
            3,
        )


def test_split_is_deterministic_and_seeded(tiny_image_dir):
    a, b = make(tiny_image_dir, seed=1), make(tiny_image_dir, seed=1)
    c = make(tiny_image_dir, seed=2)
    assert a.subsets == b.subsets
    assert a.subsets != c.subsets
    d = make(tiny_image_dir, seed=2, split_seed=1)  # a different training seed, the same split
    assert d.subsets == a.subsets


def test_split_csv_is_written_and_reused(tiny_image_dir, tmp_path):
    first = make(tiny_image_dir, seed=1, run_dir=tmp_path / "r1")
    rows = list(csv.DictReader((tmp_path / "r1" / "split.csv").open()))
    assert len(rows) == 3 * TINY_PER_CLASS and set(rows[0]) == {"path", "class", "subset"}
    assert rows[0]["path"] == f"{CLASS_NAMES[0]}/00.jpg" and rows[0]["class"] == CLASS_NAMES[0]
    again = make(
        tiny_image_dir, seed=99, split_file=tmp_path / "r1" / "split.csv", run_dir=tmp_path / "r2"
    )
    assert subsets_by_path(again) == subsets_by_path(first)
    assert (tmp_path / "r2" / "split.csv").read_text() == (
        tmp_path / "r1" / "split.csv"
    ).read_text()


def test_split_file_must_match_the_folder(tiny_image_dir, tmp_path):
    make(tiny_image_dir, run_dir=tmp_path / "r1")
    rows = (tmp_path / "r1" / "split.csv").read_text().splitlines()
    (tmp_path / "extra.csv").write_text(
        "\n".join([*rows, f"{CLASS_NAMES[0]}/gone.jpg,{CLASS_NAMES[0]},train"])
    )
    with pytest.raises(LeafnetError, match=r"lists 1 image.*missing or unreadable.*gone.jpg"):
        make(tiny_image_dir, split_file=tmp_path / "extra.csv")
    with pytest.raises(LeafnetError, match=r"does not exist"):
        make(tiny_image_dir, split_file=tmp_path / "none.csv")


def test_kfold_each_image_is_validation_exactly_once(tiny_image_dir):
    folds = [make(tiny_image_dir, kfold=3, fold=i, test_fraction=0.25) for i in range(3)]
    tests = [{k for k, s in subsets_by_path(f).items() if s == "test"} for f in folds]
    assert tests[0] == tests[1] == tests[2] and len(tests[0]) == 9  # held out first, identical
    val_count = Counter(k for f in folds for k, s in subsets_by_path(f).items() if s == "val")
    assert set(val_count) == set(subsets_by_path(folds[0])) - tests[0]
    assert set(val_count.values()) == {1}
    for f in folds:  # stratified: 9 non-test images per class -> 3 per fold
        assert Counter(int(y) for y, s in zip(f.labels, f.subsets, strict=True) if s == "val") == {
            0: 3,
            1: 3,
            2: 3,
        }


def test_kfold_too_many_folds_for_a_class(tiny_image_dir):
    with pytest.raises(LeafnetError, match=r"10-fold needs at least 10"):
        make(tiny_image_dir, kfold=10, test_fraction=0.25)


def test_limit_per_class(tiny_image_dir):
    dm = make(tiny_image_dir, limit_per_class=5, val_fraction=0.2, test_fraction=0.2)
    assert Counter(dm.labels.tolist()) == {0: 5, 1: 5, 2: 5}
    assert dm.report["scanned"] == 15


# --------------------------------------------------------------------------- cache
def test_cache_reads_each_file_once_and_rereads_a_changed_file(own_dir, tmp_path, monkeypatch):
    calls = []
    real = stream_module.load_for_model

    def counting(path, *args, **kwargs):
        calls.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(stream_module, "load_for_model", counting)
    cache = tmp_path / "cache"
    first = make(own_dir, cache=True, cache_dir=cache)
    assert len(calls) == 3 * TINY_PER_CLASS
    assert len(list(cache.rglob("*.npy"))) == 3 * TINY_PER_CLASS
    calls.clear()
    second = make(own_dir, cache=True, cache_dir=cache)
    assert calls == []
    assert torch.equal(all_images(first), all_images(second))

    changed = own_dir / CLASS_NAMES[2] / "03.jpg"
    Image.new("RGB", (48, 40), (255, 255, 255)).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = make(own_dir, cache=True, cache_dir=cache)
    assert calls == ["03.jpg"]
    i = third.paths_used.index(changed)
    assert all_images(third)[i][:, 8].float().mean() > 250  # the new white pixels (centre row)

    calls.clear()
    make(own_dir, cache=True, cache_dir=cache, image_size=20)  # other settings: other entries
    assert len(calls) == 3 * TINY_PER_CLASS


def test_corrupt_cache_entry_is_rebuilt(own_dir, tmp_path):
    cache = tmp_path / "cache"
    first = make(own_dir, cache=True, cache_dir=cache)
    for f in cache.rglob("*.npy"):
        f.write_bytes(b"garbage")
    again = make(own_dir, cache=True, cache_dir=cache)
    assert torch.equal(all_images(first), all_images(again))


# --------------------------------------------------------------------------- loaders
def test_loaders_yield_uint8_batches_of_batch_size(tiny_image_dir, tmp_path):
    dm = make(
        tiny_image_dir, batch_size=8, val_fraction=0.25, test_fraction=0.25, cache=True,
        cache_dir=tmp_path / "cache",
    )  # fmt: skip
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.uint8
    assert y.shape == (8,) and y.dtype == torch.int64
    seen = torch.cat([b[1] for b in dm.val_dataloader()])
    assert len(seen) == 9 and sorted(seen.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert sum(len(b[1]) for b in dm.test_dataloader()) == 9
    assert dm.train_dataloader().num_workers == 0  # auto: reads of cached entries need no workers
    uncached = make(tiny_image_dir, batch_size=8)  # cache off: batches are decoded, in workers
    assert uncached.train_dataloader().num_workers == max(0, min(4, (os.cpu_count() or 1) - 1))
    assert dm.train_dataloader().pin_memory is torch.cuda.is_available()


def test_train_batches_match_the_stored_images(tiny_image_dir):
    dm = make(tiny_image_dir)
    ds = dm.dataset("train")
    x, y = ds.batch([0, 3])
    at = dm.paths_used.index(ds.files[3])
    assert torch.equal(x[1], all_images(dm)[at]) and y[1] == dm.labels[at]
    assert x.is_contiguous(memory_format=torch.channels_last)  # the step needs no permute
    single_x, single_y = ds[3]
    assert torch.equal(single_x, x[1]) and single_y == y[1]


def test_basic_augmentation_only_on_train(tiny_image_dir, tmp_path):
    dm = make(tiny_image_dir, augment="basic", num_workers=0)
    train, val = dm.dataset("train"), dm.dataset("val")
    assert train.transform is not None and val.transform is None
    torch.manual_seed(0)
    x, _ = train.batch(list(range(len(train))))
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 16, 16)
    at = [dm.paths_used.index(f) for f in train.files]
    assert not torch.equal(x, all_images(dm)[at])
    cached = {"cache": True, "cache_dir": str(tmp_path / "cache")}
    auto = LeafDataModule(**tiny_data_cfg(tiny_image_dir, augment="basic", **cached))
    assert auto.workers_for(augmented=True) == max(0, min(4, (os.cpu_count() or 1) - 1))
    assert auto.workers_for(augmented=False) == 0


def test_basic_augmentation_rotates_in_the_pad_colour():
    # A uniform image in the pad colour stays uniform through flips, rotation (corners filled
    # with the pad colour) and colour jitter (which maps equal pixels to equal pixels); a wrong
    # fill colour would show as corners that differ from the middle.
    pad = [200, 40, 10]
    augment = stream_module.basic_augmentation(pad)
    image = torch.tensor(pad, dtype=torch.uint8).view(3, 1, 1).expand(3, 64, 64).contiguous()
    torch.manual_seed(0)
    for _ in range(8):
        out = augment(image)
        assert out.dtype == torch.uint8 and out.shape == image.shape
        assert torch.equal(out, out[:, :1, :1].expand_as(out))
    marked = image.clone()
    marked[:, :8, :8] = 0  # a dark corner: some draws must move it
    moved = [not torch.equal(augment(marked) == 0, marked == 0) for _ in range(8)]
    assert any(moved)


def test_properties_for_checkpoints(tiny_image_dir):
    dm = LeafDataModule(**tiny_data_cfg(tiny_image_dir, resize="stretch", pad_color=[9, 9, 9]))
    assert dm.class_names == list(CLASS_NAMES)  # available before setup
    assert dm.preprocessing.to_dict()["resize"] == "stretch"
    assert dm.preprocessing.pad_color == [9, 9, 9]


def test_accepts_every_key_of_the_data_configs(tmp_path):
    keys = set(yaml.safe_load(Path("conf/data/folder.yaml").read_text()))
    keys |= set(yaml.safe_load(Path("conf/data/synthetic.yaml").read_text())) - {"defaults"}
    params = set(inspect.signature(LeafDataModule).parameters)
    assert keys <= params, keys - params


def test_synthetic_set_is_generated_on_first_use(tmp_path):
    target = tmp_path / "synthetic"
    target.mkdir()  # present but empty counts as missing
    split = {"val_fraction": 0.25, "test_fraction": 0.25}
    dm = make(target, synthetic=True, synthetic_per_class=4, synthetic_size=48, **split)
    assert dm.class_names == list(CLASS_NAMES) and len(dm.labels) == 12
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_a_mistyped_data_dir_is_not_filled_with_generated_images(tmp_path):
    typo = tmp_path / "my_leaves_typo"
    with pytest.raises(LeafnetError, match=r"my_leaves_typo does not exist; .*data=folder"):
        make(typo, synthetic=True).setup("fit")
    assert not typo.exists() and list(tmp_path.iterdir()) == []


def test_a_balanced_sampler_trains_on_every_class_equally_often(own_dir: Path) -> None:
    first = sorted(p for p in own_dir.iterdir() if p.is_dir())[0]
    for extra in sorted(first.iterdir())[3:]:  # 3 photos of this class against 12 of the others
        extra.unlink()
    counts = {"shuffle": torch.zeros(3), "balanced": torch.zeros(3)}
    for sampler in counts:
        dm = make(own_dir, sampler=sampler)
        loader = dm.train_dataloader()
        for epoch in range(40):
            loader.sampler.set_epoch(epoch)
            for _, y in loader:
                counts[sampler] += torch.bincount(y, minlength=3)
    shares = {k: v / v.sum() for k, v in counts.items()}
    assert shares["shuffle"][0] < 0.15  # about 2 of 19 training photos
    assert shares["balanced"].min() > 0.25 and shares["balanced"].max() < 0.42


def test_a_part_of_the_synthetic_set_is_its_first_images(tmp_path: Path) -> None:
    """`data.synthetic_per_class=n` (make demo's 40) writes the full set's first n per class, in
    a folder of its own name."""
    part, whole = tmp_path / "synthetic-lab-2", tmp_path / "synthetic-lab-3"
    ensure_synthetic(part, n_per_class=2, size=48)
    ensure_synthetic(whole, n_per_class=3, size=48)
    for name in CLASS_NAMES:
        assert sorted(p.name for p in (part / name).iterdir()) == ["000.jpg", "001.jpg"]
        for p in (part / name).iterdir():
            assert p.read_bytes() == (whole / name / p.name).read_bytes()
    with pytest.raises(LeafnetError, match="synthetic-lab-40"):
        make(tmp_path / "synthetic-lab", synthetic=True, synthetic_per_class=40)


def test_the_synthetic_set_painted_at_another_size_has_a_folder_of_its_own(tmp_path: Path) -> None:
    """`data.synthetic_size` (make demo's 256) paints the same scenes at that side, into
    synthetic-<style>[-<n>]-<size>px; the set's own folder name is refused for it."""
    part = {"synthetic": True, "synthetic_per_class": 4, "synthetic_size": 48}
    split = {"val_fraction": 0.25, "test_fraction": 0.25}
    with pytest.raises(LeafnetError, match="synthetic-lab-4-48px"):
        make(tmp_path / "synthetic-lab-4", **part, **split)
    own = tmp_path / "synthetic-lab-4-48px"
    make(own, **part, **split)
    sizes = {Image.open(p).size for p in own.glob("*/*.jpg")}
    assert len(list(own.glob("*/*.jpg"))) == 12 and sizes == {(48, 48)}
