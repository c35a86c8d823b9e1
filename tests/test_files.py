"""The atomic writer: new files get the mode open() would give them under the user's umask."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    code = (
        "import os, sys\n"
        f"os.umask({umask})\n"
        "from leafnet.files import write_text\n"
        "write_text(sys.argv[1], 'x')\n"
    )
    target = tmp_path / "out" / "summary.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code, str(target)], check=True, env=env)
    assert target.stat().st_mode & 0o777 == mode
    assert [p.name for p in target.parent.iterdir()] == ["summary.json"]  # no temporary left


def test_a_runs_files_follow_the_umask_it_was_trained_under(tiny_run: Path) -> None:
    """tiny_run was trained in a child of this process, with this process's umask (022 on CI:
    0644, readable by colleagues)."""
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("summary.json", "metrics.csv", "split.csv", "checkpoints/best.ckpt"):
        assert (tiny_run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_file_that_appears_while_writing_is_kept_unless_replacing(tmp_path: Path) -> None:
    """The refuse-or-overwrite decision is made at the commit itself, not only before writing."""
    from leafnet.errors import LeafnetError
    from leafnet.files import atomic_path

    target = tmp_path / "preds.json"
    with (
        pytest.raises(LeafnetError, match="appeared while leafnet was writing it"),
        atomic_path(target, replace=False) as tmp,
    ):
        tmp.write_text("ours")
        target.write_text("theirs")  # another process, meanwhile
    assert target.read_text() == "theirs" and sorted(p.name for p in tmp_path.iterdir()) == [
        "preds.json"
    ]
    with atomic_path(target, replace=True) as tmp:
        tmp.write_text("ours")
    assert target.read_text() == "ours"
