"""Which process of a multi-process run is the first, however the processes were started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_runs import REPO, tiny_args, train_main

from leafnet.rank import RANK_VARIABLES, is_rank0


@pytest.mark.parametrize(
    ("env", "first"),
    [
        ({}, True),  # one process
        ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, False),  # started by Lightning
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # Lightning, the second machine
        ({"RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1"}, False),  # torchrun
        ({"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}, True),
        ({"LOCAL_RANK": "0", "GROUP_RANK": "1"}, False),  # torchrun, the second machine
        ({"SLURM_PROCID": "2"}, False),  # srun
        ({"RANK": "", "LOCAL_RANK": "x"}, True),  # not numbers: read as unset, no traceback
    ],
)
def test_only_the_first_process_is_rank0(monkeypatch, env: dict, first: bool) -> None:
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_rank0() is first


def test_a_launched_run_without_a_shared_directory_is_refused(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = train_main(f"paths.output_dir={tmp_path}", "trainer=ddp")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "hydra.run.dir" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_process_other_than_the_first_writes_no_data_files(
    monkeypatch, tmp_path: Path, tiny_train_images: Path
) -> None:
    """The first process claims the run directory, which refuses a folder with files that no run
    left: another process of the run, started a moment sooner, must not have written the data's
    split and report there (torchrun's two processes raced so)."""
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's second process on this machine
    monkeypatch.setenv("NODE_RANK", "0")
    run_dir = tmp_path / "run"
    result = train_main(
        *tiny_args(tiny_train_images, tmp_path / "out", "epochs=1"), f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 0, result.stderr
    assert not {"split.csv", "data_report.json"} & {p.name for p in run_dir.iterdir()}


@pytest.mark.slow
def test_torchrun_two_cpu_processes_share_one_run(tmp_path: Path, tiny_train_images: Path) -> None:
    run_dir = tmp_path / "run"
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run(
        [str(torchrun), "--nproc-per-node=2", "-m", "leafnet.train",
         *tiny_args(tiny_train_images, tmp_path / "out", "epochs=1"),
         "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert log.count("epoch 1:") == 1 and "leafnet: completed" in log  # the first process's
    assert result.stdout.count("epoch 1:") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]  # no stray run folders
    assert not (tmp_path / "out" / "runs").exists()
