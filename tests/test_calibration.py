"""`python -m leafnet.lab.calibration`: a finished run against the colour-histogram baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_cli import run_error

pytest.importorskip("sklearn")

from leafnet.lab.calibration import main


def test_the_table_row_of_a_run_whose_classes_differ_by_colour(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tiny set's classes are red, green and blue leaves: colour alone separates them, so
    the baseline scores 1.0 on the test images, and the row carries the run's own facts."""
    out = tmp_path / "table.md"
    main([f"runs={tiny_run.parent}", f"out={out}"])  # a folder holding the run
    printed = capsys.readouterr().out
    summary = json.loads((tiny_run / "summary.json").read_text())
    row = next(line for line in printed.splitlines() if line.startswith(f"| {summary['seed']} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{summary['test_acc']:.3f}"
    assert cells[5] == "1.000"  # the colour baseline's test accuracy
    assert out.read_text() == printed


def test_a_folder_without_runs_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "no runs under" in run_error(capsys, [f"runs={tmp_path}"], main)
