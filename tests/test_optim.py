"""The four optimizers against the same Keras 3 optimizers (torch backend) on identical tensors.

Gradients are fed directly (no model), so optimizer state depends only on the gradients and the
difference in the weights is the sum of the per-step differences. Where the formulas agree the
weights agree to 1e-6. Where they cannot (epsilon placement) the difference is bounded by the
closed forms below, derived in conf/optimizer/*.yaml and leafnet/optim.py:

- Adam: Keras' step uses eps_k = eps / sqrt(1 - beta_2^t) where torch uses eps, so
  |step_k - step_t| = lr |m_hat| (eps_k - eps) / ((s + eps)(s + eps_k)) <= lr |m_hat| (eps_k - eps) / s^2
  with s = sqrt(v_hat).
- RMSprop, Adagrad: Keras divides by d_k = sqrt(v + eps), torch by d_t = sqrt(v) + eps; with
  s = sqrt(v), |d_t - d_k| = |2 s eps + eps^2 - eps| / (d_t + d_k) <= eps (1 + 2 s + eps) / (2 s),
  so |step_k - step_t| = lr |g| |d_t - d_k| / (d_t d_k) <= lr |g| eps (1 + 2 s + eps) / (2 s^3).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from leafnet.errors import LeafnetError
from leafnet.optim import OPTIMIZERS, build_optimizer

CONF = Path(__file__).resolve().parent.parent / "conf" / "optimizer"
EPS = 1e-7
STEPS = 3
FLOAT32_SLACK = 1e-6  # float32 rounding of three updates to weights of size ~1
# Keras computes 1 - beta_2^t in float32, where 0.999 is 0.99900001: a relative 6.4e-6 error in
# its Adam step at t = 1 (torch uses float64 there). Allowed as a relative 1e-5 of the steps.
STEP_SLACK = 1e-5
LRS = (0.1, 0.01, 0.001)  # seed 001's grid


def config(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))  # type: ignore[return-value]


def keras_optimizer(name: str, lr: float) -> keras.optimizers.Optimizer:
    """The Keras 3 optimizer with Keras' own defaults: what the yaml files claim to reproduce."""
    cls = {
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
        "adagrad": keras.optimizers.Adagrad,
        "adam": keras.optimizers.Adam,
    }[name]
    return cls(learning_rate=lr)


