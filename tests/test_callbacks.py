"""Training callbacks that diagnose a run: DeadUnits counts the hidden units still firing,
EpochMetrics measures how long the loop waits for data."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from leafnet.module import LeafClassifier
from leafnet.training.callbacks import DeadUnits, DivergenceStop, EpochMetrics

MODEL = {"image_size": 24, "conv1_filters": 4, "conv2_filters": 4, "dense_units": 8}


def tiny_classifier(optimizer: str) -> LeafClassifier:
    torch.manual_seed(0)
    return LeafClassifier(
        model=MODEL,
        optimizer={"name": optimizer},
        class_names=["a", "b", "c"],
        preprocessing={"image_size": 24},
    )


def validate(kill: bool, caplog: pytest.LogCaptureFixture) -> LeafClassifier:
    module = tiny_classifier("adam")
    if kill:  # what a too-large Adam step does: every pre-activation of `dense` below zero
        with torch.no_grad():
            module.net.dense.weight.fill_(-1.0)
            module.net.dense.bias.fill_(-1.0)
    x = torch.randint(0, 256, (12, 3, 24, 24), dtype=torch.uint8)
    y = torch.arange(12) % 3
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=[DeadUnits()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with caplog.at_level(logging.WARNING, logger="leafnet.training.callbacks"):
        trainer.validate(module, DataLoader(TensorDataset(x, y), batch_size=4), verbose=False)
    return module, int(trainer.callback_metrics["val_alive_units"])


def test_dead_units_counts_units_that_fire(caplog: pytest.LogCaptureFixture) -> None:
    module, alive = validate(kill=False, caplog=caplog)
    assert 0 < alive <= 8
    assert "dying ReLU" not in caplog.text
    # The hook is removed after validation: a plain forward does not touch the callback.
    assert not module.net.dense._forward_hooks


def test_dead_units_warns_when_every_unit_is_dead(caplog: pytest.LogCaptureFixture) -> None:
    _, alive = validate(kill=True, caplog=caplog)
    assert alive == 0
    assert "all 8 units of layer 'dense' output 0" in caplog.text
    assert "dying ReLU" in caplog.text


class SleepyDataset(TensorDataset):
    """A dataset whose every item takes `delay` seconds to load."""

    def __init__(self, *tensors: torch.Tensor, delay: float) -> None:
        super().__init__(*tensors)
        self.delay = delay

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        time.sleep(self.delay)
        return super().__getitem__(index)


def data_wait_share(tmp_path: Path, load_delay: float, step_delay: float) -> tuple[float, float]:
    """Fit 2 epochs of 3 batches; the share EpochMetrics logged and wrote for the last epoch."""
    module = tiny_classifier("sgd")
    step = module.training_step

    def slow_step(batch, batch_idx):
        time.sleep(step_delay)
        return step(batch, batch_idx)

    module.training_step = slow_step
    x = torch.randint(0, 256, (12, 3, 24, 24), dtype=torch.uint8)
    data = SleepyDataset(x, torch.arange(12) % 3, delay=load_delay)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        callbacks=[EpochMetrics()],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    with (tmp_path / "metrics.csv").open() as f:
        written = float(list(csv.DictReader(f))[-1]["data_wait_share"])
    return float(trainer.callback_metrics["data_wait_share"]), written


def test_data_wait_share_is_high_when_loading_is_slow(tmp_path: Path) -> None:
    # 4 items x 200 ms to load each batch, against a step of a few ms (up to ~100 ms measured on
    # a loaded 2-core machine, where OpenMP threads contend).
    logged, written = data_wait_share(tmp_path, load_delay=0.2, step_delay=0.0)
    assert logged > 0.75, f"data wait share {logged}"
    assert written == pytest.approx(logged, abs=1e-4)


def test_data_wait_share_is_low_when_the_step_is_slow(tmp_path: Path) -> None:
    # Batches from memory, a 200 ms step: the loop waits for the step, not the data.
    logged, written = data_wait_share(tmp_path, load_delay=0.0, step_delay=0.2)
    assert logged < 0.2, f"data wait share {logged}"
    assert written == pytest.approx(logged, abs=1e-4)


def fit_with_divergence_stop(lr: float, stop: DivergenceStop, epochs: int = 3) -> DivergenceStop:
    """A few epochs of SGD on random images: lr=1000 makes the loss finite but huge."""
    torch.manual_seed(0)
    module = LeafClassifier(
        model=MODEL,
        optimizer={"name": "sgd"},
        lr=lr,
        class_names=["a", "b", "c"],
        preprocessing={"image_size": 24},
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (24, 3, 24, 24), dtype=torch.uint8, generator=gen)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        callbacks=[stop],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, DataLoader(TensorDataset(x, torch.arange(24) % 3), batch_size=8))
    return stop


def test_an_exploding_finite_loss_is_diverged() -> None:
    d = fit_with_divergence_stop(1000.0, DivergenceStop()).diverged_at
    assert d is not None and d["reason"] == "exploding" and d["epoch"] == 1
    assert 10 * 1.0986 < d["loss"] < float("inf")  # finite, and over the rule's limit


def test_the_exploding_rule_can_be_turned_off_and_spares_a_normal_run() -> None:
    assert fit_with_divergence_stop(1000.0, DivergenceStop(max_loss_ratio=None)).diverged_at is None
    assert fit_with_divergence_stop(1e-3, DivergenceStop()).diverged_at is None


def test_a_bad_max_loss_ratio_is_one_line() -> None:
    from leafnet.errors import LeafnetError
    from leafnet.training.callbacks import DivergenceStop

    with pytest.raises(LeafnetError, match="max_loss_ratio"):
        DivergenceStop(max_loss_ratio=0.5)
