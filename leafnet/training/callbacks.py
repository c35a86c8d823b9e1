"""Training-time side effects: divergence stop, dying-unit warning, the per-epoch metrics file,
reproducible shuffles across resume, epochs counted from 1 in the progress bar. (Checkpoints are
`training.checkpoint`'s, TensorBoard images `training.board`'s.)

Every file goes under the run directory, which is `Trainer.default_root_dir`.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from leafnet.files import atomic_path

if TYPE_CHECKING:
    from leafnet.module import LeafClassifier

log = logging.getLogger(__name__)

METRICS_COLUMNS = (
    "epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s",
    "images_per_s", "data_wait_share",
)  # fmt: skip


def _scalar(value: Any) -> float:
    return float(value) if value is not None else math.nan


class EpochProgressBar(TQDMProgressBar):
    """Lightning's progress bar with epochs counted from 1 of N ("Epoch 3/50"), as leafnet's log
    lines, metrics.csv and summary.json count them (Lightning's own bar counts from 0)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(
            f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        )


class DivergenceStop(Callback):
    """End training cleanly when the loss becomes NaN or infinite, or explodes.

    Two rules, either of which marks the run `diverged`:
    - non-finite: the module records the first non-finite step on the device; this callback reads
      it back every `check_every_n_steps` steps and before each validation, one host sync per
      check rather than per step;
    - exploding: an epoch's mean training loss above `max_loss_ratio` x ln(classes). ln(classes)
      is the loss of a uniform guess, where every run starts; ten times that (11 for 3 classes)
      means the predictions are confidently wrong by a wide margin, which a learning optimizer
      never reaches (`optimizer=sgd lr=1000` ends epoch 1 at 345). `max_loss_ratio: null`
      turns the rule off.
    It records `diverged_at = {"epoch", "step", "reason", "loss"}` on itself (epochs counted
    from 1, steps from 0; None while the run is sound; kept in checkpoints) and stops the trainer.
    """

    def __init__(self, check_every_n_steps: int = 50, max_loss_ratio: float | None = 10.0) -> None:
        self.every = max(1, int(check_every_n_steps))
        if max_loss_ratio is not None and not (
            isinstance(max_loss_ratio, int | float) and max_loss_ratio > 1
        ):
            from leafnet.errors import LeafnetError

            raise LeafnetError(
                f"callbacks.divergence.max_loss_ratio={max_loss_ratio!r}: use a number > 1 or null"
            )
        self.max_loss_ratio = max_loss_ratio
        self.diverged_at: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"diverged_at": self.diverged_at}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.diverged_at = state_dict.get("diverged_at")

    def _stop(
        self,
        trainer: pl.Trainer,
        pl_module: LeafClassifier,
        step: int,
        reason: str,
        loss: float,
    ) -> None:
        epoch = trainer.current_epoch + 1
        self.diverged_at = {"epoch": epoch, "step": step, "reason": reason, "loss": loss}
        trainer.should_stop = True
        log.warning("loss %s at epoch %d step %d (%.4g): stopping", reason, epoch, step, loss)

    def _check(self, trainer: pl.Trainer, pl_module: LeafClassifier) -> None:
        if self.diverged_at is not None:
            return
        step = pl_module.first_nonfinite_step()
        if not trainer.strategy.reduce_boolean_decision(step >= 0, all=False):
            return
        self._stop(trainer, pl_module, max(step, 0), "not finite", math.nan)

    def _check_exploding(self, trainer: pl.Trainer, pl_module: LeafClassifier) -> None:
        loss = trainer.callback_metrics.get("train_loss")
        if self.max_loss_ratio is None or loss is None or self.diverged_at is not None:
            return
        limit = self.max_loss_ratio * math.log(len(pl_module.hparams.class_names))
        if float(loss) > limit:
            self._stop(trainer, pl_module, trainer.global_step - 1, "exploding", float(loss))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self._check(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: LeafClassifier) -> None:
        if not trainer.sanity_checking:
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: LeafClassifier) -> None:
        self._check(trainer, pl_module)
        self._check_exploding(trainer, pl_module)


class DeadUnits(Callback):
    """Count the hidden Dense units that still fire on the validation set (dying ReLU).

    The seed's Dense(8) reads 179,776 features at 640x640. Adam moves every one of its weights by
    about lr per step, all in one direction when the features look alike, so the units'
    pre-activations jump by many times their spread and a unit pushed below zero for every image
    never gets a gradient again. With all of them dead the logits are constant and the loss sits
    at ln(num_classes) for good. A forward hook on the network's `hidden_layer` (LeafNet's `dense`;
    `layer` overrides it) records on the device which units were positive for at least one
    validation image; the count is read once per epoch, logged as `val_alive_units`, kept as
    and a warning says what to change. Networks without such a
    layer (torchvision's) are not watched.
    """

    def __init__(self, layer: str | None = None) -> None:
        self.layer = layer
        self._alive: torch.Tensor | None = None
        self._handle: Any = None
        self._warned = False

    def _record(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        fired = (output > 0).any(dim=0)
        self._alive = fired if self._alive is None else self._alive | fired

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: LeafClassifier) -> None:
        self._alive = None
        layer = self.layer or pl_module.net.hidden_layer
        if layer is not None:
            self.layer = layer
            self._handle = pl_module.net.get_submodule(layer).register_forward_hook(self._record)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: LeafClassifier) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if trainer.sanity_checking or self._alive is None:
            return
        alive, total = int(self._alive.sum()), self._alive.numel()
        pl_module.log("val_alive_units", float(alive), sync_dist=True, reduce_fx="max")
        if alive == 0 and not self._warned:
            self._warned = True
            log.warning(
                "all %d units of layer '%s' output 0 for every validation image (dying ReLU): "
                "predictions can no longer change and the loss stays at ln(%d); train again with "
                "a lower lr or another optimizer (see the learning-rate study in the README)",
                total, self.layer, pl_module.net.num_classes,
            )  # fmt: skip


