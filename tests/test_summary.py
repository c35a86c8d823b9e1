"""The Keras model.summary() table: the seed's text line by line, and the command."""

from __future__ import annotations

import pytest

from leafnet.model import LeafNet
from leafnet.summary import column_widths, format_summary, main, readable_memory_size

# What Keras 3 prints for the seed's model in an 80-column terminal (or captured output),
# where its table is min(88, 80 - 4) = 76 characters wide.
SEED_TABLE_76 = """\
Model: "sequential"
┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━┓
┃ Layer (type)                    ┃ Output Shape           ┃       Param # ┃
┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━┩
│ conv2d (Conv2D)                 │ (None, 640, 640, 32)   │           896 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ max_pooling2d (MaxPooling2D)    │ (None, 213, 213, 32)   │             0 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ conv2d_1 (Conv2D)               │ (None, 213, 213, 16)   │         4,624 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ max_pooling2d_1 (MaxPooling2D)  │ (None, 106, 106, 16)   │             0 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ flatten (Flatten)               │ (None, 179776)         │             0 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ dense (Dense)                   │ (None, 8)              │     1,438,216 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ dense_1 (Dense)                 │ (None, 3)              │            27 │
└─────────────────────────────────┴────────────────────────┴───────────────┘
 Total params: 1,443,763 (5.51 MB)
 Trainable params: 1,443,763 (5.51 MB)
 Non-trainable params: 0 (0.00 B)
"""


def _compare_lines(got: str, want: str) -> None:
    got_lines, want_lines = got.splitlines(), want.splitlines()
    for i, (g, w) in enumerate(zip(got_lines, want_lines, strict=False)):  # lengths last
        assert g == w, f"line {i + 1}:\n got: {g!r}\nwant: {w!r}"
    assert len(got_lines) == len(want_lines)


def test_seed_summary_line_by_line() -> None:
    _compare_lines(format_summary(LeafNet(), line_length=76), SEED_TABLE_76)


def test_default_width_follows_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    _compare_lines(format_summary(LeafNet()), SEED_TABLE_76)
    monkeypatch.setenv("COLUMNS", "200")  # wide terminal: Keras caps the table at 88
    assert {len(line) for line in format_summary(LeafNet()).splitlines()[1:-3]} == {88}


@pytest.mark.parametrize(("line_length", "widths"), [(76, [33, 24, 15]), (88, [38, 29, 17])])
def test_column_widths_are_richs(line_length: int, widths: list[int]) -> None:
    # cell widths, one space of padding either side included; 4 borders make up the rest
    assert column_widths(line_length) == widths
    assert sum(column_widths(line_length)) + 4 == line_length


def test_narrow_width_widens_instead_of_wrapping() -> None:
    lines = format_summary(LeafNet(), line_length=60).splitlines()
    assert any("max_pooling2d_1 (MaxPooling2D)" in line for line in lines)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0.00 B"),
        (1023, "1023.00 B"),
        (1024, "1.00 KB"),
        (1_443_763 * 4, "5.51 MB"),
        (3 * 1024**3, "3.00 GB"),
    ],
)
def test_readable_memory_size(size: int, text: str) -> None:
    assert readable_memory_size(size) == text


def test_frozen_params_are_non_trainable() -> None:
    model = LeafNet(image_size=32)
    model.conv2d.requires_grad_(False)
    tail = format_summary(model, line_length=76).splitlines()[-3:]
    total = sum(p.numel() for p in model.parameters())
    assert tail == [
        f" Total params: {total:,} ({readable_memory_size(total * 4)})",
        f" Trainable params: {total - 896:,} ({readable_memory_size((total - 896) * 4)})",
        " Non-trainable params: 896 (3.50 KB)",
    ]


def test_command_with_overrides(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    main(["model.dense_units=16", "data.image_size=320"])
    out = capsys.readouterr().out.splitlines()
    assert "│ flatten (Flatten)               │ (None, 44944)          │             0 │" in out
    assert "│ dense (Dense)                   │ (None, 16)             │       719,120 │" in out
    assert out[-3] == " Total params: 724,691 (2.76 MB)"


def test_command_defaults_print_the_seed_table(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    main([])
    _compare_lines(capsys.readouterr().out, SEED_TABLE_76)


def test_command_bad_override_is_one_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["model.dense_units=0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dense_units" in err
