"""`python -m leafnet.evaluate ckpt=<checkpoint | run dir> data.dir=<labelled folder> [out=DIR]`.

Measures a trained model on a folder in image-folder layout (`<dir>/<class>/<image>`), scanned as
training scans it (`data.folder.scan_folder`) and read through the checkpoint's own
preprocessing (`data.images`). Class folders are matched to the checkpoint's classes by name, so
their order on disk does not matter. A folder may hold some of the model's classes only: the
metrics are then over the classes present (the absent ones named in one line); a class folder the
model does not know is an error.

Prints accuracy, macro F1, per-class precision / recall / support and the confusion matrix, and
writes `confusion_matrix.png` and `metrics.json` (with the misclassified files) into `out`.
"""

from __future__ import annotations

import json
import sys
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from leafnet.baseline import colour_histograms, fit_colour, histograms_of, scores, verdict
from leafnet.config import command_config
from leafnet.data.folder import scan_folder
from leafnet.errors import LeafnetError, cli_errors
from leafnet.files import atomic_path, refuse_existing, write_text
from leafnet.inference import iter_predictions, load_model
from leafnet.runs import run_datamodule


def match_classes(
    folder_classes: Sequence[str], ckpt_classes: Sequence[str], root: Any
) -> list[str]:
    """The checkpoint's classes the folder does not hold; a folder class the model does not know
    is refused in one line."""
    extra = sorted(set(folder_classes) - set(ckpt_classes))
    if extra:
        raise LeafnetError(
            f"class folders of {root} [{', '.join(folder_classes)}] include "
            f"{', '.join(extra)}, which the checkpoint does not know (its classes: "
            f"{', '.join(ckpt_classes)}); name the sub-folders as the classes"
        )
    return [c for c in ckpt_classes if c not in folder_classes]


