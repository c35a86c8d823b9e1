"""TensorBoard internals leafnet builds on: the switch to its TensorFlow stub, and the event
writer's summaries, to log a photo as JPEG."""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:  # imported only after `without_tensorflow` has run
    from torch.utils.tensorboard import SummaryWriter


def without_tensorflow() -> None:
    """Make TensorBoard's event writer use its own stub, not TensorFlow: with TensorFlow installed
    (the `bench` extra) it would import it, 10 s and 0.5 GB per run for nothing. An importable
    `tensorboard.compat.notf` is TensorBoard's switch, which it offers no public way to set."""
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def add_jpeg(writer: SummaryWriter, tag: str, image: Tensor, step: int, quality: int = 90) -> None:
    """`writer.add_image` for a photo (uint8 [3, H, W]), stored as JPEG. `add_image` resamples the
    image and stores a PNG, about 4x the bytes for photos, and the stub checksums every byte of
    an event in pure Python, holding the GIL (docs/performance.md). TensorBoard shows either: it
    tells the format from the bytes."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torchvision.io import encode_jpeg

    picture = Summary.Image(
        height=image.shape[1],
        width=image.shape[2],
        colorspace=image.shape[0],
        encoded_image_string=encode_jpeg(image.contiguous(), quality=quality).numpy().tobytes(),
    )
    summary = Summary(value=[Summary.Value(tag=tag, image=picture)])
    writer._get_file_writer().add_summary(summary, step)
