"""Compare finished (or still running) runs: loss/accuracy figures and a table per setting.

`python -m leafnet.lab.compare runs=DIR [out=OUT]` (several: `runs=[A,B]`) reads every run under the given
directories (a multirun directory, run directories, or folders holding either), and writes

- `comparison.png`: a panel per optimizer, a colour per learning rate, training (dashed) and
  validation (solid) loss against epoch; log scale where a panel's losses span more than a decade;
  diverged runs marked with a red X where they stopped;
- `accuracy.png`: the same layout for training and validation accuracy;
- `comparison.md` and `comparison.csv`: one row per setting, the best setting per optimizer marked.

Runs of the same setting with different seeds are drawn as their mean with a +-1 std band.
It only reads files, so it works on a sweep that is still running or was cut short: a run without
`summary.json` is reported as `running` from whatever rows its `metrics.csv` holds so far.

`ComparisonReport`, a Hydra callback that experiment=lr_study adds, writes the report above into
the sweep directory when the study ends. (Every sweep's one-line-per-run table is
`leafnet.training.sweep.SweepTable`.)
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig

from leafnet import tables
from leafnet.config import command_config
from leafnet.errors import LeafnetError, cli_errors
from leafnet.files import atomic_path, refuse_existing, write_text
from leafnet.lab.curves import draw_panels
from leafnet.records import RunRecord, Setting, fmt, fmt_time, format_lr, group_settings, load_runs

log = logging.getLogger(__name__)

_CSV_HEADER = [
    "optimizer",
    "lr",
    "setting",
    "runs",
    "status",
    "best_val_acc",
    "best_val_acc_std",
    "final_val_loss",
    "epochs",
    "wall_time_s",
    "best_for_optimizer",
    "run_dirs",
]


def _extra(s: Setting) -> str:
    """The setting's label without its learning rate: the other overrides that differ."""
    return s.label.partition(",")[2] if s.label.startswith("lr=") else s.label


def _setting_row(s: Setting) -> list[Any]:
    return [
        s.optimizer,
        format_lr(s.lr),
        _extra(s),
        len(s.runs),
        s.status,
        fmt(s.mean("best_val_acc")),
        fmt(s.std("best_val_acc")),
        fmt(s.mean("final_val_loss"), ".6g"),
        fmt(s.mean("epochs_completed"), ".0f"),
        fmt(s.mean("wall_time_s"), ".1f"),
        "yes" if s.best else "",
        ";".join(os.path.relpath(r.path) for r in s.runs),
    ]


def write_csv(settings: Sequence[Setting], path: Path, replace: bool = True) -> None:
    with atomic_path(path, replace=replace) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(_CSV_HEADER)
        writer.writerows(_setting_row(s) for s in settings)


def markdown_table(settings: Sequence[Setting]) -> str:
    """The comparison as a Markdown table; the best setting per optimizer in bold with a star."""
    seeds = any(len(s.runs) > 1 for s in settings)
    extra = any(_extra(s) for s in settings)
    header = [
        "optimizer",
        "lr",
        "setting" if extra else None,
        "runs" if seeds else None,
        "status",
        "best val acc",
        "final val loss",
        "epochs",
        "time / run",
        "best",
    ]
    header = [h for h in header if h]
    rows = []
    for s in settings:
        acc = fmt(s.mean("best_val_acc"))
        if seeds and math.isfinite(s.std("best_val_acc")):
            acc += f" ± {s.std('best_val_acc'):.4f}"
        if s.best:
            acc = f"**{acc}**"
        cells = [
            s.optimizer,
            format_lr(s.lr),
            _extra(s) if extra else None,
            str(len(s.runs)) if seeds else None,
            s.status,
            acc,
            fmt(s.mean("final_val_loss"), ".4g"),
            fmt(s.mean("epochs_completed"), ".0f"),
            fmt_time(s.mean("wall_time_s")),
            "★" if s.best else "",
        ]
        rows.append([c for c in cells if c is not None])
    return tables.markdown_table(header, rows)


def write_markdown(
    settings: Sequence[Setting], sources: Sequence[Path], path: Path, replace: bool = True
) -> None:
    runs = sum(len(s.runs) for s in settings)
    text = [
        "# Learning-rate / optimizer comparison",
        "",
        f"{runs} runs in {len(settings)} settings from: "
        + ", ".join(f"`{p}`" for p in sources)
        + ".",
        "★ marks the best setting per optimizer (highest best validation accuracy"
        + (", mean over seeds" if runs > len(settings) else "")
        + ").",
        "",
        markdown_table(settings),
        "",
        "![loss](comparison.png)",
        "",
        "![accuracy](accuracy.png)",
        "",
    ]
    write_text(path, "\n".join(text), replace=replace)