def compute_metrics(
    preds: torch.Tensor, target: torch.Tensor, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, and over the classes present in `target`: macro F1, balanced accuracy (mean
    recall); per-class precision/recall/support; the confusion matrix (torchmetrics)."""
    n = len(class_names)
    precision = MulticlassPrecision(n, average=None)(preds, target)
    recall = MulticlassRecall(n, average=None)(preds, target)
    f1 = MulticlassF1Score(n, average=None)(preds, target)
    support = torch.bincount(target, minlength=n)
    present = support > 0
    return {
        "accuracy": float(MulticlassAccuracy(n, average="micro")(preds, target)),
        "f1_macro": float(f1[present].mean()),
        "balanced_accuracy": float(recall[present].mean()),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "support": int(s)}
            for name, p, r, s in zip(class_names, precision, recall, support, strict=True)
        },
        "confusion_matrix": MulticlassConfusionMatrix(n)(preds, target).tolist(),
    }


def format_report(metrics: dict[str, Any], class_names: Sequence[str]) -> str:
    """The printed report: headline numbers, per-class table, confusion matrix."""
    w = max(len("class"), *(len(c) for c in class_names))
    lines = [
        f"accuracy   {metrics['accuracy']:.4f}",
        f"balanced   {metrics['balanced_accuracy']:.4f}",
        f"macro F1   {metrics['f1_macro']:.4f}",
        "",
        f"{'class':<{w}}  precision  recall  support",
    ]
    for name in class_names:
        m = metrics["per_class"][name]
        lines.append(f"{name:<{w}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['support']:7d}")
    cm = metrics["confusion_matrix"]
    cell = max(5, *(len(c) for c in class_names), *(len(str(v)) for row in cm for v in row))
    lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
    lines.append(" " * w + "  " + " ".join(f"{c:>{cell}}" for c in class_names))
    for name, row in zip(class_names, cm, strict=True):
        lines.append(f"{name:<{w}}  " + " ".join(f"{v:>{cell}d}" for v in row))
    return "\n".join(lines)


def save_confusion_png(
    confmat: list[list[int]], class_names: Sequence[str], path: Path, replace: bool = True
) -> None:
    """The confusion matrix drawn by torchmetrics (counts in the cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = MulticlassConfusionMatrix(len(class_names))
    fig, ax = metric.plot(torch.tensor(confmat), labels=list(class_names))
    size = 2.5 + 0.8 * len(class_names)
    fig.set_size_inches(size, size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    with atomic_path(path, replace) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the command on a composed `conf/evaluate.yaml`; returns the metrics."""
    root = Path(str(cfg.data.dir)).expanduser()
    classifier, device = load_model(cfg)
    folder_classes, files_per_class = scan_folder(root)
    names = list(classifier.hparams.class_names)
    absent = match_classes(folder_classes, names, root)

    truth = {
        str(f): names.index(cls)
        for cls, files in zip(folder_classes, files_per_class, strict=True)
        for f in files
    }
    files = [Path(f) for f in truth]
    if not files:
        raise LeafnetError(f"data.dir={root}: the class folders hold no image files")
    colour_model, colour = _colour_model(cfg.ckpt, classifier)
    # One pass, a batch at a time: per photo only its classes are kept (memory flat in the
    # folder's size), and the misclassified ones by name.
    preds, target, colour_preds = array("h"), array("h"), array("h")
    skipped: list[dict[str, str]] = []
    misclassified: list[dict[str, str]] = []
    for done, bad in iter_predictions(
        classifier, files, device=device, batch_size=cfg.batch_size, workers=cfg.workers,
        progress=cfg.get("progress"), keep_inputs=colour_model is not None,
    ):  # fmt: skip
        skipped += bad
        for r in done:
            p, t = names.index(r["predicted"]), truth[r["file"]]
            preds.append(p)
            target.append(t)
            if p != t:
                misclassified.append({"file": r["file"], "true": names[t], "predicted": names[p]})
        if colour_model is not None and done:
            colour_preds.extend(
                _colour_classes(colour_model, [r["input"] for r in done], classifier.prep)
            )
    if not preds:
        raise LeafnetError(f"data.dir={root}: none of the {len(files)} images could be read")
    metrics = compute_metrics(torch.tensor(preds), torch.tensor(target), names)
    metrics.update(
        checkpoint=str(cfg.ckpt),
        data_dir=str(root),
        images=len(preds),
        classes_absent=absent,
        skipped=skipped,
        misclassified=misclassified,
    )
    if colour_model is not None:
        got = scores(np.array(colour_preds), np.array(target))
        colour = {"accuracy": got["test_acc"], "balanced_accuracy": got["test_balanced_acc"],
                  "C": colour["C"]}  # fmt: skip
    metrics["colour_baseline"] = colour

    out = Path(str(cfg.out))
    for name in ("confusion_matrix.png", "metrics.json"):
        refuse_existing(out / name, cfg.get("overwrite", False), "out")
    overwrite = cfg.get("overwrite", False)
    save_confusion_png(metrics["confusion_matrix"], names, out / "confusion_matrix.png", overwrite)
    write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n", replace=overwrite)

    print(f"{len(preds)} images in {len(names) - len(absent)} classes from {root}")
    if absent:
        print(
            f"leafnet: {root} holds no {', '.join(absent)}: macro F1 and balanced accuracy are "
            f"over the {len(names) - len(absent)} classes present",
            file=sys.stderr,
        )
    if skipped:
        print(f"leafnet: skipped {len(skipped)} unreadable files (listed in metrics.json)",
              file=sys.stderr)  # fmt: skip
    print(format_report(metrics, names))
    colour = metrics["colour_baseline"]
    if "accuracy" in colour:
        print(
            f"colour baseline accuracy {colour['accuracy']:.4f} (a colour histogram, trained on the run's split)"
        )
        warning = verdict(metrics["balanced_accuracy"], colour["balanced_accuracy"])
        if warning:
            print(f"leafnet: {warning}", file=sys.stderr)
    else:
        print(f"colour baseline: {colour['skipped']}")
    print(f"wrote {out / 'confusion_matrix.png'} and {out / 'metrics.json'}")
    return metrics


def _colour_model(ckpt: Any, classifier: Any) -> tuple[Any, dict[str, Any]]:
    """The colour baseline fitted on the checkpoint's run (its training photos, C chosen on its
    validation photos), with `{"C"}`; `(None, {"skipped": reason})` when the run's photos are not
    at hand (a bare .ckpt, a moved data folder)."""
    run_dir = Path(str(ckpt))
    if run_dir.is_file():
        run_dir = run_dir.parent.parent  # <run>/checkpoints/best.ckpt
    try:
        dm = run_datamodule(run_dir)
    except LeafnetError as err:
        return None, {"skipped": f"the training run's photos are not at hand ({err})"}
    (xt, yt), (xv, yv) = (histograms_of(dm.dataset(s)) for s in ("train", "val"))
    model, fitted = fit_colour({"train": xt, "val": xv}, {"train": yt, "val": yv})
    return model, fitted


def _colour_classes(model: Any, inputs: list[torch.Tensor], prep: Any) -> list[int]:
    """The colour baseline's classes for photos as the network read them (`inputs`)."""
    from leafnet.data.images import to_display

    hists = np.concatenate([colour_histograms(to_display(x, prep)[None]) for x in inputs])
    return [int(c) for c in model.predict(hists)]


@cli_errors
def main(argv: Sequence[str] | None = None) -> None:
    cfg = command_config(
        "evaluate", sys.argv[1:] if argv is None else argv, required=("ckpt", "data.dir")
    )
    evaluate(cfg)


if __name__ == "__main__":
    main()
