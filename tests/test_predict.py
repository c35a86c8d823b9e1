"""predict: on the session's tiny run; table, CSV/JSON, skipped files, a large EXIF-rotated photo,
and one-line errors for bad arguments."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_cli import run_error
from fixtures_runs import TINY_CLASSES
from PIL import Image

from leafnet.config import command_config
from leafnet.predict import main, predict


def test_predict_folder_prints_table_and_writes_csv(
    tiny_run: Path, tiny_train_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "preds.csv"
    results = predict(
        command_config("predict", [f"ckpt={tiny_run}", f"input={tiny_train_images}", f"out={out}"])
    )
    printed = capsys.readouterr().out
    files = sorted(tiny_train_images.rglob("*.jpg"))
    assert len(results) == len(files) == 36
    header = printed.splitlines()[0].split()
    assert header == ["file", "predicted", *TINY_CLASSES]
    assert f"{TINY_CLASSES[0]}/{TINY_CLASSES[0]}_00.jpg" in printed  # names relative to input
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 36
    for row in rows:
        probs = [float(row[c]) for c in TINY_CLASSES]
        assert abs(sum(probs) - 1) < 1e-4
        assert row["predicted"] == TINY_CLASSES[int(np.argmax(probs))]
    # The tiny run learned its three colours: most training images come out right.
    right = sum(Path(r["file"]).parent.name == r["predicted"] for r in rows)
    assert right >= 24, f"{right}/36 right"


def test_predict_glob_json_skips_unreadable(
    tiny_run: Path, tiny_train_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for src in sorted((tiny_train_images / TINY_CLASSES[2]).glob("*.jpg"))[:3]:
        (folder / src.name).write_bytes(src.read_bytes())
    (folder / "broken.jpg").write_text("not an image")
    (folder / "notes.txt").write_text("ignored by the glob")
    out = tmp_path / "preds.json"
    args = [f"input={folder}/*.jpg", f"out={out}", "batch_size=2", "progress=true"]
    results = predict(command_config("predict", [f"ckpt={tiny_run}", *args]))
    captured = capsys.readouterr()
    assert len(results) == 3
    assert "skipped" in captured.err and "broken.jpg" in captured.err
    assert "img/s" in captured.err or "4/4" in captured.err  # the progress bar
    doc = json.loads(out.read_text())
    assert doc["class_names"] == list(TINY_CLASSES)
    assert doc["preprocessing"]["image_size"] == 32
    assert [Path(s["file"]).name for s in doc["skipped"]] == ["broken.jpg"]
    assert {Path(p["file"]).name for p in doc["predictions"]} == {
        p.name for p in folder.glob("*.jpg") if p.name != "broken.jpg"
    }


def _photo(width: int, height: int) -> Image.Image:
    """A smooth 'camera photo': a green leaf on a light background, a dark band along the top."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 200 - 60 * yy / height
    img[..., 1] = 210 - 30 * xx / width
    img[..., 2] = 180
    leaf = ((xx - width / 2) / (0.35 * width)) ** 2 + ((yy - height / 2) / (0.3 * height)) ** 2 < 1
    img[leaf] = (50, 150, 40)
    img[: height // 6] = (40, 30, 20)
    return Image.fromarray(img.astype(np.uint8))


def test_predict_large_exif_rotated_photo_is_upright(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 3000x2000 JPEG stored sideways with EXIF "rotate 90": predicted as its upright copy."""
    upright = _photo(2000, 3000)  # portrait, as the camera holder saw it
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # sensor pixels: 3000x2000 landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display, which undoes ROTATE_90
    rotated_file = tmp_path / "camera.jpg"
    stored.save(rotated_file, "JPEG", quality=92, exif=exif)
    upright.save(tmp_path / "upright.jpg", "JPEG", quality=92)
    stored.save(tmp_path / "sideways.jpg", "JPEG", quality=92)  # the same pixels, no EXIF
    assert Image.open(rotated_file).size == (3000, 2000)

    results = predict(command_config("predict", [f"ckpt={tiny_run}", f"input={tmp_path}/*.jpg"]))
    capsys.readouterr()
    probs = {
        Path(r["file"]).stem: np.array([r["probabilities"][c] for c in TINY_CLASSES])
        for r in results
    }
    assert set(probs) == {"camera", "upright", "sideways"}
    upright_gap = np.abs(probs["camera"] - probs["upright"]).max()
    sideways_gap = np.abs(probs["camera"] - probs["sideways"]).max()
    assert upright_gap < 2e-3, upright_gap
    assert sideways_gap > 5 * upright_gap, (upright_gap, sideways_gap)


def test_predict_errors_are_one_line(
    tiny_run: Path, tiny_train_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = next(tiny_train_images.rglob("*.jpg"))
    err = run_error(capsys, [f"ckpt={tmp_path / 'nope.ckpt'}", f"input={image}"], main)
    assert err == (
        f"leafnet: error: checkpoint {tmp_path / 'nope.ckpt'} not found; "
        "give a .ckpt file or a run directory"
    )
    err = run_error(capsys, [f"ckpt={tmp_path}", f"input={image}"], main)  # a folder, not a run
    assert "run directory" in err
    text = tmp_path / "notes.ckpt"
    text.write_text("hello, I am not a checkpoint\n")
    err = run_error(capsys, [f"ckpt={text}", f"input={image}"], main)
    assert "not a" in err and "checkpoint" in err
    err = run_error(capsys, [f"ckpt={image}", f"input={image}"], main)  # a JPEG given as checkpoint
    assert "not a checkpoint" in err
    err = run_error(capsys, [f"ckpt={tiny_run}", f"input={tmp_path}/*.png"], main)
    assert "matches no files" in err
    (tmp_path / "empty").mkdir()
    err = run_error(capsys, [f"ckpt={tiny_run}", f"input={tmp_path / 'empty'}"], main)
    assert "no image files" in err
    err = run_error(capsys, [f"ckpt={tiny_run}", f"input={image}", "out=preds.xlsx"], main)
    assert ".csv or .json" in err
    err = run_error(capsys, [f"input={image}"], main)
    assert "ckpt= is required" in err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    err = run_error(capsys, [f"ckpt={tiny_run}", f"input={bad}"], main)
    assert "bad.jpg" in err and "not an image" in err


@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "explain", "app"])
def test_help_lists_each_commands_keys(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    with pytest.raises(SystemExit) as exc:
        importlib.import_module(f"leafnet.{command}").main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    key = "port:" if command == "app" else "overwrite:"  # a key particular to the command
    assert f"python -m leafnet.{command}" in out and "ckpt:" in out and key in out


def test_an_interrupted_predict_finished_by_resume_gives_the_uninterrupted_csv(
    tiny_run: Path, tiny_train_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from leafnet import predict as predict_module

    args = [f"ckpt={tiny_run}", f"input={tiny_train_images}", "batch_size=8"]
    whole = tmp_path / "whole.csv"
    predict_module.main([*args, f"out={whole}"])

    real = predict_module.iter_predictions

    def stopped_after_two_batches(*a, **k):
        for i, batch in enumerate(real(*a, **k)):
            if i == 2:
                raise KeyboardInterrupt
            yield batch

    out = tmp_path / "preds.csv"
    monkeypatch.setattr(predict_module, "iter_predictions", stopped_after_two_batches)
    with pytest.raises(SystemExit):
        predict_module.main([*args, f"out={out}"])
    partial = tmp_path / "preds.csv.partial"
    assert not out.exists() and len(partial.read_text().splitlines()) == 1 + 16  # valid, partial
    monkeypatch.setattr(predict_module, "iter_predictions", real)
    capsys.readouterr()
    err = run_error(capsys, [*args, f"out={out}"], predict_module.main)
    assert "resume=true to finish it" in err
    rows = predict(command_config("predict", [*args, f"out={out}", "resume=true"]))
    assert len(rows) == 36 and not partial.exists()
    assert out.read_bytes() == whole.read_bytes()
