"""Shared fixtures: tiny image folders (fixtures_data.py) and a tiny trained run (fixtures_runs.py)."""

import os

# Keras parity tests run Keras 3 on the torch backend; set before any test imports keras.
os.environ.setdefault("KERAS_BACKEND", "torch")

from fixtures_data import *  # noqa: F403
from fixtures_runs import *  # noqa: F403
