"""The embedded synthetic leaf set: layout, balance, determinism, styles, first-use generation that
never touches a user's folder, CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leafnet.data import synthetic
from leafnet.data.synthetic import CLASS_NAMES, MARKER, contact_sheet, ensure_synthetic, generate
from leafnet.errors import LeafnetError


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


def test_ensure_synthetic_refuses_a_folder_it_did_not_write(tmp_path):
    # A folder holding only hidden files (a fresh git repository, a .env) is not empty.
    target = tmp_path / "mine"
    (target / ".git").mkdir(parents=True)
    (target / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (target / ".env").write_text("SECRET=1\n")
    with pytest.raises(LeafnetError, match="data=folder"):
        ensure_synthetic(target, n_per_class=1, size=32)
    assert sorted(p.name for p in target.iterdir()) == [".env", ".git"]
    assert (target / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary folder left


def test_ensure_synthetic_refuses_another_set_and_a_file(tmp_path):
    target = tmp_path / "syn"
    assert ensure_synthetic(target, n_per_class=1, size=32, seed=1) is True
    before = digests(target)
    with pytest.raises(LeafnetError, match="another synthetic set"):
        ensure_synthetic(target, n_per_class=1, size=32, seed=2)
    assert digests(target) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(LeafnetError, match="is a file"):
        ensure_synthetic(tmp_path / "file", n_per_class=1, size=32)


def test_ensure_synthetic_fills_an_empty_folder(tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    assert ensure_synthetic(target, n_per_class=1, size=32) is True
    assert len(digests(target)) == 3 and (target / MARKER).is_file()


def test_field_style_is_unchanged():
    # The field set documents the dying-ReLU finding: its images must not drift between versions.
    expected = {
        0: "50db243decc5680216fd59dbd4d1927933826153",
        1: "290520ba17951af384c203b7845ae5e7a1d43d37",
        2: "8b4e6defe5b278cb8798d22484b7839bd0a08568",
    }
    for label, digest in expected.items():
        img, _ = synthetic.render(label, synthetic.image_rng(0, label, 1), 96, "field")
        assert hashlib.sha1(np.asarray(img).tobytes()).hexdigest() == digest


def test_lab_style_is_a_dark_backdrop_with_an_upright_leaf():
    for label in range(3):
        img, quality = synthetic.render(label, synthetic.image_rng(0, label, 0), 128, "lab")
        px = np.asarray(img, float)
        corners = np.concatenate([px[:8, :8], px[:8, -8:], px[-8:, :8], px[-8:, -8:]])
        assert corners.mean() < 20  # black cloth
        centre = px[48:80, 48:80]
        assert centre.mean() > 60  # the leaf fills the middle
        bright = (px.mean(axis=2) > 40).sum(axis=1)  # leaf pixels per row
        assert bright[20:108].min() > 0  # it spans the frame from base to tip (upright)
        assert 85 <= quality <= 95


def test_lab_lesions_follow_each_disease_placement():
    # Alternaria from the margin inward, mines along the midrib: compare lesion pixels' distance
    # from the leaf's axis (the image's vertical centre line) between the two classes.
    def offset(label: int) -> float:
        distances = []
        for i in range(4):
            img, _ = synthetic.render(label, synthetic.image_rng(0, label, i), 160, "lab")
            px = np.asarray(img, float)
            brown = (px[..., 0] > px[..., 1] + 15) & (
                px[..., 0] > 50
            )  # dark and tan lesion colours
            _, xs = np.nonzero(brown)
            distances.append(np.abs(xs - 80).mean())
        return float(np.mean(distances))

    assert offset(synthetic.ALTERNARIA) > 1.5 * offset(synthetic.MINER)


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="style"):
        synthetic.render(0, synthetic.image_rng(0, 0, 0), 32, "studio")


def test_cli_and_contact_sheet(tmp_path, capsys):
    out = tmp_path / "cli"
    sheet = tmp_path / "sheet.png"
    argv = [f"out={out}", "n_per_class=2", "size=48", "seed=1", f"preview={sheet}"]
    synthetic.main(argv)
    assert "wrote the lab set" in capsys.readouterr().out
    with Image.open(sheet) as img:
        assert img.size[0] > 0 and img.size[1] > 3 * 48
    synthetic.main([*argv, "overwrite=true"])
    assert "already holds this set" in capsys.readouterr().out
    assert contact_sheet(out, tmp_path / "s2.png", per_class=1, thumb=32).exists()
    with pytest.raises(SystemExit) as exc:  # another set there: refused
        synthetic.main([*argv[:3], "seed=2"])
    assert exc.value.code == 2
    assert "another synthetic set" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("preview", "says"),
    [("mine.png", "exists; add overwrite=true"), ("notes.txt", "end it in .png")],
)
def test_a_preview_never_replaces_a_users_file_or_fails_late(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], preview: str, says: str
) -> None:
    (tmp_path / "mine.png").write_bytes(b"my own picture")
    with pytest.raises(SystemExit) as exc:
        synthetic.main(
            [f"out={tmp_path / 'set'}", "n_per_class=1", "size=32", f"preview={tmp_path / preview}"]
        )
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and says in err and len(err.splitlines()) == 1
    assert (tmp_path / "mine.png").read_bytes() == b"my own picture"
    assert not (tmp_path / "set").exists()  # refused before the set was written
