"""Training parity: the seed's Keras model and LeafNet, started from the same weights and fed the
same batches, follow the same loss for 10 Adam steps (Keras 3, torch backend).

What may differ is only the optimizer's epsilon placement (see tests/test_optim.py) and float
summation order; a wrong layer order, flatten order, loss or optimizer default would show here.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_keras_io import seed_model

from leafnet.config import compose, to_primitive
from leafnet.keras_io import load_keras_weights
from leafnet.model import LeafNet
from leafnet.optim import build_optimizer

pytestmark = [
    pytest.mark.keras,
    pytest.mark.filterwarnings("ignore:Do not pass an `input_shape`:UserWarning"),
]

SIZE, STEPS, BATCH = 96, 10, 8


def test_ten_adam_steps_follow_the_same_losses(tmp_path) -> None:
    keras.utils.set_random_seed(5)
    model = seed_model(SIZE)
    model.compile(
        loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(1e-3), metrics=[]
    )
    weights = tmp_path / "start.weights.h5"
    model.save_weights(weights)
    net = load_keras_weights(LeafNet(SIZE), weights)
    cfg = to_primitive(compose("train", ["optimizer=adam"]))
    optimizer = build_optimizer(net.parameters(), cfg["optimizer"], 1e-3, 0.0)

    rng = np.random.default_rng(0)
    keras_losses, torch_losses = [], []
    for _ in range(STEPS):
        x = rng.integers(0, 256, (BATCH, SIZE, SIZE, 3)).astype(np.float32) / 255.0
        y = rng.integers(0, 3, BATCH)
        keras_losses.append(float(model.train_on_batch(x, np.eye(3, dtype=np.float32)[y])))
        optimizer.zero_grad()
        logits = net(torch.from_numpy(x).permute(0, 3, 1, 2))
        loss = F.cross_entropy(logits, torch.from_numpy(y))
        loss.backward()
        optimizer.step()
        torch_losses.append(float(loss.detach()))

    keras_losses, torch_losses = np.array(keras_losses), np.array(torch_losses)
    assert np.ptp(torch_losses) > 1e-3  # the losses moved: the steps did something
    np.testing.assert_allclose(torch_losses, keras_losses, rtol=0.01)
