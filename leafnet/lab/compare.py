"""Compare finished (or still running) runs: loss/accuracy figures and a table per setting.

`python -m leafnet.lab.compare dirs=DIR [out=OUT]` (several: `dirs=[A,B]`) reads every run under the given
directories (a multirun directory, run directories, or folders holding either), and writes

- `comparison.png`: a panel per optimizer, a colour per learning rate, training (dashed) and
  validation (solid) loss against epoch; log scale where a panel's losses span more than a decade;
  diverged runs marked with a red X where they stopped;
- `accuracy.png`: the same layout for training and validation accuracy;
- `comparison.md` and `comparison.csv`: one row per setting, the best setting per optimizer marked.

Runs of the same setting with different seeds are drawn as their mean with a +-1 std band.
It only reads files, so it works on a sweep that is still running or was cut short: a run without
`summary.json` is reported as `running` from whatever rows its `metrics.csv` holds so far.

`SweepReport`, a Hydra callback (conf/hydra/default.yaml): when a multirun ends it prints one line
per run (optimizer, lr, status, best val accuracy, final val loss, epochs, time), writes it to
`<sweep dir>/sweep_table.txt` and, with `compare: true` (experiment=lr_study), the report above.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from leafnet import tables
from leafnet.config import command_config
from leafnet.errors import LeafnetError, cli_errors
from leafnet.runs import find_run_dirs, read_run

log = logging.getLogger(__name__)

# The seed's order (SGD, RMSprop, Adagrad, Adam); other optimizers follow alphabetically.
OPTIMIZER_ORDER = ("sgd", "rmsprop", "adagrad", "adam")
METRIC_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s")
# Override keys that never name a setting: file locations, machine details, the sweep itself.
_NOT_A_SETTING = re.compile(
    r"^(optimizer|lr|seed|resume|experiment|hparams_search|hydra[./].*|paths\..*|"
    r"data\.(dir|split_file|cache_dir|num_workers)|trainer\.(devices|accelerator))$"
)
# Loss ranges wider than this factor within a panel are drawn on a log scale.
_LOG_SCALE_RATIO = 10.0


@dataclass
class RunRecord:
    """What one run directory holds so far."""

    path: Path
    optimizer: str
    lr: float | None
    seed: int | None
    status: str  # completed | diverged | failed | interrupted | running (no summary.json yet)
    summary: dict[str, Any]
    overrides: dict[str, str]
    metrics: dict[str, list[float]] = field(default_factory=dict)  # column -> one value per row
    setting: str = ""  # overrides other than optimizer/lr/seed that differ between the runs

    @property
    def epochs(self) -> list[float]:
        return self.metrics.get("epoch", [])

    @property
    def best_val_acc(self) -> float:
        return _summary_or(self.summary.get("best_val_acc"), _nanmax(self.metrics.get("val_acc")))

    @property
    def final_val_loss(self) -> float:
        return _summary_or(self.summary.get("final_val_loss"), _last(self.metrics.get("val_loss")))

    @property
    def epochs_completed(self) -> int:
        done = self.summary.get("epochs_completed")
        return int(done) if isinstance(done, (int, float)) else len(self.epochs)

    @property
    def wall_time_s(self) -> float:
        total = sum(t for t in self.metrics.get("epoch_time_s", []) if math.isfinite(t))
        return _summary_or(self.summary.get("wall_time_s"), total if self.epochs else math.nan)

    @property
    def stopped_at_epoch(self) -> float | None:
        """Where a diverged run stopped: the summary's epoch, else its last metrics row."""
        at = self.summary.get("diverged_at")
        if isinstance(at, dict) and isinstance(at.get("epoch"), (int, float)):
            return float(at["epoch"])
        return self.epochs[-1] if self.epochs else None


@dataclass
class Setting:
    """Runs that share optimizer, learning rate and other varying overrides (seeds differ)."""

    optimizer: str
    lr: float | None
    label: str
    runs: list[RunRecord]
    best: bool = False

    @property
    def status(self) -> str:
        counts = Counter(r.status for r in self.runs)
        if len(counts) == 1:
            return next(iter(counts))
        return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))

    def mean(self, attr: str) -> float:
        return _nanmean(getattr(r, attr) for r in self.runs)

    def std(self, attr: str) -> float:
        values = [v for v in (getattr(r, attr) for r in self.runs) if math.isfinite(v)]
        return statistics.stdev(values) if len(values) > 1 else math.nan


