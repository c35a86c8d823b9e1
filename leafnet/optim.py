"""The four optimizers of seed 001's study, with Keras 3's default hyper-parameters.

`conf/optimizer/<name>.yaml` holds `name:` and the torch keyword arguments that reproduce the
Keras optimizer (each value commented with the Keras default it stands for). The learning rate is
the top-level `lr` and the weight decay the top-level `weight_decay`, so one yaml serves a sweep.

Where torch and Keras differ in formula, not in value (documented in each yaml and measured in
tests/test_optim.py):

- SGD (momentum 0): identical.
- Adam: Keras adds epsilon to sqrt(v) *before* the bias correction ("epsilon hat"), so its
  effective epsilon is torch's divided by sqrt(1 - beta_2^t); steps differ by a relative
  1e-7 * (1/sqrt(1 - beta_2^t) - 1) / sqrt(v_hat).
- RMSprop and Adagrad: Keras divides by sqrt(v + epsilon), torch by sqrt(v) + eps.

`weight_decay` is torch's (an L2 term added to the gradient), not Keras' decoupled decay; the
seed trains without either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from leafnet.errors import LeafnetError

OPTIMIZERS = ("sgd", "rmsprop", "adagrad", "adam")
_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adam": torch.optim.Adam,
}


def build_optimizer(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    cfg: Mapping[str, Any],
    lr: float,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """A torch optimizer from an optimizer config (`name` plus torch keyword arguments)."""
    kwargs = dict(cfg)
    name = str(kwargs.pop("name", "")).lower()
    if name not in _CLASSES:
        raise LeafnetError(
            f"optimizer {name!r} is unknown; choose one of {', '.join(OPTIMIZERS)} "
            "(e.g. optimizer=adam)"
        )
    if "betas" in kwargs:  # yaml gives a list (or an OmegaConf ListConfig); torch wants a tuple
        kwargs["betas"] = tuple(float(b) for b in kwargs["betas"])
    try:
        return _CLASSES[name](params, lr=float(lr), weight_decay=float(weight_decay), **kwargs)
    except TypeError as err:  # an argument the torch class does not take
        raise LeafnetError(
            f"optimizer {name}: {err}; it takes torch.optim.{_CLASSES[name].__name__}'s keyword "
            "arguments"
        ) from None
    except ValueError as err:  # torch's own range checks (negative eps, momentum, ...)
        raise LeafnetError(f"optimizer {name}: {err}") from None