def _num_classes(runs: Sequence[RunRecord]) -> int:
    """Classes the runs were trained on (their test confusion matrix), else the seed's 3."""
    sizes = {len(r.summary["confusion_matrix"]) for r in runs if r.summary.get("confusion_matrix")}
    return sizes.pop() if len(sizes) == 1 else 3


def _subtitle(runs: Sequence[RunRecord]) -> str:
    """Facts shared by every run (batch, image size, seed), from the summaries and overrides."""
    facts = []
    for key, name in (("batch_size", "batch"), ("image_size", "image"), ("seed", "seed")):
        values = {r.summary.get(key, r.seed if key == "seed" else None) for r in runs} - {None}
        if len(values) == 1:
            value = next(iter(values))
            facts.append(f"{name} {value}" + (" px" if key == "image_size" else ""))
    if len({r.seed for r in runs}) > 1:
        facts.append(f"{len({r.seed for r in runs})} seeds")
    return ", ".join(facts)


REPORT_FILES = {
    "loss": "comparison.png",
    "accuracy": "accuracy.png",
    "markdown": "comparison.md",
    "csv": "comparison.csv",
}


def write_report(
    runs: Sequence[RunRecord], sources: Sequence[Path], out_dir: Path, overwrite: bool = False
) -> dict[str, Path]:
    """Write the figures and tables for `runs` into `out_dir`; returns the files by kind. Files
    of those names already there are replaced only with `overwrite` (refused before any write)."""
    files = {kind: out_dir / name for kind, name in REPORT_FILES.items()}
    for path in files.values():
        refuse_existing(path, overwrite, "out")
    settings = group_settings(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    subtitle = _subtitle(runs)
    suffix = f"\n{subtitle}" if subtitle else ""
    draw_panels(
        settings,
        ("train_loss", "val_loss"),
        "cross-entropy loss",
        "Training (dashed) and validation (solid) loss per optimizer" + suffix,
        files["loss"],
        log_when_wide=True,
        replace=overwrite,
    )
    draw_panels(
        settings,
        ("train_acc", "val_acc"),
        "accuracy",
        "Training (dashed) and validation (solid) accuracy per optimizer" + suffix,
        files["accuracy"],
        log_when_wide=False,
        chance=1.0 / _num_classes(runs),
        replace=overwrite,
    )
    write_markdown(settings, sources, files["markdown"], replace=overwrite)
    write_csv(settings, files["csv"], replace=overwrite)
    return files


def default_out_dir(paths: Sequence[str | Path]) -> Path:
    """The one directory given, or the directories' common parent."""
    if len(paths) == 1:
        return Path(paths[0])
    return Path(os.path.commonpath([str(Path(p).resolve()) for p in paths]))


def compare(
    paths: Sequence[str | Path], out_dir: str | Path | None = None, overwrite: bool = False
) -> dict[str, Path]:
    """Read the runs under `paths` and write the figures and tables (see the module docstring)."""
    runs = load_runs(paths)
    out = Path(out_dir) if out_dir is not None else default_out_dir(paths)
    return write_report(runs, [Path(p) for p in paths], out, overwrite)


class ComparisonReport(Callback):
    """At the end of a study's multirun (experiment=lr_study adds it): the report above, written
    into the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        # The runs are done and saved: a failing figure must not turn the sweep into an error.
        try:
            files = write_report(load_runs([sweep_dir]), [sweep_dir], sweep_dir, overwrite=True)
        except Exception:
            log.exception(
                "comparison report failed; run: python -m leafnet.lab.compare runs=%s", sweep_dir
            )
            return
        print("comparison: " + ", ".join(str(p) for p in files.values()), flush=True)


@cli_errors
def main(argv: Sequence[str] | None = None) -> None:
    """`key=value` arguments (conf/compare.yaml): write the report, print the table."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = command_config("lab.compare", argv, required=("runs",), conf="compare")
    dirs = [str(d) for d in cfg.runs] if isinstance(cfg.runs, ListConfig) else [str(cfg.runs)]
    runs = load_runs(dirs)
    if not cfg.get("all_runs", False):
        kept = [r for r in runs if r.status != "failed" and r.epochs]
        if len(kept) < len(runs):
            print(
                f"leafnet: left out {len(runs) - len(kept)} failed or empty run(s) "
                "(all_runs=true shows them)",
                file=sys.stderr,
            )
        if not kept:
            raise LeafnetError(
                f"no finished epochs in the {len(runs)} run(s) under {', '.join(dirs)}; "
                "all_runs=true to report them anyway"
            )
        runs = kept
    out = Path(str(cfg.out)) if cfg.out else default_out_dir(dirs)
    files = write_report(runs, [Path(p) for p in dirs], out, cfg.overwrite)
    print(markdown_table(group_settings(runs)))
    print("wrote " + ", ".join(str(p) for p in files.values()))


if __name__ == "__main__":
    main()
