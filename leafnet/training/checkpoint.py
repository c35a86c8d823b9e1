"""Atomic checkpoints: `last.ckpt` after every epoch and `best.ckpt`, each written whole or not
at all and in the background, never with weights that are not finite, and restored only from
inside the run's own checkpoints folder; Ctrl-C saves where the run stopped."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from leafnet.adapters.lightning import CheckpointSteps, QueuedCheckpointIO
from leafnet.files import atomic_path

log = logging.getLogger(__name__)


class AtomicWrites(CheckpointIO):
    """Another CheckpointIO's writes made atomic: each goes to a temporary file, is synced to disk
    and renamed over the old one, so a killed process never leaves a truncated file behind."""

    def __init__(self, inner: CheckpointIO) -> None:
        self.inner = inner

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        with atomic_path(path) as tmp:
            self.inner.save_checkpoint(checkpoint, tmp, storage_options)

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.inner.load_checkpoint(path, *args, **kwargs)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()


class AtomicCheckpoint(CheckpointSteps):
    """ModelCheckpoint that writes `checkpoints/best.ckpt` and `last.ckpt` atomically, in the
    background.

    Writes go through `AtomicWrites` in one background thread (`QueuedCheckpointIO`): training
    goes on while a checkpoint is written and synced, from a copy of the weights taken when it
    was asked for, and a file it supersedes is removed only after it is on disk. A diverged model
    (NaN weights) is not saved: the best checkpoint stays the best finite one. Ctrl-C (or
    SIGTERM) saves the newest weights in `last.ckpt` before the run ends; when that happens
    inside an epoch, the previous `last.ckpt` (the end of the last whole epoch) is kept as
    `epoch_end.ckpt`, which `resume=` continues from: Lightning cannot restart its data loaders
    mid-epoch exactly, so that epoch is redone. Inside the first epoch there is no such end yet,
    and nothing is saved: the run starts again.
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

    @staticmethod
    def best_to_test(trainer: pl.Trainer, run_dir: Path) -> Path | None:
        """`best.ckpt` as the first process sees it once fit has ended (its writer thread has
        finished by then), or None; every process of a run gets the same answer. Another
        process's view of the folder may lag behind, and one that skipped the test alone would
        leave the others waiting in the test's collectives."""
        best = Path(run_dir) / "checkpoints" / "best.ckpt"
        return best if trainer.strategy.broadcast(best.is_file()) else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._boundary_step = trainer.global_step  # a fit starts or resumes at an epoch's end

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        io = trainer.strategy.checkpoint_io
        if not isinstance(io, QueuedCheckpointIO):  # setup runs again for the test
            trainer.strategy.checkpoint_io = QueuedCheckpointIO(AtomicWrites(io))
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
        # Each tensor's smallest and largest value, finite unless a NaN or an infinity is there:
        # one pass without temporaries, where isfinite(w).all() made three (a tenth of the time).
        extremes = [
            v for w in trainer.lightning_module.parameters() if w.numel() for v in w.aminmax()
        ]
        if extremes and not bool(torch.isfinite(torch.stack(extremes)).all()):  # one host sync
            log.warning("weights are not finite: %s not written", Path(filepath).name)
            return
        super().write(trainer, filepath)
        last = f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        if Path(filepath).name == last and not self._interrupting:
            self._boundary_step = trainer.global_step
            # Queued behind the write: the boundary goes only once the new last.ckpt is on disk.
            boundary = Path(filepath).parent / self.EPOCH_END
            if boundary.exists():
                trainer.strategy.remove_checkpoint(boundary)

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
        interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        if interrupted and fitting and self.dirpath is not None:
            io = trainer.strategy.checkpoint_io
            if isinstance(io, QueuedCheckpointIO):  # last.ckpt is moved below: no write pending
                io.wait()
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
