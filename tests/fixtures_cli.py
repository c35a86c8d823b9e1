"""Running a command's `main(argv)` in this process and checking how it fails."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def run_error(capsys: pytest.CaptureFixture[str], argv: list[str], command: Callable) -> str:
    """Run `command(argv)`, expected to fail as a user error: exit code 2 and one stderr line
    without a traceback. Returns that line."""
    with pytest.raises(SystemExit) as exc:
        command(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("leafnet: error: ")
    return err
