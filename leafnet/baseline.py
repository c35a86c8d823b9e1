"""The colour baseline: what a model must beat before its accuracy means anything.

A logistic regression on each photo's colour histogram (8 x 8 x 8 RGB bins), trained on the
run's own training images, its regularisation chosen on the validation images and scored on the
test images: the same split as the model. On real leaf sets each class is often photographed
differently (light, background, camera), and colour alone then scores high; a model that does
not beat it clearly (`needed_gain`: 0.05 in balanced accuracy, or half of colour's remaining
errors when colour is near perfect) has probably learnt the photography, not the disease. Every
training run reports it beside the model's test accuracy (summary.json, the closing block) and
warns in one line when the model is not clearly better.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

BINS = 8  # per channel: 512 colour bins
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)  # inverse regularisation, chosen on the validation images
MARGIN = 0.05  # the balanced accuracy a model must gain over colour alone to count as better
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
    n = len(dataset)
    # One array for all rows, allocated before the first batch: rows kept batch by batch land
    # between the batches' freed buffers and, under the training process's allocator settings,
    # pinned the heap (2.3 GB at 21,000 images).
    features, labels = np.empty((n, BINS**3)), np.empty(n, np.int64)
    for start in range(0, n, _BATCH):
        stop = min(start + _BATCH, n)
        x, y = dataset.batch(range(start, stop))
        features[start:stop] = colour_histograms(x)
        labels[start:stop] = y.numpy()
    return features, labels


def fit_colour(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> tuple[Any, dict[str, Any]]:
    """Logistic regression on `x["train"]`, C chosen on `x["val"]`: the fitted model and
    `{"val_acc", "C"}`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(c: float) -> Any:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        return model.fit(x["train"], y["train"])

    scores = {c: fit(c).score(x["val"], y["val"]) for c in C_GRID}
    best_c = max(C_GRID, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    return fit(best_c), {"val_acc": round(float(scores[best_c]), 4), "C": best_c}


def scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Accuracy and balanced accuracy of class predictions."""
    from sklearn.metrics import balanced_accuracy_score

    return {
        "test_acc": round(float((predicted == truth).mean()), 4),
        "test_balanced_acc": round(float(balanced_accuracy_score(truth, predicted)), 4),
    }


def fit_baseline(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> dict[str, Any]:
    """Logistic regression on `x["train"]`, C chosen on `x["val"]`, scored on `x["test"]`."""
    model, fitted = fit_colour(x, y)
    return {**fitted, **scores(model.predict(x["test"]), y["test"])}


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


def needed_gain(baseline_acc: float) -> float:
    """How far above colour a model must score to count as clearly better: `MARGIN`, or half of
    colour's remaining errors when colour is already near perfect (a 0.97 baseline leaves 0.03)."""
    return min(MARGIN, (1.0 - baseline_acc) / 2)


def verdict(model_acc: float | None, baseline_acc: float | None) -> str | None:
    """One warning line when the model's balanced accuracy is not clearly above the colour
    baseline's (`needed_gain`)."""
    if model_acc is None or baseline_acc is None:
        return None
    gain, needed = model_acc - baseline_acc, needed_gain(baseline_acc)
    if gain >= needed:
        return None
    return (
        f"balanced accuracy {model_acc:.3f} is not clearly above the colour baseline's "
        f"{baseline_acc:.3f} ({gain:+.3f}, {needed:.3f} needed): the model may have learnt how "
        "each class was photographed, not the disease; try experiment=finetune, more varied "
        "photos, or see docs/real_data.md"
    )
