"""Does a data set calibrate the seed recipe? A table of finished runs against a colour baseline.

`python -m leafnet.lab.calibration runs=<folder of runs> [out=table.md]` prints one row per
run: seed, test accuracy, hidden Dense units alive at the end, training accuracy at epoch 3, and
the test accuracy of a colour-histogram logistic regression trained on the same run's split
(`split.csv`). A CNN that does not beat the colour baseline clearly has learned colour, not
symptoms. The baseline is `leafnet.baseline`'s, which every training run also reports.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from leafnet import tables
from leafnet.baseline import colour_baseline
from leafnet.config import command_config
from leafnet.errors import LeafnetError, cli_errors
from leafnet.files import write_text
from leafnet.runs import find_run_dirs, read_run, run_datamodule


def histogram_baseline(run_dir: str | Path) -> dict[str, Any]:
    """The colour baseline (`leafnet.baseline`) on a finished run's own split (`split.csv`)."""
    dm = run_datamodule(run_dir)
    result = colour_baseline({s: dm.dataset(s) for s in ("train", "val", "test")})
    if "skipped" in result:
        raise LeafnetError(f"{run_dir}: no colour baseline ({result['skipped']})")
    return result


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
def main(argv: Sequence[str] | None = None) -> None:
    """`key=value` arguments (conf/calibration.yaml): print the table, and write it to `out`."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = command_config("lab.calibration", argv, required=("runs",), conf="calibration")
    runs = find_run_dirs([cfg.runs] if isinstance(cfg.runs, str) else [str(r) for r in cfg.runs])
    table = markdown_table([calibration_row(r) for r in runs])
    print(table)
    if cfg.out:
        write_text(Path(str(cfg.out)), table + "\n")


if __name__ == "__main__":
    main()
