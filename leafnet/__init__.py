"""leafnet: a PyTorch Lightning reimplementation of a small Keras leaf-disease CNN."""

__version__ = "0.1.0"