def make_case(scale: float, n: int = 64, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Start weights in [-1, 1] and STEPS gradients of magnitude in [scale/20, scale]."""
    rng = np.random.default_rng(seed)
    w0 = rng.uniform(-1, 1, n).astype(np.float32)
    grads = [
        (rng.choice([-1, 1], n) * rng.uniform(scale / 20, scale, n)).astype(np.float32)
        for _ in range(STEPS)
    ]
    return w0, grads


def run_keras(name: str, lr: float, w0: np.ndarray, grads: list[np.ndarray]) -> np.ndarray:
    var = keras.Variable(w0.copy())
    opt = keras_optimizer(name, lr)
    for g in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
    return keras.ops.convert_to_numpy(var.value)


def run_torch(cfg: dict, lr: float, w0: np.ndarray, grads: list[np.ndarray]) -> np.ndarray:
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = build_optimizer([p], cfg, lr)
    for g in grads:
        p.grad = torch.from_numpy(g.copy())
        opt.step()
    return p.detach().numpy()


def epsilon_bound(name: str, lr: float, grads: list[np.ndarray]) -> np.ndarray:
    """Per-weight upper bound of |Keras - torch| after the steps (see the module docstring)."""
    g64 = [g.astype(np.float64) for g in grads]
    total = np.zeros_like(g64[0])
    m = np.zeros_like(total)
    v = np.full_like(total, 0.1 if name == "adagrad" else 0.0)
    for t, g in enumerate(g64, start=1):
        if name == "adam":
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            m_hat, v_hat = m / (1 - 0.9**t), v / (1 - 0.999**t)
            eps_k = EPS / np.sqrt(1 - 0.999**t)
            total += lr * np.abs(m_hat) * (eps_k - EPS) / v_hat
        else:
            v = 0.9 * v + 0.1 * g * g if name == "rmsprop" else v + g * g
            s = np.sqrt(v)
            total += lr * np.abs(g) * EPS * (1 + 2 * s + EPS) / (2 * s**3)
    return total


@pytest.mark.parametrize("lr", LRS)
@pytest.mark.parametrize("steps", [1, STEPS])
def test_sgd_equals_keras(lr: float, steps: int) -> None:
    w0, grads = make_case(1.0)
    diff = np.abs(
        run_torch(config("sgd"), lr, w0, grads[:steps]) - run_keras("sgd", lr, w0, grads[:steps])
    )
    assert diff.max() <= 1e-6


@pytest.mark.parametrize("name", ["adam", "rmsprop", "adagrad"])
@pytest.mark.parametrize("lr", LRS)
@pytest.mark.parametrize("scale", [1.0, 1e-3], ids=["grad~1", "grad~1e-3"])
def test_epsilon_placement_difference_is_bounded(name: str, lr: float, scale: float) -> None:
    w0, grads = make_case(scale)
    for steps in (1, STEPS):
        ours = run_torch(config(name), lr, w0, grads[:steps])
        theirs = run_keras(name, lr, w0, grads[:steps])
        bound = epsilon_bound(name, lr, grads[:steps])
        slack = FLOAT32_SLACK + STEP_SLACK * np.abs(theirs - w0)
        assert np.all(np.abs(ours - theirs) <= bound + slack), (name, lr, steps)


@pytest.mark.parametrize("name", ["adam", "rmsprop", "adagrad"])
def test_keras_defaults_agree_to_1e6_for_ordinary_gradients(name: str) -> None:
    """At the seed's lr (1e-4) and the study's 1e-3, with gradients of 0.05 to 1, the difference
    is far below 1e-6: the bound says so, and the measurement agrees."""
    w0, grads = make_case(1.0)
    for lr in (1e-3, 1e-4):
        assert epsilon_bound(name, lr, grads).max() < 1e-6
        diff = np.abs(run_torch(config(name), lr, w0, grads) - run_keras(name, lr, w0, grads))
        assert diff.max() <= 1e-6, (name, lr)


def test_rmsprop_difference_is_real_for_tiny_gradients() -> None:
    """The bound is not vacuous: for gradients near 1e-4, Keras' sqrt(v + eps) makes a visibly
    smaller step than torch's sqrt(v) + eps, and the measured difference stays within it."""
    w0, grads = make_case(1e-4)
    lr = 0.01
    diff = np.abs(run_torch(config("rmsprop"), lr, w0, grads) - run_keras("rmsprop", lr, w0, grads))
    assert diff.max() > 1e-3
    assert np.all(diff <= epsilon_bound("rmsprop", lr, grads) + FLOAT32_SLACK)


@pytest.mark.parametrize("lr", LRS)
def test_adagrad_with_epsilon_folded_into_start_equals_keras(lr: float) -> None:
    """Keras' sqrt(acc + eps) with acc starting at 0.1 is torch's sqrt(acc') with acc' starting
    at 0.1 + eps: the exact form the adagrad yaml comment offers."""
    w0, grads = make_case(1e-3)
    cfg = {**config("adagrad"), "initial_accumulator_value": 0.1 + EPS, "eps": 0.0}
    diff = np.abs(run_torch(cfg, lr, w0, grads) - run_keras("adagrad", lr, w0, grads))
    assert diff.max() <= 1e-6


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("adam", "epsilon", 1e-7),
        ("adam", "beta_1", 0.9),
        ("adam", "beta_2", 0.999),
        ("rmsprop", "rho", 0.9),
        ("rmsprop", "epsilon", 1e-7),
        ("rmsprop", "momentum", 0.0),
        ("adagrad", "initial_accumulator_value", 0.1),
        ("adagrad", "epsilon", 1e-7),
        ("sgd", "momentum", 0.0),
    ],
)
def test_yaml_values_are_keras_defaults(name: str, field: str, value: float) -> None:
    keras_value = getattr(keras_optimizer(name, 1e-3), field)
    ours = {
        ("adam", "epsilon"): config("adam")["eps"],
        ("adam", "beta_1"): config("adam")["betas"][0],
        ("adam", "beta_2"): config("adam")["betas"][1],
        ("rmsprop", "rho"): config("rmsprop")["alpha"],
        ("rmsprop", "epsilon"): config("rmsprop")["eps"],
        ("adagrad", "epsilon"): config("adagrad")["eps"],
    }.get((name, field), config(name).get(field))
    assert ours == pytest.approx(value) and keras_value == pytest.approx(value)


def test_every_optimizer_has_a_config_and_builds() -> None:
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(OPTIMIZERS)
    for name in OPTIMIZERS:
        opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], config(name), 1e-4, 0.01)
        assert opt.defaults["lr"] == 1e-4 and opt.defaults["weight_decay"] == 0.01


def test_unknown_optimizer_lists_the_valid_ones() -> None:
    with pytest.raises(LeafnetError, match="sgd, rmsprop, adagrad, adam"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], {"name": "adamw"}, 1e-3)


@pytest.mark.parametrize(
    ("cfg", "lr", "needle"),
    [
        ({"name": "adam", "rho": 0.9}, 1e-3, "rho"),
        ({"name": "sgd"}, -1.0, "optimizer sgd: Invalid learning rate"),  # torch's own check
        ({"name": "adam", "eps": -1.0}, 1e-3, "epsilon"),
    ],
)
def test_bad_optimizer_settings_are_user_errors(cfg: dict, lr: float, needle: str) -> None:
    with pytest.raises(LeafnetError, match=needle):
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg, lr)


def test_config_from_hydra_compose_builds() -> None:
    """What LeafClassifier.configure_optimizers receives: the composed `optimizer` group."""
    from leafnet.config import compose, to_primitive

    cfg = compose("train", ["optimizer=rmsprop", "lr=0.01"])
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], to_primitive(cfg.optimizer), cfg.lr)
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["alpha"] == 0.9
