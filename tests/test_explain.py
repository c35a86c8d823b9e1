"""explain: filters, feature maps and Grad-CAM PNGs for one image; the TensorBoard callback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_cli import run_error
from fixtures_runs import TINY_CLASSES
from test_tune import tiny_fit_setup

from leafnet.config import command_config
from leafnet.data.images import load_for_model, to_float
from leafnet.explain import explain, main
from leafnet.figures import feature_maps, gradcam
from leafnet.runs import load_classifier
from leafnet.training.board import ExplainImages

PNGS = ("filters", "feature_maps_conv2d", "feature_maps_conv2d_1", "gradcam")


def test_explain_writes_the_four_pngs(
    tiny_run: Path, tiny_train_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = sorted((tiny_train_images / TINY_CLASSES[1]).glob("*.jpg"))[0]
    written = explain(
        command_config("explain", [f"ckpt={tiny_run}", f"input={image}", f"out={tmp_path / 'x'}"])
    )
    printed = capsys.readouterr().out
    assert set(written) == set(PNGS)
    for name in PNGS:
        png = tmp_path / "x" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 3000, name
    assert image.name in printed and any(c in printed for c in TINY_CLASSES)


def test_feature_maps_and_gradcam_shapes(tiny_run: Path, tiny_train_images: Path) -> None:
    classifier = load_classifier(tiny_run)
    image = load_for_model(next(tiny_train_images.rglob("*.jpg")), classifier.prep)
    x = to_float(image, classifier.prep)
    maps = feature_maps(classifier.net, x)
    assert maps["conv2d"].shape == (32, 32, 32) and maps["conv2d_1"].shape == (16, 10, 10)
    assert (maps["conv2d"] >= 0).all()  # after ReLU, as Keras' activation gives them
    cam, target, probs = gradcam(classifier.net, x)
    assert cam.shape == (32, 32) and float(cam.min()) >= 0 and float(cam.max()) <= 1
    with torch.no_grad():
        assert target == int(classifier(image.unsqueeze(0)).argmax())
    assert probs.sum() == pytest.approx(1, abs=1e-5)


def test_explain_input_errors(
    tiny_run: Path, tiny_train_images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = run_error(capsys, [f"ckpt={tiny_run}", f"input={tiny_train_images}"], main)
    assert "explain takes one image" in err
    err = run_error(capsys, [f"ckpt={tiny_run}", f"input={tiny_train_images}/*.gif"], main)
    assert "matches no files" in err


def test_callback_logs_figures_to_tensorboard(tiny_train_images: Path, tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer, classifier, dm = tiny_fit_setup(
        tiny_train_images, tmp_path, max_epochs=1, logger=logger, callbacks=[ExplainImages()]
    )
    trainer.fit(classifier, datamodule=dm)
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    assert {f"explain/{n}" for n in PNGS} <= set(events.Tags()["images"])


def test_a_wide_layer_shows_its_most_active_channels() -> None:
    from leafnet.figures import MAX_PANELS, feature_maps_figure

    maps = torch.zeros(100, 4, 4)
    maps[7] = 5.0  # the most active channel must be among the panels
    maps[60:100] = 1.0
    fig = feature_maps_figure("stage", maps)
    labels = [text.get_text() for text in fig.axes[0].texts]
    assert len(labels) == MAX_PANELS and "7" in labels
    assert "the 32 most active of 100" in fig._suptitle.get_text()


def test_large_maps_are_averaged_down_into_one_labelled_image() -> None:
    from leafnet.figures import MAP_PX, feature_maps_figure

    maps = torch.rand(4, 640, 640)
    fig = feature_maps_figure("conv", maps)
    (image,) = fig.axes[0].get_images()  # one image for every panel, not one axes each
    pixels = image.get_array()
    assert pixels.dtype == np.uint8 and max(pixels.shape[:2]) < 3 * MAP_PX  # 2x2 panels of 160
    assert [t.get_text() for t in fig.axes[0].texts] == ["0", "1", "2", "3"]
    assert "4 feature maps of 640x640" in fig._suptitle.get_text()
