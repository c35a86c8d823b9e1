"""leafnet: a PyTorch Lightning reimplementation of a small Keras leaf-disease CNN."""

import os

__version__ = "0.1.0"

# PyTorch's OpenMP threads otherwise spin for milliseconds after each parallel op, on the cores
# leafnet's band workers take next (leafnet.perf). OpenMP reads this once, as torch loads: every
# leafnet command imports leafnet first. A value the user set stays.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
