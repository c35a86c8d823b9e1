"""TensorBoard images of a run: a grid of validation images with true and predicted classes, the
test confusion matrix, and what the network learned (filters, feature maps, Grad-CAM)."""

from __future__ import annotations

import importlib.util
import logging
from functools import cache
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from leafnet.adapters.tensorboard import add_jpeg
from leafnet.figures import explain_figures, pyplot

if TYPE_CHECKING:
    from leafnet.module import LeafClassifier

log = logging.getLogger(__name__)

GRID_PX = 160  # the side each validation image is drawn at in the grid
LINE_PX = 12  # one line of a tile's label
PAD_PX = 4  # white between the tiles and around them
COLUMNS = 4  # tiles a row


def _tensorboards(trainer: pl.Trainer) -> list[Any]:
    """The SummaryWriters of the run's TensorBoard loggers (none when logger=none or csv)."""
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


class ValidationImages(Callback):
    """A TensorBoard grid of validation images, each under its true and predicted class (drawn with
    PIL at 160 px: matplotlib took a tenth of a 640 px epoch to draw it)."""

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
            x = thumbnails(x[:n])
            self._batch = (x.cpu(), y[:n].cpu(), outputs["preds"][:n].cpu())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: LeafClassifier) -> None:
        if self._batch is None or not trainer.is_global_zero:
            return
        x, y, preds = self._batch
        self._batch = None
        names = pl_module.hparams.class_names
        grid = prediction_grid(x, [names[t] for t in y], [names[p] for p in preds])
        for writer in _tensorboards(trainer):
            add_jpeg(writer, "val/predictions", grid, trainer.global_step)


def thumbnails(x: Tensor) -> Tensor:
    """A batch shrunk to GRID_PX for the grid, as float. uint8 batches (the loaders') are shrunk
    as uint8, antialiased: shrinking them as float meant converting the full-size images first,
    several times slower (docs/performance.md)."""
    if x.shape[-1] <= GRID_PX:
        return x.float()
    size = (GRID_PX, GRID_PX)
    if x.dtype == torch.uint8:
        return torch.nn.functional.interpolate(
            x, size=size, mode="bilinear", antialias=True
        ).float()
    return torch.nn.functional.interpolate(x.float(), size=size, mode="area")


def prediction_grid(x: Tensor, true: list[str], pred: list[str]) -> Tensor:
    """Images [N, 3, H, W] (each stretched to 0-255 for display, whatever the normalisation was)
    in rows of `COLUMNS`, each under two lines: its true class, and the predicted one in green or
    red. One canvas, each distinct label drawn once: tile by tile, most of the time went to
    drawing the same few labels again (docs/performance.md). uint8 [3, height, width]."""
    n, _, h, w = x.shape
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    span = (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-8)
    photos = ((x - lo) / span * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    columns, tile_h = min(COLUMNS, n), h + 2 * LINE_PX
    rows = -(-n // columns)
    size = (columns * (w + PAD_PX) + PAD_PX, rows * (tile_h + PAD_PX) + PAD_PX)
    canvas = Image.new("RGB", size, "white")
    chars = max(4, w // 6)  # the default font is about 6 px a character
    labels: dict[tuple[str, tuple[int, int, int]], Image.Image] = {}

    def label(text: str, colour: tuple[int, int, int]) -> Image.Image:
        if (text, colour) not in labels:
            line = Image.new("RGB", (w, LINE_PX), "white")
            ImageDraw.Draw(line).text((2, 1), _drawable(text[:chars]), fill=colour, font=_font())
            labels[text, colour] = line
        return labels[text, colour]

    for k in range(n):
        left = PAD_PX + (k % columns) * (w + PAD_PX)
        top = PAD_PX + (k // columns) * (tile_h + PAD_PX)
        right = true[k] == pred[k]
        canvas.paste(label(f"true: {true[k]}", (0, 0, 0)), (left, top))
        canvas.paste(
            label(f"pred: {pred[k]}", (0, 128, 0) if right else (200, 0, 0)), (left, top + LINE_PX)
        )
        canvas.paste(Image.fromarray(photos[k]), (left, top + 2 * LINE_PX))
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)


@cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font, loaded once (each ImageDraw loads its own otherwise)."""
    return ImageFont.load_default()


def _drawable(text: str) -> str:
    """`text` as the default font can draw it: any class name where PIL has FreeType; where it
    has not, its bitmap font draws Latin-1 only and raised on other letters, ending the run at
    validation's end, so those become '?'."""
    if isinstance(_font(), ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


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
