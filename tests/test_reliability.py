"""What a run directory someone sends you, a second process or an interruption cannot do: run
code, train over a finished run, share a directory, or lose the newest trained weights."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from fixtures_runs import tiny_args, train_cli, train_main

from leafnet.config import compose
from leafnet.errors import LeafnetError
from leafnet.train import train
from leafnet.training import rundir
from leafnet.training.bookkeeping import sigterm_as_ctrl_c
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


def test_a_crafted_run_folder_cannot_make_resume_touch_the_users_files(
    sent_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The saved overrides point the checkpoints and a logger at the user's folder, and last.ckpt
    names the user's files as earlier checkpoints (which Lightning deletes when it saves newer
    ones): resuming from the user's folder leaves every file there as it was."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.docx").write_bytes(b"four years of work")
    (victim / "notes.txt").write_text("notes")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "metrics.csv").write_text("mine\n")
    overrides = sent_run / ".hydra" / "overrides.yaml"
    overrides.write_text(
        overrides.read_text()
        + "- +callbacks.checkpoint.dirpath=.\n"
        + f"- logger.tensorboard.save_dir={elsewhere}\n"
        + "- logger.tensorboard.name=../../elsewhere\n"
    )
    last = sent_run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    (key,) = [k for k in ckpt["callbacks"] if k.startswith("AtomicCheckpoint")]
    state = ckpt["callbacks"][key]
    state.pop("dirpath")
    state["best_k_models"] = {str(victim / "thesis.docx"): torch.tensor(-1.0)}
    state["kth_best_model_path"] = str(victim / "thesis.docx")
    state["best_model_path"] = str(victim / "thesis.docx")
    state["last_model_path"] = str(victim / "notes.txt")
    torch.save(ckpt, last)
    before = {p: digest(p) for d in (victim, elsewhere) for p in d.rglob("*") if p.is_file()}

    monkeypatch.chdir(victim)
    result = train_main(f"resume={sent_run}", "epochs=6", f"data.cache_dir={tmp_path / 'cache'}")
    assert result.returncode == 0, result.stderr[-3000:]
    warning = next(line for line in result.stdout.splitlines() if "resume: ignoring" in line)
    for planted in ("callbacks.checkpoint.dirpath", "tensorboard.save_dir", "tensorboard.name"):
        assert planted in warning
    after = {p: digest(p) for d in (victim, elsewhere) for p in d.rglob("*") if p.is_file()}
    assert after == before
    assert json.loads((sent_run / "summary.json").read_text())["epochs_completed"] == 6
    assert (sent_run / "checkpoints" / "best.ckpt").is_file()


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


def test_a_new_run_never_writes_into_a_folder_of_the_users(
    tmp_path: Path, tiny_train_images: Path
) -> None:
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "metrics.csv").write_text("my,own,table\n")
    (folder / "notes.txt").write_text("do not lose\n")
    line = one_error_line(
        train_main(*tiny_args(tiny_train_images, tmp_path), f"hydra.run.dir={folder}")
    )
    assert "metrics.csv, notes.txt" in line and "new or empty folder" in line
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.csv", "notes.txt"]
    assert (folder / "metrics.csv").read_text() == "my,own,table\n"


@contextlib.contextmanager
def locked_by_another_process(run_dir: Path) -> Iterator[int]:
    """Another live process holding `run_dir`'s lock as a training process does; yields its pid."""
    code = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, b'%d\\n' % os.getpid())\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir / rundir.LOCK)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_run_directory_in_use_is_refused(sent_run: Path) -> None:
    with locked_by_another_process(sent_run) as pid:
        with (
            pytest.raises(LeafnetError, match=f"in use by another training process .pid {pid}"),
            rundir.claim(sent_run, resuming=True),
        ):
            pass
        assert (sent_run / rundir.LOCK).read_text().strip() == str(pid)  # not taken


