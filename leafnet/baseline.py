"""The colour baseline: what a model must beat before its accuracy means anything.

A logistic regression on each photo's colour histogram (8 x 8 x 8 RGB bins), trained on the
run's own training images, its regularisation chosen on the validation images and scored on the
test images: the same split as the model. On real leaf sets each class is often photographed
differently (light, background, camera), and colour alone then scores high; a model that does
not beat it by `MARGIN` has probably learnt the photography, not the disease. Every training run
reports it beside the model's test accuracy (summary.json, the closing block) and warns in one
line when the model is not clearly better.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

BINS = 8  # per channel: 512 colour bins
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)  # inverse regularisation, chosen on the validation images
MARGIN = 0.05  # the test accuracy a model must gain over colour alone to count as better
_BATCH = 64  # images read (and histogrammed) at a time


def colour_histograms(images: Tensor, bins: int = BINS) -> np.ndarray:
    """Normalised joint RGB histograms [N, bins**3] of a uint8 batch [N, 3, H, W]; `bins` a power
    of two. One image at a time, in small integers: whole-batch int64 temporaries took 10 MB per
    640 px image and, under the training process's allocator settings, gigabytes of heap."""
    shift = 8 - (bins.bit_length() - 1)  # x * bins // 256 == x >> shift
    rows = np.empty((len(images), bins**3))
    for i, image in enumerate(images):
        q = (image >> shift).to(torch.int32).flatten(1)  # [3, H*W], each in [0, bins)
        index = (q[0] * bins + q[1]) * bins + q[2]
        counts = torch.bincount(index, minlength=bins**3)
        rows[i] = (counts.double() / index.numel()).numpy()
    return rows


def histograms_of(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """Histograms and labels of every image of a dataset with `batch(positions)` (read in
    batches, so memory stays flat)."""
    features, labels = [], []
    for start in range(0, len(dataset), _BATCH):
        x, y = dataset.batch(range(start, min(start + _BATCH, len(dataset))))
        features.append(colour_histograms(x))
        labels.append(y.numpy())
    return np.concatenate(features), np.concatenate(labels)


def fit_baseline(
    x: dict[str, np.ndarray], y: dict[str, np.ndarray], classes: Sequence[int] | None = None
) -> dict[str, Any]:
    """Logistic regression on `x["train"]`, C chosen on `x["val"]`, scored on `x["test"]`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(c: float) -> Any:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        return model.fit(x["train"], y["train"])

    scores = {c: fit(c).score(x["val"], y["val"]) for c in C_GRID}
    best_c = max(C_GRID, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    model = fit(best_c)
    predicted = model.predict(x["test"])
    return {
        "val_acc": round(float(scores[best_c]), 4),
        "test_acc": round(float((predicted == y["test"]).mean()), 4),
        "test_balanced_acc": round(float(balanced_accuracy_score(y["test"], predicted)), 4),
        "C": best_c,
    }


def colour_baseline(datasets: dict[str, Any]) -> dict[str, Any]:
    """The baseline on a run's train / val / test datasets; `{"skipped": reason}` where the split
    cannot support it (an empty subset, one class only in training)."""
    x, y = {}, {}
    for subset in ("train", "val", "test"):
        if len(datasets[subset]) == 0:
            return {"skipped": f"no {subset} images"}
        x[subset], y[subset] = histograms_of(datasets[subset])
    if len(set(y["train"].tolist())) < 2:
        return {"skipped": "one class only among the training images"}
    return fit_baseline(x, y)


def verdict(test_acc: float | None, baseline: dict[str, Any]) -> str | None:
    """One warning line when the model does not beat the colour baseline by `MARGIN`."""
    if test_acc is None or "test_acc" not in baseline:
        return None
    gain = test_acc - baseline["test_acc"]
    if gain >= MARGIN:
        return None
    return (
        f"test accuracy {test_acc:.3f} is not clearly above the colour baseline's "
        f"{baseline['test_acc']:.3f} ({gain:+.3f}, {MARGIN:.2f} needed): the model may have "
        "learnt how each class was photographed, not the disease; try experiment=finetune, more "
        "varied photos, or see docs/real_data.md"
    )
