"""Training-time side effects: atomic checkpoints, divergence stop, per-epoch metrics file,
reproducible shuffles across resume, and TensorBoard images.

Every file goes under the run directory, which is `Trainer.default_root_dir`.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from leafnet.adapters.lightning import CheckpointSteps
from leafnet.figures import explain_figures, pyplot
from leafnet.files import atomic_path

if TYPE_CHECKING:
    from leafnet.module import LeafClassifier

log = logging.getLogger(__name__)

METRICS_COLUMNS = (
    "epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s",
    "images_per_s", "data_wait_share",
)  # fmt: skip


def _tensorboards(trainer: pl.Trainer) -> list[Any]:
    """The SummaryWriters of the run's TensorBoard loggers (none when logger=none or csv)."""
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def _scalar(value: Any) -> float:
    return float(value) if value is not None else math.nan


class AtomicCheckpoint(CheckpointSteps):
    """ModelCheckpoint that writes `checkpoints/best.ckpt` and `last.ckpt` atomically.

    A checkpoint is written to a temporary file and renamed over the old one, so a killed process
    never leaves a truncated `last.ckpt` behind. A diverged model (NaN weights) is not saved: the
    best checkpoint stays the best finite one. Ctrl-C (or SIGTERM) saves the newest weights in
    `last.ckpt` before the run ends; when that happens inside an epoch, the previous `last.ckpt`
    (the end of the last whole epoch) is kept as `epoch_end.ckpt`, which `resume=` continues
    from: Lightning cannot restart its data loaders mid-epoch exactly, so that epoch is redone.
    Inside the first epoch there is no such end yet, and nothing is saved: the run starts again.
    """

    EPOCH_END = "epoch_end.ckpt"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._boundary_step: int | None = None  # global step at the last whole-epoch save
        self._interrupting = False

    @classmethod
    def resume_path(cls, run_dir: Path) -> Path:
        """The checkpoint `resume=` continues from: the end of the last whole epoch."""
        checkpoints = Path(run_dir) / "checkpoints"
        boundary = checkpoints / cls.EPOCH_END
        return boundary if boundary.is_file() else checkpoints / "last.ckpt"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._boundary_step = trainer.global_step  # a fit starts or resumes at an epoch's end

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        super().setup(trainer, pl_module, stage)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore only paths inside this run's checkpoint folder. A checkpoint may come from
        someone else, and the parent deletes the files its `best_k_models` and
        `last_model_path` name when it saves newer ones."""
        home = Path(self.dirpath).resolve() if self.dirpath else None

        def inside(path: Any) -> bool:
            return (
                home is not None
                and isinstance(path, str)
                and bool(path)
                and (Path(path).resolve().parent == home)
            )

        clean = dict(state_dict)
        clean.setdefault("dirpath", None)  # none saved: restore no paths at all
        clean.setdefault("best_model_score", None)
        best_k = state_dict.get("best_k_models")
        clean["best_k_models"] = (
            {k: v for k, v in best_k.items() if inside(k)} if isinstance(best_k, dict) else {}
        )
        for key in ("kth_best_model_path", "last_model_path", "best_model_path"):
            if not inside(state_dict.get(key)):
                clean[key] = ""
        super().load_state_dict(clean)

    def write(self, trainer: pl.Trainer, filepath: str) -> None:
        weights = [torch.isfinite(w).all() for w in trainer.lightning_module.parameters()]
        if not bool(torch.stack(weights).all()):  # one host sync per save
            log.warning("weights are not finite: %s not written", Path(filepath).name)
            return
        if trainer.is_global_zero:
            with atomic_path(filepath) as tmp:
                super().write(trainer, str(tmp))
        else:  # Lightning writes nothing on the other ranks; they join its barrier
            super().write(trainer, filepath)
        self._last_checkpoint_saved = filepath
        last = f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        if Path(filepath).name == last and not self._interrupting:
            self._boundary_step = trainer.global_step
            (Path(filepath).parent / self.EPOCH_END).unlink(missing_ok=True)

    # Lightning writes last.ckpt only in a step that also wrote a top-k checkpoint; resume needs
    # it after every epoch, so write it when the parent did not.
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.saves_on_train_epoch_end(trainer):
            self.save_last_now(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self.saves_on_train_epoch_end(trainer):
            self.save_last_now(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Only while fitting: an interrupted final test holds the best checkpoint's weights, and
        # last.ckpt must keep the newest trained ones.
        fitting = trainer.state.fn == TrainerFn.FITTING
        if isinstance(exception, KeyboardInterrupt) and fitting and self.dirpath is not None:
            path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
            boundary = path.parent / self.EPOCH_END
            mid_epoch = trainer.global_step != self._boundary_step
            if mid_epoch and not path.is_file() and not boundary.exists():
                # Inside the first epoch: no epoch's end to resume from exactly; nothing saved.
                log.warning("interrupted in the first epoch: no checkpoint to resume from")
                return
            if mid_epoch and trainer.is_global_zero and path.is_file() and not boundary.exists():
                os.replace(path, boundary)
            self._interrupting = True
            self.write(trainer, str(path))
            log.warning("interrupted: saved %s", path)


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
        pl_module.log("val_alive_units", float(alive), sync_dist=False)
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

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch_time = time.perf_counter() - self._start
        train_time = self._train_time or epoch_time
        images_per_s = self._images * trainer.world_size / max(train_time, 1e-9)
        pl_module.log("epoch_time_s", epoch_time, on_epoch=True, sync_dist=False)
        pl_module.log("images_per_s", images_per_s, on_epoch=True, sync_dist=False)
        wait_share = self._wait / max(self._wait + self._busy, 1e-9)
        pl_module.log("data_wait_share", wait_share, on_epoch=True, sync_dist=False)
        m = trainer.callback_metrics
        row = {
            "epoch": trainer.current_epoch + 1,
            "step": trainer.global_step,
            "train_loss": _scalar(m.get("train_loss")),
            "train_acc": _scalar(m.get("train_acc")),
            "val_loss": _scalar(m.get("val_loss")),
            "val_acc": _scalar(m.get("val_acc")),
            "lr": self._lr,
            "epoch_time_s": round(epoch_time, 3),
            "images_per_s": round(images_per_s, 2),
            "data_wait_share": round(wait_share, 4),
        }
        self.rows.append(row)
        log.info(
            "epoch %d: train_loss %.4f acc %.3f | val_loss %.4f acc %.3f | %.1fs, %.1f img/s, "
            "data wait %.1f%%",
            row["epoch"], row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"],
            epoch_time, images_per_s, 100 * wait_share,
        )  # fmt: skip
        if trainer.is_global_zero:
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


class ValidationImages(Callback):
    """A TensorBoard grid of validation images titled with true and predicted class."""

    def __init__(self, num_images: int = 16, every_n_epochs: int = 5) -> None:
        self.num_images = num_images
        self.every = max(1, int(every_n_epochs))
        self._batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _due(self, trainer: pl.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        return not trainer.sanity_checking and (
            epoch % self.every == 0 or last or trainer.should_stop
        )

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and _tensorboards(trainer) and self._due(trainer):
            n = self.num_images
            x, y = batch
            self._batch = (x[:n].float().cpu(), y[:n].cpu(), outputs["preds"][:n].cpu())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: LeafClassifier) -> None:
        if self._batch is None or not trainer.is_global_zero:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x, y, preds = self._batch
        self._batch = None
        names = pl_module.hparams.class_names
        cols = min(4, len(x))
        rows = math.ceil(len(x) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, img, true, pred in zip(axes.flat, x, y, preds, strict=False):
            # Stretch each image to [0, 1] for display, whatever the normalisation was.
            img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-8)
            ax.imshow(img.permute(1, 2, 0).numpy())
            ok = bool(true == pred)
            ax.set_title(
                f"true: {names[true]}\npred: {names[pred]}",
                fontsize=7,
                color="green" if ok else "red",
            )
        fig.suptitle(f"validation, epoch {trainer.current_epoch + 1}")
        fig.tight_layout()
        for writer in _tensorboards(trainer):
            writer.add_figure("val/predictions", fig, global_step=trainer.global_step)
        plt.close(fig)


class ConfusionMatrixImage(Callback):
    """The test confusion matrix as a TensorBoard image (torchmetrics draws it)."""

    def on_test_end(self, trainer: pl.Trainer, pl_module: LeafClassifier) -> None:
        if not _tensorboards(trainer) or not trainer.is_global_zero:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, _ = pl_module.test_confmat.plot(labels=pl_module.hparams.class_names)
        fig.set_size_inches(6, 6)
        if fig.get_layout_engine() is None:  # torchmetrics may have set one already
            fig.tight_layout()
        for writer in _tensorboards(trainer):
            writer.add_figure("test/confusion_matrix", fig, global_step=trainer.global_step)
        plt.close(fig)


class ExplainImages(Callback):
    """At the end of training, log the explain figures for the first validation image to
    TensorBoard (tags `explain/filters`, `explain/feature_maps_conv2d`, ..., `explain/gradcam`)."""

    def __init__(self) -> None:
        self._x: Tensor | None = None

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and not trainer.sanity_checking:
            x = batch[0] if isinstance(batch, list | tuple) else batch
            self._x = x[0].detach().cpu()  # already scaled by the module's batch transfer

    def on_train_end(self, trainer: pl.Trainer, pl_module: LeafClassifier) -> None:
        writers = _tensorboards(trainer)
        if self._x is None or not writers or not trainer.is_global_zero:
            return
        if importlib.util.find_spec("captum") is None:  # a base install trains without it
            log.warning("no explain figures in TensorBoard: pip install 'leafnet[explain]'")
            return
        net = pl_module.net
        device = next(net.parameters()).device
        # Cloned outside validation's inference mode, so Grad-CAM can backpropagate through it.
        x = self._x.clone().to(device)
        if not x.is_floating_point():
            from leafnet.data.images import to_float

            x = to_float(x, pl_module.prep)
        figures = explain_figures(net, x, list(pl_module.hparams.class_names))
        plt = pyplot()
        for name, fig in figures.items():
            for writer in writers:
                writer.add_figure(f"explain/{name}", fig, global_step=trainer.global_step)
            plt.close(fig)