def test_a_refused_second_run_writes_nothing_into_the_running_one(
    tmp_path: Path, tiny_train_images: Path
) -> None:
    """Run A is in its first epoch (its .hydra/ written, no checkpoint yet); B is started in the
    same directory, then a resume of it: both refused before Hydra writes anything."""
    running = tmp_path / "running"
    (running / ".hydra").mkdir(parents=True)
    (running / ".hydra" / "overrides.yaml").write_text("- lr=0.01\n")
    with locked_by_another_process(running):
        before = {p: digest(p) for p in running.rglob("*") if p.is_file()}
        new_run = train_main(
            *tiny_args(tiny_train_images, tmp_path, "lr=0.5", "epochs=7"),
            f"hydra.run.dir={running}",
        )
        resumed = train_main(f"resume={running}", "epochs=9")
        after = {p: digest(p) for p in running.rglob("*") if p.is_file()}
    for result in (new_run, resumed):
        assert "in use by another training process" in one_error_line(result)
    assert after == before  # no .hydra/ rewritten, no .hydra/resume/, no train.log


def _claim_at_barrier(run_dir: Path, barrier: Any, said: Any) -> None:
    barrier.wait()
    try:
        with rundir.claim(run_dir, resuming=True):
            said.put("held")
            time.sleep(0.3)
    except LeafnetError:
        said.put("refused")


def test_three_processes_taking_over_a_stale_lock_never_share_it(tmp_path: Path) -> None:
    """A killed run left its lock; three processes try to take the directory at the same moment,
    15 times over: exactly one holds it each time."""
    ctx = multiprocessing.get_context("fork")
    for trial in range(15):
        run_dir = tmp_path / f"run{trial}"
        run_dir.mkdir()
        (run_dir / rundir.LOCK).write_text("999999999\n")  # a pid no process has
        barrier, said = ctx.Barrier(3), ctx.Queue()
        procs = [
            ctx.Process(target=_claim_at_barrier, args=(run_dir, barrier, said)) for _ in range(3)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=30)
        outcomes = sorted(said.get(timeout=5) for _ in procs)
        assert outcomes == ["held", "refused", "refused"], (trial, outcomes)


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


class SigtermAt(pl.Callback):
    """SIGTERM to this process after training batch `batch` of epoch `epoch`, or (epoch None)
    after the final test's last batch, where Lightning no longer looks for it."""

    def __init__(self, epoch: int | None, batch: int = 0) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        if self.epoch is None:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("epoch", [1, None], ids=["mid-epoch", "last-test-batch"])
