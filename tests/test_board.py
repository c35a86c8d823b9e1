"""The TensorBoard validation grid: its thumbnails (shrunk, as float, the picture kept) and its
layout (each image under its true and predicted class)."""

from __future__ import annotations

import pytest
import torch
from PIL import ImageFont

from leafnet.training import board
from leafnet.training.board import GRID_PX, LINE_PX, PAD_PX, prediction_grid, thumbnails


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


def test_the_grid_puts_each_image_under_its_true_and_predicted_class_in_rows_of_four() -> None:
    side = 96
    # Five flat images, each its own colour: stretched for display, (200, 100, 0) becomes
    # (255, 127, 0) and (10, 20, 30) becomes (0, 127, 255).
    colours = [(200, 100, 0), (10, 20, 30), (0, 50, 100), (90, 0, 45), (0, 30, 60)]
    x = torch.tensor(colours, dtype=torch.float32)[:, :, None, None].expand(-1, -1, side, side)
    true = ["a", "b", "c", "a", "b"]
    pred = ["a", "c", "c", "b", "b"]  # the second and the fourth are wrong
    grid = prediction_grid(x, true, pred)
    tile_w, tile_h = side + PAD_PX, side + 2 * LINE_PX + PAD_PX
    assert grid.dtype == torch.uint8
    assert grid.shape == (3, 2 * tile_h + PAD_PX, 4 * tile_w + PAD_PX)
    for k, (r, g, b) in enumerate(colours):
        left = PAD_PX + (k % 4) * tile_w
        top = PAD_PX + (k // 4) * tile_h
        photo = grid[:, top + 2 * LINE_PX : top + 2 * LINE_PX + side, left : left + side]
        lo, hi = min(r, g, b), max(r, g, b)
        want = [int((v - lo) / (hi - lo) * 255) for v in (r, g, b)]
        assert photo.flatten(1).unique(dim=1).tolist() == [[v] for v in want], k
        red_, green_, _ = grid[:, top : top + 2 * LINE_PX, left : left + side].int()
        green, red = bool((green_ > red_ + 60).any()), bool((red_ > green_ + 60).any())
        assert (green, red) == ((True, False) if true[k] == pred[k] else (False, True)), k
    # Where a sixth tile would go, the grid is white.
    assert (grid[:, PAD_PX + tile_h :, PAD_PX + tile_w :] == 255).all()


def test_class_names_in_any_script_are_drawn_with_either_default_font(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PIL's FreeType font draws any name; its bitmap font (PIL built without FreeType) draws
    Latin-1 only, and the grid shows '?' for the rest rather than ending the run."""
    names = (
        ["Tomate_Feuille-Mineuse", "番茄_叶", "टमाटर"],
        ["番茄_叶", "Tomate_Feuille-Mineuse", "x"],
    )
    x = torch.rand(3, 3, 60, 60)
    assert prediction_grid(x, *names).shape[0] == 3
    monkeypatch.setattr(board, "_font", ImageFont.load_default_imagefont)
    assert board._drawable("番茄_叶 é") == "??_? é"
    assert prediction_grid(x, *names).shape[0] == 3
