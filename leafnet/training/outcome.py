"""What a run ended with: the fields of `summary.json`, from the facts the run logged and wrote,
and the closing lines `train` prints.

`fit_outcome` reads the per-epoch rows of metrics.csv, the divergence record and the last count
of live hidden units; `test_outcome` the final test's logged metrics and confusion matrix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch import Tensor

from leafnet import files


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def blank_summary(cfg: Any, overrides: list[str]) -> dict[str, Any]:
    """A run's summary before it has any outcome: every field readers expect, status `failed`
    until the run says otherwise."""
    optimizer = cfg.get("optimizer")
    return {
        "status": "failed",
        "optimizer": optimizer.get("name") if optimizer else None,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "image_size": cfg.data.image_size,
        "epochs_completed": 0,
        **dict.fromkeys(("best_val_acc", "best_epoch", "final_val_loss", "final_train_loss")),
        **dict.fromkeys(("test_acc", "test_f1_macro", "test_balanced_acc", "images_per_s")),
        "wall_time_s": 0.0,
        "peak_rss_gb": 0.0,
        "diverged_at": None,
        "overrides": overrides,
    }


def fit_outcome(
    rows: list[dict[str, float]], diverged_at: dict[str, Any] | None, alive: Any
) -> dict[str, Any]:
    """Status, epochs, best and final metrics and speed, from metrics.csv's rows."""
    out: dict[str, Any] = {
        "status": "diverged" if diverged_at else "completed",
        "diverged_at": diverged_at,
        "epochs_completed": len(rows),
        "hidden_units_alive": None if alive is None else int(alive),
    }
    if rows:
        best = max(rows, key=lambda r: -1.0 if math.isnan(r["val_acc"]) else r["val_acc"])
        out["best_val_acc"] = _finite(best["val_acc"])
        out["best_epoch"] = int(best["epoch"]) if _finite(best["val_acc"]) is not None else None
        out["final_val_loss"] = _finite(rows[-1]["val_loss"])
        out["final_train_loss"] = _finite(rows[-1]["train_loss"])
        speeds = [r["images_per_s"] for r in rows if _finite(r["images_per_s"])]
        out["images_per_s"] = round(sum(speeds) / len(speeds), 2) if speeds else None
    return out


def test_outcome(
    metrics: dict[str, Any], class_names: list[str], confusion: Tensor
) -> dict[str, Any]:
    """Test accuracy, macro F1, per-class precision / recall and the confusion matrix."""
    return {
        "test_acc": _finite(metrics.get("test_acc")),
        "test_f1_macro": _finite(metrics.get("test_f1_macro")),
        "test_balanced_acc": _finite(metrics.get("test_balanced_acc")),
        "test_per_class": {
            name: {
                "precision": _finite(metrics.get(f"test_precision/{name}")),
                "recall": _finite(metrics.get(f"test_recall/{name}")),
            }
            for name in class_names
        },
        "confusion_matrix": confusion.tolist(),
    }


def final_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The `final/*` metrics loggers get (TensorBoard's HParams tab pairs them with the knobs)."""
    final = {
        "final/best_val_acc": summary["best_val_acc"],
        "final/val_loss": summary["final_val_loss"],
        "final/train_loss": summary["final_train_loss"],
        "final/test_acc": summary["test_acc"],
        "final/test_f1_macro": summary["test_f1_macro"],
        "final/test_balanced_acc": summary.get("test_balanced_acc"),
    }
    return {k: v for k, v in final.items() if v is not None}


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    files.write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")


def format_result(summary: dict[str, Any], run_dir: Path) -> str:
    """The short table printed at the end of a run."""

    def num(value: Any, fmt: str = ".4f") -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        f"leafnet: {summary['status']}  {run_dir}",
        f"  optimizer        {summary['optimizer']}  lr={summary['lr']:g}  batch={summary['batch_size']}"
        f"  image={summary['image_size']}",
        f"  epochs           {summary['epochs_completed']}  (best {summary['best_epoch'] or '-'})",
        f"  best val acc     {num(summary['best_val_acc'])}",
        f"  final val loss   {num(summary['final_val_loss'])}   train loss {num(summary['final_train_loss'])}",
        f"  test acc         {num(summary['test_acc'])}   balanced {num(summary.get('test_balanced_acc'))}"
        f"   macro F1 {num(summary['test_f1_macro'])}",
    ]
    colour = summary.get("colour_baseline") or {}
    if "test_acc" in colour and summary["test_acc"] is not None:
        lines.append(
            f"  colour baseline  {num(colour['test_acc'])}   balanced {num(colour['test_balanced_acc'])}"
            f"   (model {summary['test_acc'] - colour['test_acc']:+.4f}; docs/real_data.md)"
        )
    per_class = summary.get("test_per_class") or {}
    counts = summary.get("class_counts") or {}
    if per_class:
        width = max(len(name) for name in per_class)
        lines.append(f"    {'class':<{width}}  precision  recall  images train/val/test")
        for name, pr in per_class.items():
            n = counts.get(name, {})
            split = "/".join(str(n.get(s, "-")) for s in ("train", "val", "test"))
            lines.append(
                f"    {name:<{width}}  {num(pr['precision'], '9.3f')}  {num(pr['recall'], '6.3f')}"
                f"  {split:>21}"
            )
    matrix = summary.get("confusion_matrix")
    if matrix and per_class:
        lines.append("  confusion matrix (rows: true class, columns: predicted)")
        width = max(len(name) for name in per_class) + 4
        lines.append(" " * (width + 4) + "".join(f"{f'[{i}]':>6}" for i in range(len(matrix))))
        for i, (name, row) in enumerate(zip(per_class, matrix, strict=True)):
            label = f"[{i}] {name}"
            lines.append(f"    {label:<{width}}" + "".join(f"{int(v):>6}" for v in row))
    lines.append(
        f"  time             {summary['wall_time_s']:.1f} s   {num(summary['images_per_s'], '.1f')} train img/s"
        f"   peak RSS {summary['peak_rss_gb']:.2f} GB"
    )
    if summary.get("hidden_units_alive") == 0:
        lines += [
            "  hidden units     all dead (dying ReLU): the network answers one class for every image",
            "  try next         leafnet train experiment=finetune   (ImageNet features, fine-tuned)",
            "                   leafnet train model=leafnet_gap   (position-free features)",
            "                   (why: docs/dying_relu.md)",
        ]
    if summary.get("diverged_at"):
        d = summary["diverged_at"]
        lines.append(
            f"  diverged         loss {d.get('reason', 'not finite')} at epoch {d['epoch']} step {d['step']}"
        )
    return "\n".join(lines)
