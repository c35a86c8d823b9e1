"""Run records: what each run under a sweep or folder holds so far (optimizer, learning rate, seed,
status, curves), labelled with the overrides that set it apart and grouped into settings; and the
one-line-per-run table a sweep prints when it ends. Read through `runs.read_run`, so a run that is
still going, or was cut short, is reported from what it wrote."""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from leafnet import tables
from leafnet.runs import find_run_dirs, read_run

# The seed's order (SGD, RMSprop, Adagrad, Adam); other optimizers follow alphabetically.
OPTIMIZER_ORDER = ("sgd", "rmsprop", "adagrad", "adam")


METRIC_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s")


# Override keys that never name a setting: file locations, machine details, the sweep itself.
_NOT_A_SETTING = re.compile(
    r"^(optimizer|lr|seed|resume|experiment|hparams_search|hydra[./].*|paths\..*|"
    r"data\.(dir|split_file|cache_dir|num_workers)|trainer\.(devices|accelerator))$"
)


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


def optimizer_rank(name: str) -> tuple[int, str]:
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
    settings.sort(key=lambda s: (optimizer_rank(s.optimizer), -(s.lr or 0.0), s.label))
    for opt in {s.optimizer for s in settings}:
        scored = [
            s for s in settings if s.optimizer == opt and math.isfinite(s.mean("best_val_acc"))
        ]
        if scored:
            max(scored, key=lambda s: s.mean("best_val_acc")).best = True
    return settings


def format_lr(lr: float | None) -> str:
    return "?" if lr is None else f"{lr:g}"


def fmt(value: float, spec: str = ".4f") -> str:
    return format(value, spec) if math.isfinite(value) else "-"


def fmt_time(seconds: float) -> str:
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
                fmt(r.best_val_acc),
                fmt(r.final_val_loss, ".4g"),
                str(r.epochs_completed),
                fmt_time(r.wall_time_s),
            ]
        )
    return tables.text_table(header, rows)
