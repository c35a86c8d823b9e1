"""Keras 3's `model.summary()` table for LeafNet, character for character.

`python -m leafnet.summary [overrides]` takes the training overrides (`model.dense_units=16
data.image_size=320`) and prints what Keras prints for the same Sequential model. Keras renders
the table with `rich` at a width of min(88, terminal columns - 4); the column arithmetic of
`rich.table` (fixed column widths, reduced evenly when they overflow) is reproduced here so the
text matches without depending on rich.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import Any

from torch import nn

from leafnet.errors import cli_errors
from leafnet.model import LayerInfo

SEED_NUM_CLASSES = 3  # the seed's three diseases, used when model.num_classes is null
KERAS_LINE_LENGTH = 88  # Keras' default width for a sequential model's summary
POSITIONS = (0.45, 0.80, 1.0)  # Keras' column end positions, as fractions of the line
HEADER = ("Layer (type)", "Output Shape", "Param #")
BYTES_PER_PARAM = 4  # float32


def readable_memory_size(size: float) -> str:
    """Keras' byte formatting: 1024-based units, two decimals (`5.51 MB`, `0.00 B`)."""
    units = ("B", "KB", "MB", "GB", "TB", "PB")
    for unit in units:
        if size / 1024 < 1:
            return f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} {units[-1]}"


def _ratio_reduce(total: int, values: list[int]) -> list[int]:
    """rich's `ratio_reduce` with equal ratios: take `total` off `values`, spread evenly."""
    remaining, ratio_left, out = total, len(values), []
    for value in values:
        # Python's round() (banker's rounding) is what rich uses, so keep it.
        cut = min(value, round(remaining / ratio_left))
        out.append(value - cut)
        remaining -= cut
        ratio_left -= 1
    return out


def _ratio_distribute(total: int, ratios: list[int]) -> list[int]:
    """rich's `ratio_distribute`: share `total` in proportion to `ratios`, rounding up."""
    remaining, ratio_left, out = total, sum(ratios), []
    for ratio in ratios:
        share = -(-ratio * remaining // ratio_left) if ratio_left > 0 else remaining
        out.append(share)
        ratio_left -= ratio
        remaining -= share
    return out


def column_widths(line_length: int) -> list[int]:
    """Cell widths (padding included, borders excluded) of rich's table for this line length."""
    requested, current = [], 0
    for pos in POSITIONS:
        width = int(pos * line_length) - current
        requested.append(width)
        current += width
    widths = [w + 2 for w in requested]  # rich adds one space of padding either side
    inner = line_length - (len(widths) + 1)  # minus the vertical borders
    if sum(widths) > inner:
        widths = _ratio_reduce(sum(widths) - inner, widths)
    elif sum(widths) < inner:
        widths = [
            w + pad
            for w, pad in zip(widths, _ratio_distribute(inner - sum(widths), widths), strict=True)
        ]
    return widths


def default_line_length() -> int:
    """Keras' rule: 88 columns, or the terminal's width minus 4 when that is narrower."""
    return min(KERAS_LINE_LENGTH, shutil.get_terminal_size().columns - 4)


def _row(cells: Sequence[str], widths: Sequence[int], bar: str) -> str:
    parts = []
    for i, (text, width) in enumerate(zip(cells, widths, strict=True)):
        # Param # is right-aligned, the other columns left-aligned, as in Keras.
        body = text.rjust(width - 2) if i == 2 else text.ljust(width - 2)
        parts.append(f" {body} ")
    return bar + bar.join(parts) + bar


def _rule(widths: Sequence[int], left: str, mid: str, right: str, fill: str) -> str:
    return left + mid.join(fill * w for w in widths) + right


def _shape(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def format_summary(
    model: nn.Module, line_length: int | None = None, name: str = "sequential"
) -> str:
    """The text Keras 3 prints for `model.summary()` of the equivalent Sequential model.

    `line_length` defaults to Keras' rule (see `default_line_length`). rich would wrap a cell that
    does not fit; instead the table is widened just enough, so names are never broken.
    """
    rows: list[LayerInfo] = model.layer_table()
    cells = [(f"{r.name} ({r.kind})", _shape(r.output_shape), f"{r.params:,}") for r in rows]
    line_length = line_length or default_line_length()
    widths = column_widths(line_length)
    while any(len(c) > w - 2 for row in [*cells, HEADER] for c, w in zip(row, widths, strict=True)):
        line_length += 1
        widths = column_widths(line_length)

    lines = [f'Model: "{name}"', _rule(widths, "┏", "┳", "┓", "━"), _row(HEADER, widths, "┃")]
    lines.append(_rule(widths, "┡", "╇", "┩", "━"))
    for i, row in enumerate(cells):
        if i:
            lines.append(_rule(widths, "├", "┼", "┤", "─"))
        lines.append(_row(row, widths, "│"))
    lines.append(_rule(widths, "└", "┴", "┘", "─"))

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    for label, count in (
        ("Total", trainable + frozen),
        ("Trainable", trainable),
        ("Non-trainable", frozen),
    ):
        size = readable_memory_size(count * BYTES_PER_PARAM)
        lines.append(f" {label} params: {count:,} ({size})")
    return "\n".join(lines) + "\n"


def model_from_config(cfg: Any) -> nn.Module:
    """The network a composed training config describes (num_classes null -> the seed's 3)."""
    from leafnet.config import to_primitive
    from leafnet.schema import check_train_config
    from leafnet.zoo import build_model

    model = to_primitive(cfg.model)
    if model.get("num_classes") is None:
        model["num_classes"] = SEED_NUM_CLASSES
    image_size = cfg.data.image_size
    check_train_config({"model": model, "data": {"image_size": image_size}})  # the overrides'
    return build_model({**model, "image_size": image_size})


@cli_errors
def main(argv: Sequence[str] | None = None) -> None:
    """`python -m leafnet.summary [hydra overrides]`: print the Keras summary table."""
    from leafnet.config import compose, training_args  # the command's, not the formatter's

    args = training_args(argv, "summary", "a model's Keras-style table: model=...")
    if args is not None:
        print(format_summary(model_from_config(compose("train", args))), end="")


if __name__ == "__main__":
    main()
