"""Lightning internals leafnet builds on: ModelCheckpoint's write step and last.ckpt, and the
learning-rate finder's schedules."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
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
