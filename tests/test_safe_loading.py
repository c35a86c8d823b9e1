"""Safe loading: a checkpoint whose pickle would run code is refused by every command, in one
line, and the code does not run; other non-checkpoints get one line too."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch
from fixtures_cli import run_error

from leafnet import evaluate, explain, export, predict


class _CreatesFile:
    """Unpickling this calls exec(), which creates `target`: what an attacker's pickle does."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.target)!r}, 'w').close()",))


@pytest.fixture
def malicious(tmp_path: Path) -> tuple[Path, Path]:
    """A run directory whose best.ckpt looks like a Lightning checkpoint but carries a payload."""
    marker = tmp_path / "pwned.txt"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "best.ckpt"
    torch.save(
        {"state_dict": {}, "hyper_parameters": {"class_names": ["a"], "x": _CreatesFile(marker)}},
        ckpt,
    )
    return ckpt, marker


def test_malicious_checkpoint_is_refused_by_every_command(
    malicious: tuple[Path, Path],
    tiny_train_images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ckpt, marker = malicious
    image = next(tiny_train_images.rglob("*.jpg"))
    commands = {
        "predict": (predict.main, [f"input={image}"]),
        "evaluate": (evaluate.main, [f"data.dir={tiny_train_images}", f"out={tmp_path / 'e'}"]),
        "export": (export.main, ["format=onnx", f"out={tmp_path / 'm.onnx'}"]),
        "explain": (explain.main, [f"input={image}", f"out={tmp_path / 'x'}"]),
    }
    for name, (command, args) in commands.items():
        for given in (ckpt, ckpt.parent.parent):  # the file, and its run directory
            err = run_error(capsys, [f"ckpt={given}", *args], command)
            assert "refused" in err and "could run code" in err, (name, err)
            assert not marker.exists(), f"{name} ran the payload"
    assert not (tmp_path / "m.onnx").exists()

    # The payload is real: an unsafe load (weights_only=False) does create the file.
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "not a readable checkpoint"),
        (b"just some text\n", "not a readable checkpoint"),
        (b"\xff\xd8\xff\xe0 a JPEG header", "not a checkpoint"),
    ],
)
def test_non_checkpoint_files_are_one_line(
    content: bytes, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(content)
    err = run_error(capsys, [f"ckpt={bad}", "format=onnx"], export.main)
    assert expected in err


def test_checkpoint_of_another_kind_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2)}, plain)  # a bare state dict
    err = run_error(capsys, [f"ckpt={plain}", "format=onnx"], export.main)
    assert "not a leafnet checkpoint" in err
