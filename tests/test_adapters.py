"""leafnet's uses of other libraries' private APIs (leafnet/adapters/) still hold: each test fails
when the library renames or reshapes what its adapter relies on."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import tensorboard.compat
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from leafnet.adapters import lightning as lightning_adapter
from leafnet.adapters.pytorch import cpu_has_bf16, is_hooked
from leafnet.adapters.tensorboard import add_jpeg, without_tensorflow


def test_torch_still_answers_bf16_and_hook_questions() -> None:
    assert isinstance(cpu_has_bf16(), bool)
    conv = nn.Conv2d(1, 1, 1)
    assert not is_hooked(conv)
    every = nn.modules.module
    for register in (
        conv.register_forward_hook, conv.register_forward_pre_hook,
        conv.register_full_backward_hook, conv.register_full_backward_pre_hook,
        every.register_module_forward_hook, every.register_module_forward_pre_hook,
        every.register_module_full_backward_hook, every.register_module_full_backward_pre_hook,
    ):  # fmt: skip
        handle = register(lambda *args: None)
        assert is_hooked(conv), register
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


def test_a_photo_is_logged_as_jpeg_and_tensorboard_reads_it(tmp_path: Path) -> None:
    without_tensorflow()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.io import decode_image

    # A smooth photo-like picture: JPEG keeps it within a few levels.
    ramp = torch.linspace(0, 255, 96)
    image = torch.stack(
        [ramp.expand(64, 96), ramp.flip(0).expand(64, 96), torch.full((64, 96), 90.0)]
    )
    image = image.round().to(torch.uint8)
    writer = SummaryWriter(tmp_path)
    add_jpeg(writer, "val/predictions", image, step=7)
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    (event,) = acc.Images("val/predictions")
    assert (event.step, event.width, event.height) == (7, 96, 64)
    assert event.encoded_image_string[:3] == b"\xff\xd8\xff"  # a JPEG, not a PNG
    decoded = decode_image(
        torch.frombuffer(bytearray(event.encoded_image_string), dtype=torch.uint8)
    )
    assert decoded.shape == image.shape
    assert (decoded.int() - image.int()).abs().float().mean() < 2


class _SlowIO(TorchCheckpointIO):
    """Writes after a pause, or fails, as a slow or full disk would."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        time.sleep(0.3)
        if self.fail:
            raise OSError("No space left on device")
        super().save_checkpoint(checkpoint, path, storage_options)


def test_queued_checkpoint_io_writes_a_snapshot_in_the_background_then_removes(
    tmp_path: Path,
) -> None:
    io = lightning_adapter.QueuedCheckpointIO(_SlowIO())
    old, new = tmp_path / "old.ckpt", tmp_path / "new.ckpt"
    old.write_bytes(b"superseded")
    weights = torch.zeros(3)
    io.save_checkpoint({"w": weights}, new)
    weights += 1  # training goes on: the checkpoint keeps the weights it was asked for
    io.remove_checkpoint(old)
    assert old.exists() and not new.exists()  # both queued, neither done yet
    assert torch.equal(io.load_checkpoint(new)["w"], torch.zeros(3))  # a read waits
    assert not old.exists()
    io.save_checkpoint({"w": weights}, new)
    io.wait()
    assert torch.equal(torch.load(new, weights_only=True)["w"], torch.ones(3))


def test_queued_checkpoint_io_raises_a_failed_write_when_waited_for(tmp_path: Path) -> None:
    io = lightning_adapter.QueuedCheckpointIO(_SlowIO(fail=True))
    io.save_checkpoint({"w": torch.zeros(3)}, tmp_path / "x.ckpt")
    with pytest.raises(OSError, match="No space left"):
        io.wait()
