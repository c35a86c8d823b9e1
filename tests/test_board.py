"""The TensorBoard validation grid's thumbnails: shrunk, as float, the picture kept."""

from __future__ import annotations

import torch

from leafnet.training.board import GRID_PX, thumbnails


def halves(dtype: torch.dtype, side: int) -> torch.Tensor:
    """Two images, each black on the left half and white (255) on the right."""
    x = torch.zeros((2, 3, side, side), dtype=dtype)
    x[..., side // 2 :] = 255
    return x.contiguous(memory_format=torch.channels_last)


def test_a_loader_batch_is_shrunk_to_the_grid_size_and_keeps_its_picture() -> None:
    for dtype in (torch.uint8, torch.float32):
        small = thumbnails(halves(dtype, 640))
        assert small.shape == (2, 3, GRID_PX, GRID_PX) and small.dtype == torch.float32
        # Away from the edge between them, the halves stay black and white.
        assert small[..., : GRID_PX // 2 - 2].max() == 0, dtype
        assert small[..., GRID_PX // 2 + 2 :].min() == 255, dtype


def test_images_no_larger_than_the_grid_are_left_as_they_are() -> None:
    x = halves(torch.uint8, GRID_PX)
    assert torch.equal(thumbnails(x), x.float())
