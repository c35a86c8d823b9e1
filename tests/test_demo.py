"""`make demo`: a short run, predictions and explanations, and a closing note of where they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from leafnet.data.splits import read_split
from leafnet.demo import DEMO_OVERRIDES, demo, start_writing_photos


def test_the_demo_trains_predicts_explains_and_says_where(
    tiny_train_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    run_dir = demo(
        [
            "data=folder", f"data.dir={tiny_train_images}", "data.image_size=32", "epochs=1",
            "data.duplicates=exact", f"data.cache_dir={tmp_path / 'cache'}", "logger=none",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    photos = sorted((run_dir.parent / "photos").iterdir())
    split = read_split(run_dir / "split.csv")  # the photos to try are test photos, six at most
    test_names = [Path(rel).name for rel, (_cls, subset) in split.items() if subset == "test"]
    assert [p.name for p in photos] == sorted(test_names[:6]) and photos
    assert sum(p.name in out for p in photos) == len(photos)  # the prediction table
    for line in ("leafnet demo: done in", f"run            {run_dir}", "next:", "make train"):
        assert line in out
    assert len(list((run_dir.parent / "explain").glob("*.png"))) == 4


def test_the_demo_trains_on_the_sets_first_40_per_class_in_their_own_folder() -> None:
    from leafnet.config import compose

    data = compose("train", list(DEMO_OVERRIDES)).data
    assert (data.synthetic_per_class, data.synthetic_size) == (40, 256)
    assert Path(str(data.dir)).name == "synthetic-lab-40-256px"


def test_the_head_start_writes_the_set_the_data_module_then_takes(tmp_path: Path) -> None:
    from leafnet.config import compose
    from leafnet.data.synthetic.writer import ensure_synthetic

    folder = tmp_path / "synthetic-lab-2-64px"
    overrides = ["++data.synthetic_per_class=2", "data.synthetic_size=64", "data.synthetic_seed=3"]
    cfg = compose("train", [f"data.dir={folder}", *overrides])
    writer = start_writing_photos(cfg.data)
    assert writer is not None and writer.wait() == 0
    assert len(list(folder.glob("*/*.jpg"))) == 6
    # the data module's own check finds this very set (a different one would be refused)
    assert not ensure_synthetic(folder, n_per_class=2, size=64, seed=3, style="lab")
    assert start_writing_photos(cfg.data) is None  # nothing to start once it is there