# ----------------------------------------------------------------------------- reading runs


def _summary_or(value: Any, fallback: float) -> float:
    return float(value) if isinstance(value, (int, float)) else fallback


def _finite(values: Iterable[float] | None) -> list[float]:
    return [v for v in values or () if math.isfinite(v)]


def _nanmax(values: Sequence[float] | None) -> float:
    finite = _finite(values)
    return max(finite) if finite else math.nan


def _nanmean(values: Iterable[float]) -> float:
    finite = _finite(values)
    return statistics.fmean(finite) if finite else math.nan


def _last(values: Sequence[float] | None) -> float:
    return values[-1] if values else math.nan


def _parse_overrides(items: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = str(item).lstrip("+~").partition("=")
        if sep:
            out[key] = value
    return out


def _optimizer_name(summary: dict, overrides: dict[str, str], config: Any) -> str:
    if summary.get("optimizer"):
        return str(summary["optimizer"]).lower()
    if "optimizer" in overrides:
        return overrides["optimizer"].lower()
    opt = config.get("optimizer") if isinstance(config, dict) else None
    if isinstance(opt, dict):
        name = opt.get("name") or opt.get("_target_")
        if isinstance(name, str):
            return name.rsplit(".", 1)[-1].lower()
    return str(opt).lower() if isinstance(opt, str) else "?"


def _number(*candidates: Any) -> float | None:
    for value in candidates:
        try:
            if value is not None and not isinstance(value, bool):
                return float(value)
        except (TypeError, ValueError):
            continue
    return None


def _status(summary: dict[str, Any]) -> str:
    """The run's status; `running` without a summary. A run that recorded where its loss stopped
    being finite counts as diverged, whatever ended it afterwards."""
    if not summary:
        return "running"
    if isinstance(summary.get("diverged_at"), dict):
        return "diverged"
    return str(summary.get("status", "running"))


def read_run_record(path: Path) -> RunRecord:
    """One run directory, however far it got."""
    run = read_run(path)
    summary, overrides = run.summary, _parse_overrides(run.overrides)
    # Unresolved: a run's config refers to Hydra's runtime values (${hydra:...}).
    config = OmegaConf.to_container(run.config, resolve=False) if run.config is not None else {}
    seed = _number(overrides.get("seed"), config.get("seed"))
    columns = list(dict.fromkeys(k for row in run.metrics for k in row))
    return RunRecord(
        path=path,
        optimizer=_optimizer_name(summary, overrides, config),
        lr=_number(summary.get("lr"), overrides.get("lr"), config.get("lr")),
        seed=None if seed is None else int(seed),
        status=_status(summary),
        summary=summary,
        overrides=overrides,
        metrics={c: [row.get(c, math.nan) for row in run.metrics] for c in columns},
    )


def load_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    """Every run under `paths`, each labelled with the overrides that set it apart."""
    runs = [read_run_record(p) for p in find_run_dirs(paths)]
    keys = {k for r in runs for k in r.overrides if not _NOT_A_SETTING.match(k)}
    varying = sorted(k for k in keys if len({r.overrides.get(k) for r in runs}) > 1)
    for run in runs:
        run.setting = ",".join(f"{k}={run.overrides.get(k, '-')}" for k in varying)
    return runs


def _optimizer_rank(name: str) -> tuple[int, str]:
    return (OPTIMIZER_ORDER.index(name), "") if name in OPTIMIZER_ORDER else (99, name)


def group_settings(runs: Sequence[RunRecord]) -> list[Setting]:
    """Runs grouped by (optimizer, lr, other varying overrides), best per optimizer marked."""
    groups: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault((run.optimizer, run.lr, run.setting), []).append(run)
    settings = [
        Setting(opt, lr, ",".join(p for p in (f"lr={format_lr(lr)}", extra) if p), members)
        for (opt, lr, extra), members in groups.items()
    ]
    # The seed runs lr 0.1, 0.01, 0.001 in that order: largest first.
    settings.sort(key=lambda s: (_optimizer_rank(s.optimizer), -(s.lr or 0.0), s.label))
    for opt in {s.optimizer for s in settings}:
        scored = [
            s for s in settings if s.optimizer == opt and math.isfinite(s.mean("best_val_acc"))
        ]
        if scored:
            max(scored, key=lambda s: s.mean("best_val_acc")).best = True
    return settings


# ----------------------------------------------------------------------------- tables


def format_lr(lr: float | None) -> str:
    return "?" if lr is None else f"{lr:g}"


def _fmt(value: float, spec: str = ".4f") -> str:
    return format(value, spec) if math.isfinite(value) else "-"


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


def run_table(runs: Sequence[RunRecord]) -> str:
    """One line per run: what a sweep prints when it ends."""
    show_seed = len({r.seed for r in runs}) > 1
    show_setting = any(r.setting for r in runs)
    header = (
        ["run", "optimizer", "lr"]
        + (["seed"] if show_seed else [])
        + (["setting"] if show_setting else [])
        + ["status", "best val acc", "final val loss", "epochs", "time"]
    )
    rows = []
    for r in runs:
        rows.append(
            [r.path.name.split("_", 1)[0], r.optimizer, format_lr(r.lr)]
            + ([str(r.seed)] if show_seed else [])
            + ([r.setting or "-"] if show_setting else [])
            + [
                r.status,
                _fmt(r.best_val_acc),
                _fmt(r.final_val_loss, ".4g"),
                str(r.epochs_completed),
                _fmt_time(r.wall_time_s),
            ]
        )
    return tables.text_table(header, rows)


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
        _fmt(s.mean("best_val_acc")),
        _fmt(s.std("best_val_acc")),
        _fmt(s.mean("final_val_loss"), ".6g"),
        _fmt(s.mean("epochs_completed"), ".0f"),
        _fmt(s.mean("wall_time_s"), ".1f"),
        "yes" if s.best else "",
        ";".join(os.path.relpath(r.path) for r in s.runs),
    ]


