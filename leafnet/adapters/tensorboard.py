"""TensorBoard's switch to its TensorFlow stub."""

from __future__ import annotations

import sys
import types


def without_tensorflow() -> None:
    """Make TensorBoard's event writer use its own stub, not TensorFlow: with TensorFlow installed
    (the `bench` extra) it would import it, 10 s and 0.5 GB per run for nothing. An importable
    `tensorboard.compat.notf` is TensorBoard's switch, which it offers no public way to set."""
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
