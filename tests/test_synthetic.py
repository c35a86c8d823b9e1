"""The embedded synthetic leaf set: layout, balance, determinism, first-use generation, CLI."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from leafnet.data import synthetic
from leafnet.data.synthetic import CLASS_NAMES, contact_sheet, ensure_synthetic, generate


def digests(root) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.jpg"))
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate(root, n_per_class=4, size=64, seed=3)
    return root


def test_class_names_are_the_seeds():
    assert CLASS_NAMES == (
        "Broad_beans_Urahi-Cercospora_leaf_spot",
        "Ridge_gourd_Zika-Alternaria_Leaf_Spot",
        "Tomato_Leaf-Miner",
    )


def test_layout_and_balance(small_set):
    assert sorted(p.name for p in small_set.iterdir()) == list(CLASS_NAMES)
    for name in CLASS_NAMES:
        files = sorted((small_set / name).glob("*.jpg"))
        assert [f.name for f in files] == ["000.jpg", "001.jpg", "002.jpg", "003.jpg"]
        with Image.open(files[0]) as img:
            assert img.format == "JPEG" and img.size == (64, 64) and img.mode == "RGB"


def test_generation_is_deterministic(small_set, tmp_path):
    generate(tmp_path / "again", n_per_class=4, size=64, seed=3)
    assert digests(tmp_path / "again") == digests(small_set)
    generate(tmp_path / "other", n_per_class=4, size=64, seed=4)
    assert digests(tmp_path / "other") != digests(small_set)


def test_each_image_depends_only_on_seed_class_index(small_set, tmp_path):
    generate(tmp_path / "two", n_per_class=2, size=64, seed=3, workers=2)
    both = digests(tmp_path / "two")
    assert both == {
        k: v for k, v in digests(small_set).items() if k.endswith(("000.jpg", "001.jpg"))
    }


def test_images_vary_and_show_a_leaf():
    imgs = [
        np.asarray(synthetic.render(label, synthetic.image_rng(0, label, i), 96)[0], float)
        for label in range(3)
        for i in range(4)
    ]
    means = np.array([im.mean(axis=(0, 1)) for im in imgs])
    assert means.std(axis=0).min() > 3  # backgrounds and lighting differ
    greenish = [
        ((im[..., 1] > im[..., 0] + 8) & (im[..., 1] > im[..., 2] + 8)).mean() for im in imgs
    ]
    assert min(greenish) > 0.03  # there is a green blade in every image


def test_render_is_the_same_for_the_same_rng():
    a, qa = synthetic.render(2, synthetic.image_rng(1, 2, 5), 80)
    b, qb = synthetic.render(2, synthetic.image_rng(1, 2, 5), 80)
    assert qa == qb and 60 <= qa <= 95
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_ensure_synthetic_writes_once(tmp_path):
    target = tmp_path / "syn"
    assert ensure_synthetic(target, n_per_class=2, size=48) is True
    before = digests(target)
    assert len(before) == 6
    assert ensure_synthetic(target, n_per_class=2, size=48) is False
    assert digests(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]  # the temporary sibling is gone


def test_cli_and_contact_sheet(tmp_path, capsys):
    out = tmp_path / "cli"
    sheet = tmp_path / "sheet.png"
    argv = [
        "--out",
        str(out),
        "--n-per-class",
        "2",
        "--size",
        "48",
        "--seed",
        "1",
        "--preview",
        str(sheet),
    ]
    assert synthetic.main(argv) == 0
    assert "wrote 6 images" in capsys.readouterr().out
    with Image.open(sheet) as img:
        assert img.size[0] > 0 and img.size[1] > 3 * 48
    assert synthetic.main(argv) == 0
    assert "already holds images" in capsys.readouterr().out
    assert contact_sheet(out, tmp_path / "s2.png", per_class=1, thumb=32).exists()
