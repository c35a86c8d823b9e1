"""evaluate: metrics on a labelled folder, class folders matched by name, one-line mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures_cli import run_error
from fixtures_runs import TINY_CLASSES

from leafnet.config import command_config
from leafnet.evaluate import compute_metrics, evaluate, main
from leafnet.module import LeafClassifier
from leafnet.runs import load_classifier, save_classifier


def test_evaluate_prints_metrics_and_writes_png(
    tiny_run: Path, tiny_train_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    metrics = evaluate(
        command_config(
            "evaluate", [f"ckpt={tiny_run}", f"data.dir={tiny_train_images}", f"out={out}"]
        )
    )
    printed = capsys.readouterr().out
    for text in ("accuracy", "macro F1", "precision", "recall", "confusion matrix", *TINY_CLASSES):
        assert text in printed
    assert metrics["images"] == 36
    cm = torch.tensor(metrics["confusion_matrix"])
    assert cm.shape == (3, 3) and int(cm.sum()) == 36
    assert metrics["accuracy"] == pytest.approx(float(cm.diag().sum()) / 36)
    assert [metrics["per_class"][c]["support"] for c in TINY_CLASSES] == [12, 12, 12]
    assert len(metrics["misclassified"]) == 36 - int(cm.diag().sum())
    png = out / "confusion_matrix.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert json.loads((out / "metrics.json").read_text())["f1_macro"] == metrics["f1_macro"]


def test_class_folders_are_matched_by_name(
    tiny_run: Path, tiny_train_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same network with its classes stored in reverse order scores exactly the same."""
    original = load_classifier(tiny_run)
    hp = dict(original.hparams)
    hp["class_names"] = list(reversed(hp["class_names"]))
    flipped = LeafClassifier(**hp)
    state = original.state_dict()
    for key in ("net.dense_1.weight", "net.dense_1.bias"):
        state[key] = state[key].flip(0)  # output unit i now belongs to reversed class i
    flipped.load_state_dict(state)
    ckpt = save_classifier(flipped, tmp_path / "flipped.ckpt")

    a = evaluate(
        command_config(
            "evaluate",
            [f"ckpt={tiny_run}", f"data.dir={tiny_train_images}", f"out={tmp_path / 'a'}"],
        )
    )
    b = evaluate(
        command_config(
            "evaluate", [f"ckpt={ckpt}", f"data.dir={tiny_train_images}", f"out={tmp_path / 'b'}"]
        )
    )
    capsys.readouterr()
    assert b["accuracy"] == a["accuracy"] and b["f1_macro"] == pytest.approx(a["f1_macro"])
    assert torch.equal(
        torch.tensor(b["confusion_matrix"]), torch.tensor(a["confusion_matrix"]).flip(0, 1)
    )


def test_class_mismatch_is_one_line_naming_both_sets(
    tiny_run: Path, tiny_image_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = run_error(capsys, [f"ckpt={tiny_run}", f"data.dir={tiny_image_dir}"], main)
    assert "which the checkpoint does not know" in err
    for name in (*TINY_CLASSES, *(p.name for p in tiny_image_dir.iterdir())):
        assert name in err


def test_a_folder_with_some_of_the_classes_is_measured_on_those(
    tiny_run: Path, tiny_train_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    folder = tmp_path / "two"
    kept = sorted(p.name for p in tiny_train_images.iterdir())[:2]
    for name in kept:
        shutil.copytree(tiny_train_images / name, folder / name)
    metrics = evaluate(
        command_config(
            "evaluate", [f"ckpt={tiny_run}", f"data.dir={folder}", f"out={tmp_path / 'out'}"]
        )
    )
    err = capsys.readouterr().err
    absent = sorted(set(TINY_CLASSES) - set(kept))
    assert metrics["classes_absent"] == absent and f"holds no {absent[0]}" in err
    present = [metrics["per_class"][n] for n in kept]
    recalls = [m["recall"] for m in present]
    assert metrics["balanced_accuracy"] == pytest.approx(sum(recalls) / 2)
    f1 = [2 * m["precision"] * m["recall"] / (m["precision"] + m["recall"] or 1) for m in present]
    assert metrics["f1_macro"] == pytest.approx(sum(f1) / 2, abs=1e-6)  # the absent class: no 0


def test_evaluate_errors(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = run_error(capsys, [f"ckpt={tiny_run}"], main)
    assert "data.dir= is required" in err
    err = run_error(capsys, [f"ckpt={tiny_run}", f"data.dir={tmp_path / 'nowhere'}"], main)
    assert "does not exist" in err
    for name in TINY_CLASSES:
        (tmp_path / "empty" / name).mkdir(parents=True)
    err = run_error(capsys, [f"ckpt={tiny_run}", f"data.dir={tmp_path / 'empty'}"], main)
    assert "no image files" in err


def test_compute_metrics_known_values() -> None:
    preds = torch.tensor([0, 0, 1, 1, 2, 0])
    target = torch.tensor([0, 0, 1, 2, 2, 2])
    m = compute_metrics(preds, target, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "support": 2}
    assert m["per_class"]["c"]["recall"] == pytest.approx(1 / 3)
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 1, 0], [1, 1, 1]]


def test_evaluate_reports_the_colour_baseline_of_the_checkpoints_run(
    tiny_run: Path, tiny_train_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    metrics = evaluate(
        command_config(
            "evaluate",
            [f"ckpt={tiny_run}", f"data.dir={tiny_train_images}", f"out={tmp_path / 'a'}"],
        )
    )
    out = capsys.readouterr().out
    colour = metrics["colour_baseline"]
    assert 0 <= colour["accuracy"] <= 1 and colour["C"] in (0.01, 0.1, 1.0, 10.0, 100.0)
    assert f"colour baseline accuracy {colour['accuracy']:.4f}" in out
    # On the run's own test photos it scores what the run's closing block said it scored
    from leafnet.data.splits import read_split

    test_dir = tmp_path / "test-split"
    for rel, (cls, subset) in read_split(tiny_run / "split.csv").items():
        if subset == "test":
            (test_dir / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(tiny_train_images / rel, test_dir / cls / Path(rel).name)
    on_test = evaluate(
        command_config(
            "evaluate", [f"ckpt={tiny_run}", f"data.dir={test_dir}", f"out={tmp_path / 't'}"]
        )
    )
    in_run = json.loads((tiny_run / "summary.json").read_text())["colour_baseline"]
    assert on_test["colour_baseline"]["accuracy"] == pytest.approx(in_run["test_acc"])
    alone = tmp_path / "alone.ckpt"  # a checkpoint without its run: nothing to train colour on
    shutil.copy(tiny_run / "checkpoints" / "best.ckpt", alone)
    bare = evaluate(
        command_config(
            "evaluate", [f"ckpt={alone}", f"data.dir={tiny_train_images}", f"out={tmp_path / 'b'}"]
        )
    )
    assert "not at hand" in bare["colour_baseline"]["skipped"]
