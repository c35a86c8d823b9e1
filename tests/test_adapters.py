"""leafnet's uses of other libraries' private APIs (leafnet/adapters/) still hold: each test fails
when the library renames or reshapes what its adapter relies on."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning.pytorch as pl
import tensorboard.compat
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from leafnet.adapters import lightning as lightning_adapter
from leafnet.adapters.pytorch import cpu_has_bf16, is_hooked
from leafnet.adapters.tensorboard import without_tensorflow


def test_torch_still_answers_bf16_and_hook_questions() -> None:
    assert isinstance(cpu_has_bf16(), bool)
    conv = nn.Conv2d(1, 1, 1)
    assert not is_hooked(conv)
    for register in (conv.register_forward_hook, conv.register_forward_pre_hook):
        handle = register(lambda *args: None)
        assert is_hooked(conv)
        handle.remove()
        assert not is_hooked(conv)


def test_the_lr_finders_schedules_are_still_schedules() -> None:
    for schedule in lightning_adapter.FINDER_SCHEDULES:
        assert issubclass(schedule, LRScheduler)
    assert "_ExponentialLR" in inspect.getsource(pl.tuner.lr_finder._LRFinder)


def test_model_checkpoints_private_steps_keep_their_shape() -> None:
    wanted = {
        "_save_checkpoint": ["self", "trainer", "filepath"],
        "_should_skip_saving_checkpoint": ["self", "trainer"],
        "_save_last_checkpoint": ["self", "trainer", "monitor_candidates"],
        "_monitor_candidates": ["self", "trainer"],
        "_should_save_on_train_epoch_end": ["self", "trainer"],
    }
    for name, params in wanted.items():
        assert list(inspect.signature(getattr(ModelCheckpoint, name)).parameters) == params, name


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.log("loss", self.layer(batch[0]).pow(2).mean())
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_every_checkpoint_file_goes_through_write(tmp_path: Path) -> None:
    written: list[str] = []

    class Counting(lightning_adapter.CheckpointSteps):
        def write(self, trainer: pl.Trainer, filepath: str) -> None:
            written.append(Path(filepath).name)
            super().write(trainer, filepath)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)))
    trainer = pl.Trainer(
        max_epochs=2, callbacks=[Counting(dirpath=tmp_path, save_last=True)], logger=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(_Tiny(), data)
    assert {p.name for p in tmp_path.iterdir()} <= set(written)  # every file kept was written here
    assert written.count("last.ckpt") == 2  # once per epoch


def test_tensorboard_still_has_its_tensorflow_switch() -> None:
    without_tensorflow()
    assert '"tensorboard.compat.notf"' in inspect.getsource(tensorboard.compat)
