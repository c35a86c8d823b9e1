"""lr_find: Lightning's finder on the manually optimized LeafClassifier, and through
`python -m leafnet.train tune.lr_find=true`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from fixtures_runs import tiny_args
from torch.optim import optimizer as torch_optimizer

from leafnet.config import compose
from leafnet.data.datamodule import LeafDataModule
from leafnet.module import LeafClassifier
from leafnet.train import train
from leafnet.training.tune import lr_find


def tiny_fit_setup(
    images: Path, root: Path, **trainer_kwargs: Any
) -> tuple[pl.Trainer, LeafClassifier, LeafDataModule]:
    """A 16 px data module, a micro-batched classifier and a quiet CPU trainer (also explain's)."""
    dm = LeafDataModule(dir=images, image_size=16, min_size=16, cache=False, batch_size=8, seed=0)
    dm.setup()
    classifier = LeafClassifier(
        model={"image_size": 16},
        optimizer={"name": "adam"},
        class_names=dm.class_names,
        preprocessing=dm.preprocessing.to_dict(),
        micro_batch_size=4,  # the manual micro-batching path
    )
    settings = dict(
        max_epochs=2, logger=False, enable_checkpointing=False, accelerator="cpu",
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    trainer = pl.Trainer(**{**settings, **trainer_kwargs})
    return trainer, classifier, dm


def test_lightning_does_not_step_schedules_under_manual_optimization(
    tiny_train_images: Path, tmp_path: Path
) -> None:
    """Why tune.py has its own stepping: with plain Tuner.lr_find on our module the lr does not
    move from step to step (only the module's once-per-epoch step moves it). If this starts
    failing, Lightning steps schedules under manual optimization now: drop the hook in tune.py."""
    from lightning.pytorch.tuner import Tuner

    trainer, classifier, dm = tiny_fit_setup(tiny_train_images, tmp_path)
    finder = Tuner(trainer).lr_find(classifier, datamodule=dm, num_training=6, update_attr=False)
    lrs = finder.results["lr"]
    assert lrs[0] == lrs[1] == lrs[2] == 1e-8, lrs


def test_lr_find_sweeps_saves_and_restores(tiny_train_images: Path, tmp_path: Path) -> None:
    trainer, classifier, dm = tiny_fit_setup(tiny_train_images, tmp_path)
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    hooks = len(torch_optimizer._global_optimizer_post_hooks)
    # 20 steps over 2-epoch limits (4 batches per epoch): the finder must cross epochs.
    lr = lr_find(
        trainer, classifier, dm, tmp_path / "run", min_lr=1e-6, max_lr=1e-2, num_training=20
    )
    assert 1e-6 <= lr <= 1e-2
    doc = json.loads((tmp_path / "run" / "lr_find.json").read_text())
    assert doc["suggested_lr"] == lr and doc["steps_run"] == 20
    lrs = np.array(doc["lr"])
    ratios = lrs[2:] / lrs[1:-1]
    # Exponential and steady: once per optimizer step, never again at epoch ends.
    assert np.allclose(ratios, ratios[0], rtol=1e-6) and ratios[0] > 1
    assert lrs[-1] == pytest.approx(1e-2)
    png = tmp_path / "run" / "lr_find.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for key, value in classifier.state_dict().items():  # the finder restores the model
        assert torch.equal(value, before[key]), key
    assert len(torch_optimizer._global_optimizer_post_hooks) == hooks
    assert trainer.fit_loop.max_epochs == 2


def test_train_with_lr_find_saves_the_suggestion_and_stops(
    tiny_train_images: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    overrides = [
        *tiny_args(tiny_train_images, tmp_path),
        "tune.lr_find=true",
        "tune.num_training=30",
    ]
    assert train(compose("train", overrides), run_dir) is None
    doc = json.loads((run_dir / "lr_find.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "lr_find" and summary["lr_suggestion"] == doc["suggested_lr"]
    assert (run_dir / "lr_find.png").is_file()
    assert len(set(doc["lr"])) == len(doc["lr"]) > 11  # the sweep moved, past 4 epochs
    assert not list(run_dir.glob(".lr_find_*.ckpt"))  # the finder's temporary checkpoint is gone