class EpochMetrics(Callback):
    """Epoch time, training images/s and data-wait share (logged), and `metrics.csv` per epoch.

    The data-wait share is the host time from one training batch's end to the next one's start
    (the loader, the transfer to the device, callbacks) over the training loop's time: near 0
    when data keeps up. On a GPU the step part counts host time only (kernels run async).

    Epochs are counted from 1 (the number of epochs completed). On resume, rows beyond the
    checkpoint's epoch are dropped, so the file matches the weights.
    """

    filename = "metrics.csv"

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._start = 0.0
        self._train_time: float | None = None
        self._images = 0
        self._lr = math.nan
        self._mark = 0.0  # end of the previous batch (or the epoch's start)
        self._batch_start = 0.0
        self._wait = 0.0
        self._busy = 0.0
        self._validated = False  # whether this epoch ran validation (check_val_every_n_epoch)

    def _path(self, trainer: pl.Trainer) -> Path:
        return Path(trainer.default_root_dir) / self.filename

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self._path(trainer)
        if trainer.is_global_zero and path.exists():
            with path.open(newline="") as f:
                old = [r for r in csv.DictReader(f) if int(r["epoch"]) <= trainer.current_epoch]
            self.rows = [{k: float(v) for k, v in r.items()} for r in old]
            self._write(path)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._mark = time.perf_counter()
        self._train_time = None
        self._images = 0
        self._wait = self._busy = 0.0
        self._validated = False
        optimizers = trainer.optimizers
        self._lr = optimizers[0].param_groups[0]["lr"] if optimizers else math.nan

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start = time.perf_counter()
        self._wait += self._batch_start - self._mark

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += len(batch[1])
        self._mark = time.perf_counter()
        self._busy += self._mark - self._batch_start

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._train_time is None:
            self._train_time = time.perf_counter() - self._start

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch_time = time.perf_counter() - self._start
        train_time = self._train_time or epoch_time
        images_per_s = self._images * trainer.world_size / max(train_time, 1e-9)
        # Under DDP: the mean over the processes (each logs its own part of the epoch).
        pl_module.log("epoch_time_s", epoch_time, on_epoch=True, sync_dist=True)
        pl_module.log("images_per_s", images_per_s, on_epoch=True, sync_dist=True)
        wait_share = self._wait / max(self._wait + self._busy, 1e-9)
        pl_module.log("data_wait_share", wait_share, on_epoch=True, sync_dist=True)
        m = trainer.callback_metrics
        # An epoch without validation (check_val_every_n_epoch) has no validation figures: the
        # ones Lightning still holds are an earlier epoch's.
        val = {
            k: _scalar(m.get(k)) if self._validated else math.nan for k in ("val_loss", "val_acc")
        }
        row = {
            "epoch": trainer.current_epoch + 1,
            "step": trainer.global_step,
            "train_loss": _scalar(m.get("train_loss")),
            "train_acc": _scalar(m.get("train_acc")),
            **val,
            "lr": self._lr,
            "epoch_time_s": round(epoch_time, 3),
            "images_per_s": round(images_per_s, 2),
            "data_wait_share": round(wait_share, 4),
        }
        self.rows.append(row)
        if not trainer.is_global_zero:
            return
        validation = (
            f"val_loss {row['val_loss']:.4f} acc {row['val_acc']:.3f}"
            if self._validated
            else "not validated this epoch"
        )
        log.info(
            "epoch %d: train_loss %.4f acc %.3f | %s | %.1fs, %.1f img/s, data wait %.1f%%",
            row["epoch"], row["train_loss"], row["train_acc"], validation,
            epoch_time, images_per_s, 100 * wait_share,
        )  # fmt: skip
        self._write(self._path(trainer))

    def _write(self, path: Path) -> None:
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRICS_COLUMNS)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: int(row[k]) if k in ("epoch", "step") else row[k] for k in row})


class EpochSeed(Callback):
    """Reseed the global RNGs with `seed + epoch` before each epoch.

    What a step draws from them (dropout masks) then depends on the epoch alone, so a run resumed
    from `last.ckpt` draws as one that never stopped. (The training order and the augmentation
    are seeded by the data module itself, per epoch and image.) Lightning restores the loop's
    epoch only after `on_fit_start`, so the first epoch is seeded there from the epoch this
    callback saved in the checkpoint; later ones in `on_train_epoch_start`.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._seeded_epoch: int | None = None
        self._next_epoch = 0  # the epoch a checkpoint taken now would resume at

    def _reseed(self, epoch: int) -> None:
        pl.seed_everything(self.seed + epoch, workers=True, verbose=False)
        self._seeded_epoch = epoch

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reseed(self._next_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._seeded_epoch != trainer.current_epoch:
            self._reseed(trainer.current_epoch)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._next_epoch = trainer.current_epoch + 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._next_epoch = trainer.current_epoch + 1

    def state_dict(self) -> dict[str, Any]:
        return {"next_epoch": self._next_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._next_epoch = int(state_dict.get("next_epoch", 0))
