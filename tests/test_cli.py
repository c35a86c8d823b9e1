"""The `leafnet` console script: every command's --help, fast and without a traceback."""

from __future__ import annotations

import contextlib
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from leafnet.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_its_usage(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    main([name, "--help"])
    out = capsys.readouterr().out
    assert out.startswith(f"usage: leafnet {name} [key=value ...]")


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {"train"}))  # train: Hydra reads argv
def test_every_command_module_has_the_same_help(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m leafnet.<command> --help` says what `leafnet <command> --help` says."""
    module = importlib.import_module(COMMANDS[name][0])
    with contextlib.suppress(SystemExit):
        module.main(["--help"])
    out = capsys.readouterr().out
    first = out.splitlines()[0].replace("_", "-").replace("leafnet.", "leafnet ")
    assert first.startswith("usage: ") and f"leafnet {name}" in first, first


def test_train_help_lists_keys_with_their_comments_and_the_groups(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["train", "--help"])
    out = capsys.readouterr().out
    assert "lr: 1.0e-4" in out and "class_weight: null      # Keras' fit(class_weight=...)" in out
    assert "image_size: 640            # square side fed to the network" in out
    assert "model           efficientnet_lite0, leafnet, leafnet_gap, torchvision" in out


def test_help_imports_no_torch() -> None:
    """Help reads YAML only: importing torch and Lightning alone takes seconds on a small host."""
    code = (
        "import sys\n"
        "from leafnet.cli import main\n"
        "main(['summary', '--help'])\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "usage: leafnet summary" in result.stdout