def write_csv(settings: Sequence[Setting], path: Path) -> None:
    with path.open("w", newline="") as fh:
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
        acc = _fmt(s.mean("best_val_acc"))
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
            _fmt(s.mean("final_val_loss"), ".4g"),
            _fmt(s.mean("epochs_completed"), ".0f"),
            _fmt_time(s.mean("wall_time_s")),
            "★" if s.best else "",
        ]
        rows.append([c for c in cells if c is not None])
    return tables.markdown_table(header, rows)


def write_markdown(settings: Sequence[Setting], sources: Sequence[Path], path: Path) -> None:
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
    path.write_text("\n".join(text))


# ----------------------------------------------------------------------------- figures


def _lr_colours(settings: Sequence[Setting]) -> dict[float | None, Any]:
    """One colour per learning rate, the same in every panel (tab10, or viridis for many)."""
    from matplotlib import colormaps

    lrs = sorted({s.lr for s in settings}, key=lambda v: -(v or 0.0))
    if len(lrs) <= 10:
        cmap = colormaps["tab10"]
        return {lr: cmap(i) for i, lr in enumerate(lrs)}
    cmap = colormaps["viridis"]
    return {lr: cmap(i / (len(lrs) - 1)) for i, lr in enumerate(lrs)}


def _mean_curve(
    runs: Sequence[RunRecord], column: str
) -> tuple[list[float], list[float], list[float]]:
    """Epochs, mean and std over runs of `column` (only finite values count)."""
    by_epoch: dict[float, list[float]] = {}
    for run in runs:
        for epoch, value in zip(run.epochs, run.metrics.get(column, []), strict=False):
            if math.isfinite(value):
                by_epoch.setdefault(epoch, []).append(value)
    xs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[x]) for x in xs]
    stds = [statistics.pstdev(by_epoch[x]) if len(by_epoch[x]) > 1 else 0.0 for x in xs]
    return xs, means, stds


def _last_finite(run: RunRecord, column: str) -> tuple[float, float] | None:
    """(epoch, value) of the last finite value of `column`."""
    pairs = zip(run.epochs, run.metrics.get(column, []), strict=False)
    finite = [(x, v) for x, v in pairs if math.isfinite(v)]
    return finite[-1] if finite else None


