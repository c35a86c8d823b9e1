"""The trainer's machinery, used by `leafnet.train` only: Lightning callbacks (checkpoints,
divergence, dead units, metrics.csv, TensorBoard images), what a run ended with, resuming, the
run-directory lock, the learning-rate finder and the multirun callbacks."""
