"""Does a data set calibrate the seed recipe? A table of finished runs against a colour baseline.

`python -m leafnet.lab.calibration runs=<folder of runs> [out=table.md]` prints one row per
run: seed, test accuracy, hidden Dense units alive at the end, training accuracy at epoch 3, and
the test accuracy of a colour-histogram logistic regression trained on the same run's split
(`split.csv`). A CNN that does not beat the colour baseline clearly has learned colour, not
symptoms. The baseline needs scikit-learn (`pip install 'leafnet[lab]'`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leafnet import tables
from leafnet.config import command_config, to_primitive
from leafnet.errors import LeafnetError, cli_errors
from leafnet.files import write_text
from leafnet.runs import find_run_dirs, read_run

BINS = 8  # per channel: 512 colour bins
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)  # inverse regularisation, chosen on the validation images


def colour_histograms(images: torch.Tensor, bins: int = BINS) -> np.ndarray:
    """Normalised joint RGB histograms [N, bins**3] of a uint8 batch [N, 3, H, W]."""
    rows = []
    for chunk in images.split(16):  # int64 indices of a 640 px image take 10 MB
        q = (chunk.long() * bins // 256).flatten(2)  # [n, 3, H*W], each in [0, bins)
        index = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
        hist = torch.zeros(chunk.shape[0], bins**3, dtype=torch.float64)
        hist.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))
        rows.append(hist / index.shape[1])
    return torch.cat(rows).numpy()


def histogram_baseline(run_dir: str | Path) -> dict[str, float]:
    """Colour-histogram logistic regression on a run's own split: val-chosen C, test accuracy."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise LeafnetError(
            "the colour baseline needs scikit-learn: pip install 'leafnet[lab]'"
        ) from None
    from leafnet.data.datamodule import LeafDataModule

    run = read_run(run_dir)
    split = Path(run_dir) / "split.csv"
    if run.config is None or not split.is_file():
        raise LeafnetError(f"{run_dir} has no .hydra/config.yaml and split.csv; is it a run dir?")
    data = {**to_primitive(run.config.data), "split_file": str(split), "kfold": None}
    data.update(synthetic=False, augment="none", num_workers=0)
    dm = LeafDataModule(**data, batch_size=int(run.config.batch_size), seed=int(run.config.seed))
    dm.setup("fit")
    every = dm.dataset()
    features = np.concatenate(
        [colour_histograms(every.batch(range(i, min(i + 64, len(every))))[0])
         for i in range(0, len(every), 64)]
    )  # fmt: skip
    labels = np.asarray(dm.labels)
    subsets = np.asarray(dm.subsets)
    x = {s: features[subsets == s] for s in ("train", "val", "test")}
    y = {s: labels[subsets == s] for s in ("train", "val", "test")}

    def fit(c: float) -> Any:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        return model.fit(x["train"], y["train"])

    scores = {c: fit(c).score(x["val"], y["val"]) for c in C_GRID}
    best_c = max(C_GRID, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    return {
        "val_acc": float(scores[best_c]),
        "test_acc": float(fit(best_c).score(x["test"], y["test"])),
        "C": best_c,
    }


def calibration_row(run_dir: str | Path) -> dict[str, Any]:
    """One run's calibration facts, read from its summary.json and metrics.csv."""
    run = read_run(run_dir)
    if not run.summary:
        raise LeafnetError(f"{run_dir} has no summary.json; is the run finished?")
    epoch3 = next((r for r in run.metrics if int(r["epoch"]) == 3), None)
    return {
        "run": str(run_dir),
        "seed": run.summary.get("seed"),
        "status": run.summary.get("status"),
        "test_acc": run.summary.get("test_acc"),
        "best_val_acc": run.summary.get("best_val_acc"),
        "hidden_units_alive": run.summary.get("hidden_units_alive"),
        "train_acc_epoch3": None if epoch3 is None else epoch3["train_acc"],
        "final_train_acc": run.metrics[-1]["train_acc"] if run.metrics else None,
        "colour_baseline_test_acc": histogram_baseline(run_dir)["test_acc"],
    }


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (numbers to 3 decimals, missing as '-')."""
    columns = [
        ("seed", "seed"),
        ("test_acc", "test acc"),
        ("hidden_units_alive", "units alive"),
        ("train_acc_epoch3", "train acc, epoch 3"),
        ("final_train_acc", "train acc, last epoch"),
        ("colour_baseline_test_acc", "colour baseline test acc"),
        ("margin", "CNN - baseline"),
    ]

    def cell(row: dict[str, Any], key: str) -> str:
        if key == "margin":
            a, b = row.get("test_acc"), row.get("colour_baseline_test_acc")
            return "-" if a is None or b is None else f"{a - b:+.3f}"
        value = row.get(key)
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    titles = [title for _, title in columns]
    cells = [[cell(r, key) for key, _ in columns] for r in rows]
    return tables.markdown_table(titles, cells, right=[True] * len(columns))


@cli_errors
def main(argv: Sequence[str] | None = None) -> int:
    """`key=value` arguments (conf/calibration.yaml): print the table, and write it to `out`."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = command_config("lab.calibration", argv, required=("runs",), conf="calibration")
    runs = find_run_dirs([cfg.runs] if isinstance(cfg.runs, str) else [str(r) for r in cfg.runs])
    table = markdown_table([calibration_row(r) for r in runs])
    print(table)
    if cfg.out:
        write_text(Path(str(cfg.out)), table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
