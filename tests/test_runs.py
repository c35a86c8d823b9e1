"""Reading finished runs: checkpoints load with weights_only=True; unsafe pickles are refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from leafnet.errors import LeafnetError
from leafnet.module import LeafClassifier
from leafnet.runs import find_checkpoint, load_classifier, read_metrics, read_run, save_classifier


def test_run_checkpoints_load_weights_only(tiny_run: Path) -> None:
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(tiny_run / "checkpoints" / name, weights_only=True)
        hp = ckpt["hyper_parameters"]
        assert hp["class_names"] == ["Broad_beans", "Ridge_gourd", "Tomato"]
        assert hp["preprocessing"]["image_size"] == 32
        assert {"net.conv2d.weight", "net.dense_1.bias"} <= set(ckpt["state_dict"])
    assert find_checkpoint(tiny_run) == tiny_run / "checkpoints" / "best.ckpt"
    classifier = load_classifier(tiny_run)
    assert not classifier.training
    probs = classifier.predict_proba(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert probs.shape == (2, 3)


def test_save_classifier_round_trip(tmp_path: Path) -> None:
    model = LeafClassifier(
        model={"image_size": 16}, optimizer={"name": "adam"}, class_names=["x", "y"]
    )
    path = save_classifier(model, tmp_path / "sub" / "bare.ckpt")
    assert not list(path.parent.glob("*.tmp"))
    loaded = load_classifier(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    # Lightning's own loader reads it as well.
    again = LeafClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert again.hparams.class_names == ["x", "y"]


class _Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": _Payload(str(marker))}, bad)
    with pytest.raises(LeafnetError, match="refused") as err:
        load_classifier(bad)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_missing_checkpoint_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(LeafnetError, match="not found"):
        find_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(LeafnetError, match="run directory"):
        find_checkpoint(tmp_path)


def test_read_run(tiny_run: Path) -> None:
    run = read_run(tiny_run)
    assert run.config is not None and run.config.epochs == 4
    assert run.summary["status"] == "completed"
    assert [int(r["epoch"]) for r in run.metrics] == [1, 2, 3, 4]


def test_read_metrics_drops_a_partial_line_and_keeps_the_last_row_per_epoch(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(
        "epoch,step,train_loss,train_acc,val_loss,val_acc,lr,epoch_time_s,images_per_s\n"
        "1,1,2.0,0.1,2.0,0.1,0.1,1,1\n1,1,1.5,0.2,1.5,0.2,0.1,1,1\n2,2,nan,0,inf,0,0.1,1,1\n3,3,0.5"
    )
    rows = read_metrics(path)
    assert [r["epoch"] for r in rows] == [1.0, 2.0]
    assert rows[0]["train_loss"] == 1.5  # a resumed run rewrote epoch 1
    assert math.isnan(rows[1]["train_loss"]) and math.isinf(rows[1]["val_loss"])
