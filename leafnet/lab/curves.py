"""The comparison's figures: a panel per optimizer, a colour per learning rate, training (dashed)
and validation (solid) curves, the mean and a band over seeds, diverged runs marked."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from leafnet.files import atomic_path
from leafnet.records import RunRecord, Setting, format_lr, optimizer_rank

# Loss ranges wider than this factor within a panel are drawn on a log scale.
_LOG_SCALE_RATIO = 10.0


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


def draw_panels(
    settings: Sequence[Setting],
    columns: Sequence[str],
    ylabel: str,
    title: str,
    path: Path,
    log_when_wide: bool,
    chance: float | None = None,
    replace: bool = True,
) -> None:
    """Panels per optimizer. Losses: log scale where they span a decade. Accuracy (`chance`
    given): a fixed 0-1 axis, so panels compare, and a dotted line at chance level."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    optimizers = sorted({s.optimizer for s in settings}, key=optimizer_rank)
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
    with atomic_path(path, replace=replace) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