def _mark_diverged(ax: Any, run: RunRecord, columns: Sequence[str]) -> None:
    """A red X on the run's last finite point (where its curve stops), labelled with the epoch
    at which the loss stopped being finite."""
    from matplotlib.transforms import blended_transform_factory

    stopped = run.stopped_at_epoch
    text = f"diverged\n(epoch {stopped:g})" if stopped is not None else "diverged"
    point = _last_finite(run, columns[1]) or _last_finite(run, columns[0])
    if point is None:  # not one finite value: mark it on the axis floor at the epoch it stopped
        if stopped is None:
            return
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        ax.plot([stopped], [0.04], "X", color="red", ms=11, mec="black", mew=0.5, transform=trans)
        ax.annotate(text, (stopped, 0.04), xycoords=trans, xytext=(8, 4),
                    textcoords="offset points", color="red", fontsize=8)  # fmt: skip
        return
    ax.plot(*point, "X", color="red", ms=11, mec="black", mew=0.5, zorder=5)
    ax.annotate(text, point, xytext=(8, -4), textcoords="offset points", color="red",
                fontsize=8, va="top")  # fmt: skip


def wide_range(values: Sequence[float]) -> bool:
    """Whether positive `values` span more than a decade: then a log scale shows them all."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return bool(positive) and max(positive) / min(positive) > _LOG_SCALE_RATIO


def _draw(
    settings: Sequence[Setting],
    columns: Sequence[str],
    ylabel: str,
    title: str,
    path: Path,
    log_when_wide: bool,
    chance: float | None = None,
) -> None:
    """Panels per optimizer. Losses: log scale where they span a decade. Accuracy (`chance`
    given): a fixed 0-1 axis, so panels compare, and a dotted line at chance level."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    optimizers = sorted({s.optimizer for s in settings}, key=_optimizer_rank)
    ncols = 2 if len(optimizers) == 4 else min(3, len(optimizers))
    nrows = math.ceil(len(optimizers) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.9 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colours = _lr_colours(settings)
    styles = {columns[0]: "--", columns[1]: "-"}  # train dashed, val solid
    seeds = any(len(s.runs) > 1 for s in settings)
    diverged_any = False
    for ax, opt in zip(axes.flat, optimizers, strict=False):
        values: list[float] = []
        for s in (s for s in settings if s.optimizer == opt):
            colour = colours[s.lr]
            for column in columns:
                xs, mean, std = _mean_curve(s.runs, column)
                if not xs:
                    continue
                ax.plot(
                    xs,
                    mean,
                    styles[column],
                    color=colour,
                    lw=1.8,
                    marker="." if len(xs) < 4 else None,
                )
                if seeds and len(s.runs) > 1:
                    ax.fill_between(
                        xs,
                        [m - d for m, d in zip(mean, std, strict=False)],
                        [m + d for m, d in zip(mean, std, strict=False)],
                        color=colour,
                        alpha=0.2,
                        lw=0,
                    )
                values += mean
            for run in (r for r in s.runs if r.status == "diverged"):
                diverged_any = True
                _mark_diverged(ax, run, columns)
        log = log_when_wide and wide_range(values)
        if log:
            ax.set_yscale("log")
        if chance is not None:
            ax.set_ylim(0.0, 1.0)
            ax.axhline(chance, color="grey", ls=":", lw=1.2)
        ax.set_title(opt, fontsize=13, fontweight="bold")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel + (" (log scale)" if log else ""))
        ax.grid(True, which="major", alpha=0.3)
        if not values:
            ax.text(
                0.5,
                0.5,
                "no epochs finished yet",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="grey",
            )
    for ax in list(axes.flat)[len(optimizers) :]:
        ax.set_visible(False)
    handles: list[Any] = [
        Line2D([], [], color=c, lw=2.5, label=f"lr={format_lr(lr)}") for lr, c in colours.items()
    ]
    handles += [
        Line2D([], [], color="black", ls="--", label=columns[0].replace("_", " ")),
        Line2D([], [], color="black", ls="-", label=columns[1].replace("_", " ")),
    ]
    if seeds:
        handles.append(Patch(color="grey", alpha=0.3, label="mean ± std over seeds"))
    if chance is not None:
        handles.append(Line2D([], [], color="grey", ls=":", label=f"chance ({chance:.2f})"))
    if diverged_any:
        handles.append(
            Line2D([], [], color="red", marker="X", ls="", ms=9, label="diverged (stopped)")
        )
    fig.legend(
        handles=handles, loc="outside lower center", ncols=min(len(handles), 8), frameon=False
    )
    fig.suptitle(title, fontsize=14)
    fig.savefig(path, dpi=110)


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


