"""Training callbacks that diagnose a run: DeadUnits counts the hidden units still firing."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from leafnet.callbacks import DeadUnits
from leafnet.module import LeafClassifier

MODEL = {"image_size": 24, "conv1_filters": 4, "conv2_filters": 4, "dense_units": 8}


def validate(kill: bool, caplog: pytest.LogCaptureFixture) -> LeafClassifier:
    torch.manual_seed(0)
    module = LeafClassifier(
        model=MODEL,
        optimizer={"name": "adam"},
        class_names=["a", "b", "c"],
        preprocessing={"image_size": 24},
    )
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
    with caplog.at_level(logging.WARNING, logger="leafnet.callbacks"):
        trainer.validate(module, DataLoader(TensorDataset(x, y), batch_size=4), verbose=False)
    return module


def test_dead_units_counts_units_that_fire(caplog: pytest.LogCaptureFixture) -> None:
    module = validate(kill=False, caplog=caplog)
    assert 0 < module.hidden_units_alive <= 8
    assert "dying ReLU" not in caplog.text
    # The hook is removed after validation: a plain forward does not touch the callback.
    assert not module.net.dense._forward_hooks


def test_dead_units_warns_when_every_unit_is_dead(caplog: pytest.LogCaptureFixture) -> None:
    module = validate(kill=True, caplog=caplog)
    assert module.hidden_units_alive == 0
    assert "all 8 units of layer 'dense' output 0" in caplog.text
    assert "dying ReLU" in caplog.text
