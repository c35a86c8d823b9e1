"""The colour baseline every run reports: in summary.json and the closing block, and a warning
when the model is no better than colour alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from fixtures_runs import tiny_args, train_main
from PIL import Image

from leafnet.baseline import MARGIN, colour_histograms, verdict


def colour_coded_set(root: Path) -> Path:
    """Three classes that differ only in colour (red, green, blue leaves on grey, with noise)."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = rng.normal(120, 20, (40, 48, 3))
            pixels[8:32, 10:38, label] += 100
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def test_a_model_no_better_than_colour_is_called_out(tmp_path: Path) -> None:
    images = colour_coded_set(tmp_path / "leaves")
    run_dir = tmp_path / "run"
    result = train_main(
        *tiny_args(images, tmp_path, "epochs=1", "lr=1e-9", "logger=none"),
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    colour = summary["colour_baseline"]
    assert colour["test_acc"] == 1.0 and colour["test_balanced_acc"] == 1.0
    assert summary["test_balanced_acc"] < colour["test_balanced_acc"] - MARGIN  # learnt nothing
    out = result.stdout
    assert "colour baseline  1.0000   balanced 1.0000" in out
    warnings = [
        line for line in out.splitlines() if "not clearly above the colour baseline" in line
    ]
    assert len(warnings) == 1 and "experiment=finetune" in warnings[0]


def test_the_verdict_is_silent_for_a_model_clearly_better() -> None:
    assert verdict(0.80 + MARGIN + 0.01, 0.80) is None
    assert "(+0.030, 0.050 needed)" in verdict(0.83, 0.80)
    # Colour near perfect: removing half of its errors is clearly better (PlantVillage potato).
    assert verdict(0.998, 0.929) is None and verdict(0.99, 0.97) is None
    assert "0.015 needed" in verdict(0.975, 0.97)
    assert verdict(None, 0.8) is None and verdict(0.5, None) is None


def test_histograms_count_each_pixel_once_in_its_colour_bin() -> None:
    import torch

    image = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    image[0, :, 0, 0] = torch.tensor([255, 0, 0])  # one red pixel, three black ones
    hist = colour_histograms(image)
    assert hist.shape == (1, 512) and hist.sum() == 1.0
    assert hist[0, 0] == 0.75 and hist[0, 7 * 64] == 0.25  # bins (0,0,0) and (7,0,0)