def test_sigterm_while_a_trainer_runs_ends_the_run_as_ctrl_c_would(
    tmp_path: Path, tiny_train_images: Path, monkeypatch: pytest.MonkeyPatch, epoch: int | None
) -> None:
    """SIGTERM inside training stops at that batch's end with the mid-epoch checkpoint Ctrl-C
    leaves (last.ckpt, the epoch's end kept beside it); in the final test's last batch, after
    Lightning's last look, it still ends the run as interrupted."""
    monkeypatch.setattr(sys.modules[__name__], "_INTERRUPT", SigtermAt(epoch, 1), raising=False)
    hook = f"+callbacks.interrupt._target_={__name__}.interrupt_at_test"
    cfg = compose("train", [*tiny_args(tiny_train_images, tmp_path, "logger=none"), hook])
    run_dir = tmp_path / "run"
    with sigterm_as_ctrl_c() as terminated, pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir)
    assert terminated == [signal.SIGTERM]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    ckpts = run_dir / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    if epoch is not None:  # 3 batches an epoch: stopped after epoch 2's second
        assert last["global_step"] == 5
        assert torch.load(ckpts / "epoch_end.ckpt", weights_only=True)["global_step"] == 3
    else:
        assert last["epoch"] == 3 and not (ckpts / "epoch_end.ckpt").exists()  # all 4 epochs


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


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.parametrize("workers", [1, 2])
def test_an_augmented_run_resumed_for_more_epochs_is_the_straight_run(
    tmp_path: Path, tiny_train_images: Path, workers: int
) -> None:
    """Workers draw their first batches before Lightning sets the sampler's epoch: the resumed
    first epoch must still draw its own order and augmentation, not epoch 0's."""
    args = tiny_args(
        tiny_train_images, tmp_path, "data.augment=basic", f"data.num_workers={workers}",
        "logger=none",
    )  # fmt: skip
    straight, two = tmp_path / "straight", tmp_path / "two"
    assert train_main(*args, "epochs=3", f"hydra.run.dir={straight}").returncode == 0
    assert train_main(*args, "epochs=2", f"hydra.run.dir={two}").returncode == 0
    resumed = train_main(f"resume={two}", "epochs=3", f"data.cache_dir={tmp_path / 'cache'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_weights(last_weights(two), last_weights(straight))


def test_a_killed_augmented_run_with_auto_workers_resumes_exactly(
    tmp_path: Path, tiny_train_images: Path
) -> None:
    args = tiny_args(
        tiny_train_images, tmp_path, "data.augment=basic", "data.num_workers=auto",
        "logger=none", "epochs=3",
    )  # fmt: skip
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert train_main(*args, f"hydra.run.dir={straight}").returncode == 0
    hook = [
        "+callbacks.kill._target_=fixtures_runs.KillAt", "+callbacks.kill.epoch=1",
        "+callbacks.kill.batch=1",
    ]  # fmt: skip
    result = train_cli(*args, *hook, f"hydra.run.dir={killed}")
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    # What Hydra saved, less the test's own callback (a resume refuses overrides naming code).
    (killed / ".hydra" / "overrides.yaml").write_text("".join(f"- {a}\n" for a in args))
    resumed = train_main(f"resume={killed}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_weights(last_weights(killed), last_weights(straight))


def test_a_cosine_run_resumed_for_more_epochs_is_refused(
    tmp_path: Path, tiny_train_images: Path
) -> None:
    args = tiny_args(
        tiny_train_images, tmp_path, "scheduler=cosine", "optimizer=sgd", "lr=0.1", "epochs=2",
        "logger=none",
    )  # fmt: skip
    run = tmp_path / "run"
    assert train_main(*args, f"hydra.run.dir={run}").returncode == 0
    before = {p: digest(p) for p in run.rglob("*") if p.is_file()}
    line = one_error_line(train_main(f"resume={run}", "epochs=4"))
    assert "scheduler=cosine decays over the run's 2 epochs" in line
    assert {p: digest(p) for p in run.rglob("*") if p.is_file()} == before


def test_a_run_directory_hydra_cannot_create_gets_one_line(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    line = one_error_line(train_main(f"hydra.run.dir={tmp_path / 'a_file' / 'run'}"))
    assert "cannot be created" in line and "a_file" in line


def test_ctrl_c_before_the_first_checkpoint_says_so_and_leaves_the_folder_usable(
    tmp_path: Path, tiny_train_images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "_INTERRUPT", InterruptMidEpoch(0, 0), raising=False)
    run = tmp_path / "run"
    args = [*tiny_args(tiny_train_images, tmp_path, "logger=none"), f"hydra.run.dir={run}"]
    hook = f"+callbacks.interrupt._target_={__name__}.interrupt_at_test"
    stopped = train_main(*args, hook)
    assert stopped.returncode == 130
    line = [x for x in stopped.stderr.splitlines() if x.startswith("leafnet: error")]
    assert line == [
        "leafnet: error: interrupted before the first checkpoint, so there is nothing to resume; "
        "start again (the same hydra.run.dir may be used)"
    ]
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    again = train_main(*args, "epochs=1")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_a_checkpoint_that_cannot_be_written_ends_the_run_in_one_line(
    tmp_path: Path, tiny_train_images: Path
) -> None:
    """Checkpoints are written in a background thread; one that fails there (its folder is a
    file) still ends the run with one line that names it, not a traceback."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the checkpoints should go")
    result = train_main(
        *tiny_args(tiny_train_images, tmp_path, "logger=none"),
        f"hydra.run.dir={tmp_path / 'run'}",
        f"+callbacks.checkpoint.dirpath={blocker}",
    )
    line = one_error_line(result)
    assert line.startswith(f"leafnet: error: cannot write {blocker}/"), line
    assert blocker.read_text() == "a file where the checkpoints should go"


class _TwoWeights(pl.LightningModule):
    """A tiny module whose weights change every step, for checkpoint tests."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_checkpoints_are_written_off_the_training_thread_with_the_weights_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step does not wait for a checkpoint: the file is written in another thread, from the
    weights as they were when it was asked for, and is on disk when fit returns."""
    from lightning.fabric.plugins import TorchCheckpointIO

    from leafnet.training.checkpoint import AtomicCheckpoint

    writers: list[str] = []
    save = TorchCheckpointIO.save_checkpoint

    def slow_save(self: Any, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        writers.append(threading.current_thread().name)
        time.sleep(0.2)  # the next epoch's steps change the weights meanwhile
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", slow_save)
    asked: list[torch.Tensor] = []

    class Recording(AtomicCheckpoint):
        def write(self, trainer: pl.Trainer, filepath: str) -> None:
            if Path(filepath).name == "last.ckpt":
                asked.append(trainer.lightning_module.layer.weight.detach().clone())
            super().write(trainer, filepath)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)))
    trainer = pl.Trainer(
        max_epochs=2, callbacks=[Recording(dirpath=tmp_path, save_last=True)], logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(_TwoWeights(), data)
    assert writers and threading.main_thread().name not in writers
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]["layer.weight"]
    assert len(asked) == 2 and torch.equal(last, asked[-1])
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


@pytest.mark.parametrize("first_sees", [True, False])
def test_every_process_tests_the_best_checkpoint_the_first_process_sees(
    tmp_path: Path, first_sees: bool
) -> None:
    """Whether a run tests is the first process's answer, not each process's own view of the
    folder: under torchrun a second process that looked before the first's writer thread had
    renamed best.ckpt into place skipped the test alone, and the first then waited on it."""
    from leafnet.training.checkpoint import AtomicCheckpoint

    (tmp_path / "checkpoints").mkdir()
    if not first_sees:  # this process sees a file the first process's answer says is not there
        (tmp_path / "checkpoints" / "best.ckpt").write_bytes(b"")
    told: list[object] = []

    def broadcast(obj: object, src: int = 0) -> bool:
        told.append(obj)
        return first_sees  # what the first process sends

    trainer = SimpleNamespace(strategy=SimpleNamespace(broadcast=broadcast))
    best = AtomicCheckpoint.best_to_test(trainer, tmp_path)  # type: ignore[arg-type]
    assert best == (tmp_path / "checkpoints" / "best.ckpt" if first_sees else None)
    assert told == [not first_sees]  # this process's own view was only offered


class _GoesBad(_TwoWeights):
    """Its weights turn non-finite (`bad`) in the second epoch."""

    def __init__(self, bad: float) -> None:
        super().__init__()
        self.bad = bad

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        last = batch_idx == self.trainer.num_training_batches - 1
        if self.current_epoch == 1 and last:  # after its last step: the epoch ends with this value
            with torch.no_grad():
                self.layer.weight[0, 1] = self.bad


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_the_checkpoint_guard_refuses_a_nan_and_infinities_of_either_sign(
    tmp_path: Path, bad: float
) -> None:
    """A NaN or an infinity of either sign anywhere in the weights: the epoch's checkpoint is not
    written, and last.ckpt keeps the last finite weights (those of the first epoch)."""
    from leafnet.training.checkpoint import AtomicCheckpoint

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)))
    trainer = pl.Trainer(
        max_epochs=2, callbacks=[AtomicCheckpoint(dirpath=tmp_path, save_last=True)],
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(_GoesBad(bad), data)
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and torch.isfinite(last["state_dict"]["layer.weight"]).all()
