"""Duplicate photos are found at scan time and kept in one split; a photo in two classes is
refused in one line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import tiny_data_cfg
from PIL import Image, ImageDraw

from leafnet.data.datamodule import LeafDataModule
from leafnet.errors import LeafnetError


def photo(seed: int) -> Image.Image:
    """A 160 x 120 'leaf photo': random coloured shapes, different for every seed."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (160, 120), tuple(int(v) for v in rng.integers(60, 200, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = int(rng.integers(0, 140)), int(rng.integers(0, 100))
        w, h = int(rng.integers(10, 60)), int(rng.integers(10, 60))
        draw.ellipse((x, y, x + w, y + h), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two classes of 10 distinct photos each; class a also holds copies of a0..a3."""
    root = tmp_path / "leaves"
    for c, name in enumerate("ab"):
        (root / name).mkdir(parents=True)
        for i in range(10):
            photo(100 * c + i).save(root / name / f"{name}{i}.jpg", quality=90)
    a = root / "a"
    shutil.copy(a / "a0.jpg", a / "copy_of_a0.jpg")
    Image.open(a / "a1.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(a / "flipped_a1.jpg")
    Image.open(a / "a2.jpg").resize((120, 90)).save(a / "smaller_a2.jpg", quality=70)
    Image.open(a / "a3.jpg").transpose(Image.Transpose.ROTATE_90).save(a / "turned_a3.png")
    return root


def make(folder: Path, **overrides) -> LeafDataModule:
    cfg = tiny_data_cfg(folder, image_size=32, duplicates="near", val_fraction=0.3)
    dm = LeafDataModule(**{**cfg, "test_fraction": 0.3, **overrides})
    dm.setup()
    return dm


def test_copies_flips_resizes_and_turns_are_grouped_and_kept_in_one_split(folder: Path) -> None:
    dm = make(folder)
    found = dm.report["duplicates"]
    groups = sorted(sorted(Path(p).name for p in g) for g in found["groups"])
    assert groups == [
        ["a0.jpg", "copy_of_a0.jpg"], ["a1.jpg", "flipped_a1.jpg"],
        ["a2.jpg", "smaller_a2.jpg"], ["a3.jpg", "turned_a3.png"],
    ]  # fmt: skip
    assert found["exact_copies"] == 1
    subset = {p.name: s for p, s in zip(dm.paths_used, dm.subsets, strict=True)}
    for group in groups:
        assert len({subset[name] for name in group}) == 1, group
    for seed in range(5):  # whatever the seed, no group is split
        again = make(folder, split_seed=seed)
        subset = {p.name: s for p, s in zip(again.paths_used, again.subsets, strict=True)}
        assert all(len({subset[n] for n in g}) == 1 for g in groups)


def test_exact_mode_groups_byte_copies_only(folder: Path) -> None:
    groups = make(folder, duplicates="exact").report["duplicates"]["groups"]
    assert [sorted(Path(p).name for p in g) for g in groups] == [["a0.jpg", "copy_of_a0.jpg"]]


def test_a_photo_in_two_classes_is_refused(folder: Path) -> None:
    shutil.copy(folder / "a" / "a5.jpg", folder / "b" / "also_a5.jpg")
    with pytest.raises(LeafnetError, match=r"same photo in two classes \(a, b\)") as err:
        make(folder)
    assert "\n" not in str(err.value)


def test_names_that_say_the_leaf_group_its_photos(folder: Path) -> None:
    for i in range(3):
        shutil.move(folder / "b" / f"b{i}.jpg", folder / "b" / f"leaf7_shot{i}.jpg")
    dm = make(folder, group_pattern=r"^(leaf\d+)_")
    names = [sorted(Path(p).name for p in g) for g in dm.report["duplicates"]["groups"]]
    assert ["leaf7_shot0.jpg", "leaf7_shot1.jpg", "leaf7_shot2.jpg"] in names


def test_an_error_naming_a_file_that_is_not_utf8_is_still_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from leafnet.errors import fail

    name = os.fsdecode(b"/photos/leaf_\xff.jpg")  # as a folder scan returns it
    with pytest.raises(SystemExit):
        fail(f"{name} is the same photo in two classes")
    assert capsys.readouterr().err == (
        "leafnet: error: /photos/leaf_\\udcff.jpg is the same photo in two classes\n"
    )


def test_the_blockwise_search_finds_every_near_pair_and_only_those(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Against the definition checked pair by pair: photo i and a later photo j are near when
    i's upright hash is within NEAR_BITS of one of j's 8; planted pairs sit at the threshold."""
    from leafnet.data import duplicates

    rng = np.random.default_rng(0)
    n = 90
    words = rng.integers(0, 2**63, (n, 8, 4), dtype=np.int64).astype(np.uint64)
    planted = {(3, 40): 0, (3, 41): 40, (10, 11): 41, (20, 89): 12, (50, 60): 39}
    for (i, j), bits in planted.items():  # j's turn k = i's upright hash with `bits` flipped
        k = int(rng.integers(0, 8))
        flipped = np.unpackbits(words[i, 0].view(np.uint8))
        flipped[rng.choice(256, bits, replace=False)] ^= 1
        words[j, k] = np.packbits(flipped).view(np.uint64)
    hexes = [["".join(f"{int(w):016x}" for w in words[i, k]) for k in range(8)] for i in range(n)]
    expected = [
        (i, j)
        for i in range(n)
        for j in range(i + 1, n)
        if min(int(np.bitwise_count(words[i, 0] ^ words[j, k]).sum()) for k in range(8))
        <= duplicates.NEAR_BITS
    ]
    assert expected == [(3, 40), (3, 41), (20, 89), (50, 60)]  # 41 bits is one too many
    for columns, rows in ((1024, 1024), (7, 5), (1, 1)):  # one block; several; a photo a block
        monkeypatch.setattr(duplicates, "_COLUMNS", columns)
        monkeypatch.setattr(duplicates, "_ROWS", rows)
        assert duplicates._near_pairs(hexes) == expected
