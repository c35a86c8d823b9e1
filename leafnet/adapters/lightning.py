"""Lightning internals leafnet builds on: ModelCheckpoint's write step and last.ckpt, checkpoint
writes in the background in order, and the learning-rate finder's schedules."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO
from lightning.pytorch.tuner.lr_finder import _ExponentialLR, _LinearLR

# The schedules `Tuner.lr_find` installs while it sweeps the learning rate.
FINDER_SCHEDULES: tuple[type, ...] = (_ExponentialLR, _LinearLR)


class CheckpointSteps(ModelCheckpoint):
    """ModelCheckpoint with the private steps leafnet needs under public names:
    - `write(trainer, filepath)`: every checkpoint file Lightning writes goes through it (override
      it to wrap the write; call `super().write` to write);
    - `save_last_now(trainer)`: write last.ckpt now, as Lightning does after a top-k save;
    - `saves_on_train_epoch_end(trainer)`: whether checkpoints are taken at the training epoch's
      end (else at validation's end)."""

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        self.write(trainer, filepath)

    def write(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)

    def save_last_now(self, trainer: pl.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def saves_on_train_epoch_end(self, trainer: pl.Trainer) -> bool:
        return bool(self._should_save_on_train_epoch_end(trainer))


class QueuedCheckpointIO(AsyncCheckpointIO):
    """Lightning's AsyncCheckpointIO (each write in one background thread, from a copy of the
    tensors taken at the call) with removals queued behind the writes, so a file is removed only
    once what was written before it is on disk, and reads waiting for the queue.

    `wait()` returns when every queued write and removal is done, raising the first error one
    met (a full disk); the next write starts the thread again."""

    def remove_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        self._ensure_setup()
        assert self._executor is not None and self.checkpoint_io is not None
        inner = self.checkpoint_io

        def remove() -> None:
            try:
                inner.remove_checkpoint(*args, **kwargs)
            except BaseException as ex:  # raised at the next call, as the writes' errors are
                self._error = ex

        self._executor.submit(remove)
        if self._error:
            raise self._error

    def load_checkpoint(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.wait()  # e.g. the learning-rate finder restores the checkpoint it has just written
        return super().load_checkpoint(*args, **kwargs)

    def wait(self) -> None:
        self.teardown()
