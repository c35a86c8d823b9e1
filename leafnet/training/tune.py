"""Lightning's learning-rate finder for `python -m leafnet.train tune.lr_find=true`.

`lr_find` runs `Tuner.lr_find` (an exponential LR sweep over `num_training` optimizer steps, then
the model is restored) and writes `lr_find.png` (loss against lr, suggestion marked) and
`lr_find.json` (suggestion and the curve) into the run directory.

Manual optimization: `LeafClassifier` steps its optimizer itself (micro-batching), and Lightning
steps LR schedulers only under automatic optimization, so the finder's schedule would never move:
every step would run at `min_lr` and the curve would be flat. While the finder runs, a global
optimizer-step hook steps the finder's schedule once per optimizer step instead, exactly where
the automatic loop would; the module's own once-per-epoch `scheduler.step()` leaves the finder's
schedules alone (it would advance them irregularly at epoch ends).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.tuner import Tuner
from torch.optim.optimizer import register_optimizer_step_post_hook

from leafnet.adapters.lightning import FINDER_SCHEDULES
from leafnet.errors import LeafnetError


def _manual_schedule_stepper(trainer: pl.Trainer) -> Any:
    """An optimizer-step post hook that steps the finder's schedule (manual optimization only)."""

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        configs = trainer.lr_scheduler_configs
        if not configs or not isinstance(configs[0].scheduler, FINDER_SCHEDULES):
            return
        schedule = configs[0].scheduler
        if optimizer is schedule.optimizer:
            schedule.step()

    return hook


def lr_find(
    trainer: pl.Trainer,
    classifier: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    run_dir: str | os.PathLike,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    num_training: int = 100,
) -> float:
    """Run Lightning's LR finder; save `lr_find.png` and `lr_find.json` in `run_dir`; return the
    suggested learning rate."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = None
    # The finder counts optimizer steps, but its fit also stops at max_epochs: on a small data set
    # (or epochs=2) that cuts the sweep short of num_training. Lift the limit while it runs.
    max_epochs = trainer.fit_loop.max_epochs
    trainer.fit_loop.max_epochs = -1
    if not classifier.automatic_optimization:
        handle = register_optimizer_step_post_hook(_manual_schedule_stepper(trainer))
    try:
        finder = Tuner(trainer).lr_find(
            classifier,
            datamodule=datamodule,
            min_lr=min_lr,
            max_lr=max_lr,
            num_training=num_training,
            update_attr=False,
        )
    finally:
        trainer.fit_loop.max_epochs = max_epochs
        if handle is not None:
            handle.remove()
    if finder is None:
        raise LeafnetError("the lr finder did not run (trainer.fast_dev_run is set); unset it")
    lrs = [float(v) for v in finder.results["lr"]]
    losses = [float(v) for v in finder.results["loss"]]
    suggestion = finder.suggestion()
    if suggestion is None or not math.isfinite(suggestion):
        raise LeafnetError(
            f"the lr finder could not suggest a learning rate from {len(lrs)} steps (loss curve "
            "too short or not finite); give it more data or batches"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = finder.plot(suggest=True, show=False)
    ax = fig.axes[0]
    ax.set_title(f"lr finder: suggested lr = {suggestion:.3g}")
    finite = sorted(v for v in losses if math.isfinite(v))
    if finite:
        # The diverging tail can be 100x the rest; keep the useful part of the curve readable.
        ax.set_ylim(finite[0] - 0.05 * abs(finite[0]), 1.5 * finite[int(0.9 * (len(finite) - 1))])
    fig.savefig(run_dir / "lr_find.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    (run_dir / "lr_find.json").write_text(
        json.dumps(
            {
                "suggested_lr": float(suggestion),
                "min_lr": min_lr,
                "max_lr": max_lr,
                "num_training": num_training,
                "steps_run": len(lrs),
                "lr": lrs,
                "loss": [v if math.isfinite(v) else None for v in losses],
            },
            indent=1,
        )
        + "\n"
    )
    return float(suggestion)