def write_report(
    runs: Sequence[RunRecord], sources: Sequence[Path], out_dir: Path
) -> dict[str, Path]:
    """Write the figures and tables for `runs` into `out_dir`; returns the files by kind."""
    settings = group_settings(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    subtitle = _subtitle(runs)
    suffix = f"\n{subtitle}" if subtitle else ""
    files = {
        "loss": out_dir / "comparison.png",
        "accuracy": out_dir / "accuracy.png",
        "markdown": out_dir / "comparison.md",
        "csv": out_dir / "comparison.csv",
    }
    _draw(
        settings,
        ("train_loss", "val_loss"),
        "cross-entropy loss",
        "Training (dashed) and validation (solid) loss per optimizer" + suffix,
        files["loss"],
        log_when_wide=True,
    )
    _draw(
        settings,
        ("train_acc", "val_acc"),
        "accuracy",
        "Training (dashed) and validation (solid) accuracy per optimizer" + suffix,
        files["accuracy"],
        log_when_wide=False,
        chance=1.0 / _num_classes(runs),
    )
    write_markdown(settings, sources, files["markdown"])
    write_csv(settings, files["csv"])
    return files


def default_out_dir(paths: Sequence[str | Path]) -> Path:
    """The one directory given, or the directories' common parent."""
    if len(paths) == 1:
        return Path(paths[0])
    return Path(os.path.commonpath([str(Path(p).resolve()) for p in paths]))


def compare(paths: Sequence[str | Path], out_dir: str | Path | None = None) -> dict[str, Path]:
    """Read the runs under `paths` and write the figures and tables (see the module docstring)."""
    runs = load_runs(paths)
    out = Path(out_dir) if out_dir is not None else default_out_dir(paths)
    return write_report(runs, [Path(p) for p in paths], out)


SWEEP_TABLE = "sweep_table.txt"


class SweepReport(Callback):
    """At the end of a multirun: print and save the sweep table; optionally the comparison."""

    def __init__(self, compare: bool = False) -> None:
        self.compare = compare

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            runs = load_runs([sweep_dir])
        except LeafnetError as err:  # e.g. every job failed before Hydra wrote its config
            log.warning("sweep report: %s", err)
            return
        table = run_table(runs)
        (sweep_dir / SWEEP_TABLE).write_text(table + "\n")
        print(f"\nleafnet sweep: {len(runs)} runs in {sweep_dir}\n{table}", flush=True)
        for run in runs:
            if run.status != "completed" and run.summary.get("error"):
                print(f"  {run.path.name}: {run.status}: {run.summary['error']}", flush=True)
        if not self.compare:
            return
        # The runs are done and saved: a failing figure must not turn the sweep into an error.
        try:
            files = write_report(runs, [sweep_dir], sweep_dir)
        except Exception:
            log.exception(
                "comparison report failed; run: python -m leafnet.lab.compare dirs=%s", sweep_dir
            )
            return
        print("comparison: " + ", ".join(str(p) for p in files.values()), flush=True)


@cli_errors
def main(argv: Sequence[str] | None = None) -> None:
    """`key=value` arguments (conf/compare.yaml): write the report, print the table."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = command_config("lab.compare", argv, required=("dirs",), conf="compare")
    dirs = [str(d) for d in cfg.dirs] if isinstance(cfg.dirs, ListConfig) else [str(cfg.dirs)]
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
    files = write_report(runs, [Path(p) for p in dirs], out)
    print(markdown_table(group_settings(runs)))
    print("wrote " + ", ".join(str(p) for p in files.values()))


if __name__ == "__main__":
    main()
