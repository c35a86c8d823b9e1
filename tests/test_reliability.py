"""What a run directory someone sends you, a second process or an interruption cannot do: run
code, train over a finished run, share a directory, or lose the newest trained weights."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from fixtures_runs import tiny_args, train_main

from leafnet.config import compose
from leafnet.errors import LeafnetError
from leafnet.train import train
from leafnet.training import rundir
from leafnet.training.resume import resume_config


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("leafnet: error")]
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


@pytest.fixture
def sent_run(tmp_path: Path, tiny_run: Path) -> Path:
    """A copy of a finished run, as someone might send it (locks and all)."""
    copy = tmp_path / "sent"
    shutil.copytree(tiny_run, copy)
    return copy


def test_resume_never_builds_what_the_runs_config_names(sent_run: Path, tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    config = sent_run / ".hydra" / "config.yaml"
    config.write_text(
        config.read_text()
        + f"evil:\n  _target_: builtins.open\n  file: {planted}\n  mode: w\n"
        + f"callbacks_evil:\n  _target_: pathlib.Path.touch\n  self: {planted}\n"
    )
    result = train_main(f"resume={sent_run}", "epochs=5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not planted.exists()
    assert json.loads((sent_run / "summary.json").read_text())["epochs_completed"] == 5


@pytest.mark.parametrize(
    "override",
    ["+callbacks.evil._target_=builtins.print", "+callbacks.evil={_target_:builtins.print}"],
)
def test_resume_refuses_saved_overrides_that_name_code(sent_run: Path, override: str) -> None:
    overrides = sent_run / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text() + f"- {override}\n")
    with pytest.raises(LeafnetError, match="names code to run") as err:
        resume_config(compose("train", [f"resume={sent_run}"]), [])
    assert "\n" not in str(err.value)


def test_a_new_run_never_replaces_a_finished_one(sent_run: Path, tiny_train_images: Path) -> None:
    before = {p: digest(p) for p in sent_run.rglob("*") if p.is_file()}
    old_log = (sent_run / "train.log").read_text()
    line = one_error_line(
        train_main(*tiny_args(tiny_train_images, sent_run.parent), f"hydra.run.dir={sent_run}")
    )
    assert "already holds a run" in line and f"resume={sent_run}" in line
    log = sent_run / "train.log"
    after = {p: digest(p) for p in sent_run.rglob("*") if p.is_file() and p != log}
    assert after == {p: h for p, h in before.items() if p != log}  # .hydra/ included
    assert log.read_text().startswith(old_log)  # Hydra's job log is appended to, never replaced


def test_a_run_directory_in_use_is_refused(sent_run: Path) -> None:
    # A live process other than this one stands for a training process holding the directory.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (sent_run / rundir.LOCK).write_text(f"{holder.pid}\n")
        with (
            pytest.raises(
                LeafnetError, match=f"in use by another training process .pid {holder.pid}"
            ),
            rundir.claim(sent_run, resuming=True),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    assert (sent_run / rundir.LOCK).read_text().strip() == str(holder.pid)  # not taken


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / rundir.LOCK).write_text(f"{gone.pid}\n")
    with rundir.claim(tmp_path, resuming=False):
        assert (tmp_path / rundir.LOCK).read_text().strip() == str(os.getpid())
    assert not (tmp_path / rundir.LOCK).exists()


def test_a_run_directory_that_cannot_be_made_gets_one_line(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    with (
        pytest.raises(LeafnetError, match=r"cannot create the run directory .* hydra\.run\.dir"),
        rundir.claim(tmp_path / "a_file" / "run", resuming=False),
    ):
        pass


class InterruptAtTest(pl.Callback):
    """Ctrl-C as the final test starts, after recording last.ckpt's weights. The module's weights
    are shifted first, so a checkpoint saved from them now would differ from the trained ones."""

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        self.before = torch.load(last, weights_only=True)["state_dict"]
        with torch.no_grad():
            for param in pl_module.parameters():
                param.add_(1.0)
        raise KeyboardInterrupt


def test_ctrl_c_during_the_final_test_keeps_the_newest_weights(
    tmp_path: Path, tiny_train_images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    interrupt = InterruptAtTest()
    monkeypatch.setattr(sys.modules[__name__], "_INTERRUPT", interrupt, raising=False)
    cfg = compose(
        "train",
        [
            *tiny_args(tiny_train_images, tmp_path, "epochs=3", "logger=none"),
            f"+callbacks.interrupt._target_={__name__}.interrupt_at_test",
        ],
    )
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in interrupt.before.items():
        torch.testing.assert_close(last["state_dict"][key], value, rtol=0, atol=0)


def interrupt_at_test() -> pl.Callback:
    """The `_target_` these tests add: hands Lightning the test's own callback."""
    return sys.modules[__name__]._INTERRUPT


class InterruptMidEpoch(pl.Callback):
    """Ctrl-C after batch `batch` of epoch `epoch` (both from 0)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise KeyboardInterrupt


def interrupted_then_resumed(
    overrides: list[str], run_dir: Path, monkeypatch: pytest.MonkeyPatch, *resume_args: str
) -> dict[str, torch.Tensor]:
    """Train until Ctrl-C inside epoch 2, then `leafnet.train resume=`; the resumed run's final
    weights."""
    monkeypatch.setattr(sys.modules[__name__], "_INTERRUPT", InterruptMidEpoch(1, 1), raising=False)
    hook = f"+callbacks.interrupt._target_={__name__}.interrupt_at_test"
    with pytest.raises(KeyboardInterrupt):
        train(compose("train", [*overrides, hook]), run_dir)
    ckpts = run_dir / "checkpoints"
    newest = torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"]
    assert newest > torch.load(ckpts / "epoch_end.ckpt", weights_only=True)["global_step"]
    # What Hydra writes for a run started from the command line (the hook was not one of them).
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    result = train_main(f"resume={run_dir}", *resume_args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (ckpts / "epoch_end.ckpt").exists()
    times = [float(row.split(",")[7]) for row in (run_dir / "metrics.csv").read_text().split()[1:]]
    assert max(times) < 120  # each epoch's own time, whatever happened between
    return torch.load(ckpts / "last.ckpt", weights_only=True)["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_ctrl_c_mid_epoch_then_resume_gives_the_straight_runs_weights(
    tmp_path: Path, tiny_train_images: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tiny_run trained 4 epochs straight; this run is stopped inside its second epoch."""
    resumed = interrupted_then_resumed(
        tiny_args(tiny_train_images, tmp_path), tmp_path / "run", monkeypatch
    )
    straight = torch.load(tiny_run / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert_same_weights(resumed, straight)


def test_augmented_run_with_workers_resumes_exactly_with_other_workers(
    tmp_path: Path, tiny_train_images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = tiny_args(
        tiny_train_images, tmp_path, "data.augment=basic", "data.num_workers=2", "epochs=3"
    )
    train(compose("train", [*overrides, "logger=none"]), tmp_path / "straight")
    straight = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)
    resumed = interrupted_then_resumed(
        [*overrides, "logger=none"], tmp_path / "run", monkeypatch, "data.num_workers=0"
    )
    assert_same_weights(resumed, straight["state_dict"])


def test_a_run_directory_hydra_cannot_create_gets_one_line(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    line = one_error_line(train_main(f"hydra.run.dir={tmp_path / 'a_file' / 'run'}"))
    assert "cannot be created" in line and "a_file" in line
