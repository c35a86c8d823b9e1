"""`python -m leafnet.train` end to end: run directory, divergence, errors, sweeps, resume."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures_browser import chromium, needs_chromium
from fixtures_data import page_filling_side
from fixtures_runs import REPO, tiny_args, train_cli, train_main

import leafnet.errors
import leafnet.train  # (also: TensorBoard without TensorFlow, see leafnet/train.py)
from leafnet.banded import fused_available
from leafnet.config import compose
from leafnet.data.cache import DiskCache
from leafnet.model import LeafNet
from leafnet.runs import read_run
from leafnet.train import make_logger, train
from leafnet.training.bookkeeping import Diverged, Run, run_job, sigterm_as_ctrl_c

SUMMARY_KEYS = {
    "status", "optimizer", "lr", "batch_size", "image_size", "epochs_completed", "best_val_acc",
    "best_epoch", "final_val_loss", "final_train_loss", "test_acc", "test_f1_macro", "wall_time_s",
    "images_per_s", "peak_rss_gb", "diverged_at", "overrides",
}  # fmt: skip
METRICS_HEADER = (
    "epoch,step,train_loss,train_acc,val_loss,val_acc,lr,epoch_time_s,images_per_s,data_wait_share"
)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_tiny_run_has_every_output_and_learns(tiny_run: Path) -> None:
    for name in (
        ".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "train.log",
        "checkpoints/best.ckpt", "checkpoints/last.ckpt", "split.csv", "data_report.json",
        "metrics.csv", "summary.json",
    ):  # fmt: skip
        assert (tiny_run / name).is_file(), name
    assert list(tiny_run.glob("events.out.tfevents.*"))
    assert not list(tiny_run.rglob("*.tmp"))

    s = summary(tiny_run)
    assert set(s) >= SUMMARY_KEYS
    assert s["status"] == "completed" and s["epochs_completed"] == 4 and s["diverged_at"] is None
    assert s["optimizer"] == "adam" and s["lr"] == 0.01 and s["batch_size"] == 8
    assert s["test_acc"] >= 0.5 and s["best_val_acc"] >= 0.5  # three colours: easy to learn
    assert "lr=1e-2" in s["overrides"]

    lines = (tiny_run / "metrics.csv").read_text().splitlines()
    assert lines[0] == METRICS_HEADER and len(lines) == 5
    losses = [float(line.split(",")[2]) for line in lines[1:]]
    assert losses[-1] < losses[0]  # the loss falls


def test_tensorboard_has_hparams_with_final_metrics_and_images(tiny_run: Path) -> None:
    # leafnet.train (imported) switched TensorBoard to its TensorFlow-free stub.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: set[str] = set()
    images: set[str] = set()
    plugins: set[str] = set()
    for events in tiny_run.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        tags = acc.Tags()
        scalars |= set(tags["scalars"])
        images |= set(tags["images"])
        with contextlib.suppress(KeyError):  # a file without an HParams session
            plugins |= set(acc.PluginTagToContent("hparams"))
    assert {
        "train_loss",
        "val_acc",
        "epoch_time_s",
        "images_per_s",
        "final/best_val_acc",
        "final/test_acc",
    } <= scalars
    assert any(t.startswith("lr-") for t in scalars)
    assert "hp_metric" not in scalars
    assert {"val/predictions", "test/confusion_matrix"} <= images
    assert plugins  # the HParams tab's session


def test_divergence_ends_cleanly(tmp_path: Path, tiny_train_images: Path) -> None:
    run_dir = tmp_path / "run"
    result = train_main(
        *tiny_args(tiny_train_images, tmp_path, "optimizer=sgd", "lr=1e3", "epochs=2"),
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("leafnet: error")]
    assert len(errors) == 1 and "lower learning rate" in errors[0], result.stderr[-2000:]
    s = summary(run_dir)
    assert s["status"] == "diverged"
    assert {"epoch", "step", "reason"} <= set(s["diverged_at"]) and s["diverged_at"]["epoch"] == 1


class _Watched(logging.StreamHandler):
    """A handler that remembers being closed."""

    closed = False

    def close(self) -> None:
        self.closed = True
        super().close()


def test_a_run_in_this_process_leaves_the_callers_logging_alone(
    tmp_path: Path, tiny_train_images: Path
) -> None:
    """A notebook's or a test runner's handler is neither closed nor detached by a run (Hydra's
    job logging would do both), and the run's lines still reach its train.log and the console."""
    mine = io.StringIO()
    handler = _Watched(mine)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        run_dir = tmp_path / "run"
        args = tiny_args(tiny_train_images, tmp_path, "epochs=1")
        result = train_main(*args, f"hydra.run.dir={run_dir}")
        assert result.returncode == 0, result.stderr[-2000:]
    finally:
        root.removeHandler(handler)
    assert not handler.closed
    assert "leafnet: completed" in mine.getvalue()  # it saw the run's lines as they came
    assert "leafnet: completed" in (run_dir / "train.log").read_text()
    assert "leafnet: completed" in result.stdout  # the console, as a new process shows it


def test_a_bad_value_exits_2_with_one_line(tmp_path: Path) -> None:
    # The command's side of the schema, through Hydra (every key's cases: test_bad_input.py).
    override, expected = "data.synthetic=no", "data.synthetic"
    result = train_main(f"paths.output_dir={tmp_path}", "trainer=cpu", override)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("leafnet: error")
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_bad_optimizer_lists_the_options(tmp_path: Path) -> None:
    result = train_main(f"paths.output_dir={tmp_path}", "optimizer=adamw")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "leafnet: error: optimizer=adamw is not an option; did you mean optimizer=adam? the "
        "options are adagrad, adam, rmsprop, sgd"
    ]


def _wait_for_epochs(
    metrics: Path, proc: subprocess.Popen, epochs: int, timeout: float = 240
) -> None:
    deadline = time.time() + timeout
    last = metrics.parent / "checkpoints" / "last.ckpt"  # written just after the epoch's row
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) > epochs and last.is_file():
            return
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach epoch {epochs} (exit {proc.poll()})")


def _popen_train(*args: str) -> subprocess.Popen:
    env = {"CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "leafnet.train", *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # As in a terminal: a suite started in the background (`make test &`) ignores SIGINT,
        # and a child would inherit that and never see Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_resume_after_sigkill_gives_the_same_weights(
    tmp_path: Path, tiny_train_images: Path, tiny_run: Path
) -> None:
    """tiny_run trained 4 epochs straight; this one is killed after epoch 2 and resumed to 4."""
    run_dir = tmp_path / "run"
    proc = _popen_train(*tiny_args(tiny_train_images, tmp_path), f"hydra.run.dir={run_dir}")
    try:
        _wait_for_epochs(run_dir / "metrics.csv", proc, 2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()  # killed mid-run
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["epoch"] < 4

    result = train_main(f"resume={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(run_dir)["status"] == "completed" and summary(run_dir)["epochs_completed"] == 4
    assert (run_dir / ".hydra" / "config.yaml").read_text() == (
        tiny_run / ".hydra" / "config.yaml"
    ).read_text().replace(str(tiny_run.parent), str(tmp_path))
    straight = torch.load(tiny_run / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    resumed = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6)


# Ctrl-C in a process of its own runs with -m slow: SIGTERM goes through leafnet's handler, and
# the in-process interruption tests (test_reliability.py) cover what Ctrl-C leaves behind.
@pytest.mark.parametrize(
    ("sig", "code"),
    [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)],
)
def test_ctrl_c_or_sigterm_saves_last_and_ends_interrupted(
    tmp_path: Path, tiny_train_images: Path, sig: signal.Signals, code: int
) -> None:
    """Ctrl-C, or SIGTERM as a cluster pre-empting a job sends it."""
    run_dir = tmp_path / "run"
    proc = _popen_train(
        *tiny_args(tiny_train_images, tmp_path, "epochs=50"), f"hydra.run.dir={run_dir}"
    )
    try:
        _wait_for_epochs(run_dir / "metrics.csv", proc, 1)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("leafnet: error: interrupted")
    assert "Traceback" not in stderr
    assert summary(run_dir)["status"] == "interrupted"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / ".leafnet.lock").exists()  # the run directory is free again


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path: Path, tiny_train_images: Path) -> None:
    """Two gloo processes: each reads its own shard (ShardLog records them), the test metrics
    count each image once, and the run resumes exactly as it would have gone on."""
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    shards = tmp_path / "shards"
    odd = ["data.limit_per_class=11", "data.val_fraction=0.1", "data.test_fraction=0.1"]
    args = [*tiny_args(tiny_train_images, tmp_path, "epochs=2", *odd), *ddp]  # odd subsets
    logged = [
        "+callbacks.shards._target_=fixtures_runs.ShardLog",
        f"+callbacks.shards.out={shards}",
    ]
    run_dir = tmp_path / "run"
    result = train_cli(*args, *logged, f"hydra.run.dir={run_dir}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    s = summary(run_dir)
    assert s["status"] == "completed"
    counts = s["class_counts"]
    n_train = sum(c["train"] for c in counts.values())  # 27: odd, so one image is read twice
    for epoch in (0, 1):
        seen = [json.loads((shards / f"{epoch}_{rank}.json").read_text()) for rank in (0, 1)]
        assert len(seen[0]) == len(seen[1])  # as many steps in each process
        assert set(seen[0]) | set(seen[1]) == set(range(n_train))  # together: the whole set
        assert len(seen[0]) + len(seen[1]) == n_train + 1  # and disjoint but for the one
    assert sum(map(sum, s["confusion_matrix"])) == sum(c["test"] for c in counts.values())

    # Stopped after epoch 1 and resumed for epoch 2: the same weights as the straight run.
    short = tmp_path / "short"
    first = train_cli(*args[:-3], "epochs=1", *ddp, f"hydra.run.dir={short}", timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = train_cli(f"resume={short}", "epochs=2", timeout=600)  # its own trainer=ddp
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    again = torch.load(short / "checkpoints" / "last.ckpt", weights_only=True)
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, again["state_dict"][name]), name


@pytest.mark.parametrize("logger", ["csv", "none"])
def test_other_loggers_train_and_keep_the_run_files(
    tmp_path: Path, tiny_train_images: Path, logger: str
) -> None:
    run_dir = tmp_path / "run"
    train(
        compose("train", tiny_args(tiny_train_images, tmp_path, f"logger={logger}", "epochs=1")),
        run_dir,
    )
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert (run_dir / "metrics.csv").is_file()
    csv_logs = list(run_dir.rglob("metrics.csv"))
    # logger=csv writes Lightning's own metrics.csv (with the final metrics) beside leafnet's.
    assert len(csv_logs) == (2 if logger == "csv" else 1)
    if logger == "csv":
        lightning_csv = next(p for p in csv_logs if p != run_dir / "metrics.csv")
        assert "final/best_val_acc" in lightning_csv.read_text()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (Diverged("loss not finite"), 0.0),  # a sweeper learns this lr is bad
        (leafnet.errors.LeafnetError("bad value"), None),  # failed: nothing to learn from
        (RuntimeError("boom"), None),
    ],
)
def test_a_sweep_job_returns_instead_of_raising(error: Exception, expected: float | None) -> None:
    def failing_train(cfg: object) -> float:
        raise error

    assert run_job(failing_train, {}, multirun=True) == expected
    # A single run does not swallow it: one line and exit 2, or the error itself.
    with pytest.raises(
        SystemExit if isinstance(error, leafnet.errors.LeafnetError) else RuntimeError
    ):
        run_job(failing_train, {}, multirun=False)


def test_tiny_run_logs_the_explain_figures_by_default(tiny_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images: set[str] = set()
    for events_file in tiny_run.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events_file), size_guidance={"images": 0})
        acc.Reload()
        images |= set(acc.Tags()["images"])
    assert {"explain/filters", "explain/gradcam"} <= images, images


def test_mlflow_logs_each_epoch_the_knobs_and_the_checkpoints(
    tmp_path: Path, tiny_train_images: Path
) -> None:
    mlflow = pytest.importorskip("mlflow")
    overrides = tiny_args(tiny_train_images, tmp_path, "logger=[tensorboard,mlflow]", "epochs=2")
    train(compose("train", overrides), tmp_path / "run")
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("leafnet").experiment_id])
    assert run.info.run_name == "run"  # no Hydra overrides in-process: the directory's name
    assert run.data.params["optimizer"] == "adam" and float(run.data.params["lr"]) == 0.01
    epochs = client.get_metric_history(run.info.run_id, "val_acc")
    assert len(epochs) == 2
    assert "final/test_acc" in run.data.metrics
    best = [a.path for a in client.list_artifacts(run.info.run_id, "best")]
    assert "best/best.ckpt" in best, best
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))  # TensorBoard beside it


# -m slow: a TensorBoard server and a browser, 20 s on a 2-core host; the default suite reads the
# same hparams from the event files (test_tensorboard_has_hparams_with_final_metrics_and_images).
@pytest.mark.slow
@needs_chromium
def test_tensorboard_hparams_view_lists_each_run_with_its_final_metrics(
    tmp_path: Path, tiny_train_images: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    for lr in ("0.01", "0.001"):  # a two-run sweep's outputs
        cfg = compose("train", tiny_args(tiny_train_images, tmp_path, f"lr={lr}", "epochs=1"))
        train(cfg, tmp_path / "sweep" / f"lr={lr}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path / "sweep"),
         "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # With TensorFlow installed (the bench extra), TensorBoard imports it, and Keras under
        # the suite's KERAS_BACKEND=torch then never lets TensorBoard start.
        env={k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"},
    )  # fmt: skip
    try:
        with sync_api.sync_playwright() as p:
            browser = chromium(p)
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            deadline = time.time() + 60
            while True:  # until TensorBoard answers
                try:
                    page.goto(f"http://127.0.0.1:{port}/#hparams")
                    break
                except sync_api.Error:
                    assert time.time() < deadline, "TensorBoard did not start"
                    time.sleep(0.3)
            page.get_by_text("final/best_val_acc").first.wait_for(timeout=60_000)
            for run in ("lr=0.01", "lr=0.001"):  # one row per run (Trial ID: its directory)
                page.get_by_text(run).first.wait_for(timeout=30_000)
                assert page.get_by_text(run).count() == 1
            page.screenshot(path=str(tmp_path / "hparams.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert (tmp_path / "hparams.png").stat().st_size > 10_000


def test_weights_that_are_not_finite_are_never_checkpointed(
    tmp_path: Path, tiny_train_images: Path
) -> None:
    # lr=1e30: the first SGD step makes the weights infinite, the loss NaN.
    cfg = compose("train", tiny_args(tiny_train_images, tmp_path, "optimizer=sgd", "lr=1e30"))
    with pytest.raises(Diverged):
        train(cfg, tmp_path / "run")
    assert summary(tmp_path / "run")["status"] == "diverged"
    assert not list((tmp_path / "run").rglob("*.ckpt"))


def test_a_tracker_without_its_package_gets_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if leafnet[mlflow] were not installed
    node = compose("train", ["logger=mlflow"]).logger.mlflow
    with pytest.raises(leafnet.errors.LeafnetError, match=r"pip install 'leafnet\[mlflow\]'"):
        make_logger(node, Run(node, tmp_path, None, [], {}, 0.0, True))


def _square(x: int) -> int:
    return x * x


def test_sigterm_interrupts_at_once_outside_a_trainer_and_waits_for_lightning_inside() -> None:
    """Outside a trainer (scanning the data, say) SIGTERM interrupts where it lands. While
    Lightning's handler wraps leafnet's, as it does while a trainer runs, SIGTERM is only noted:
    Lightning stops at the next batch's end, and an exception raised mid-line could leave a
    library's queue (TensorBoard's writer) waiting for a wake-up that never comes."""
    with sigterm_as_ctrl_c() as terminated:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs between two bytecodes, well before this ends
        assert terminated == [signal.SIGTERM]

        ours = signal.getsignal(signal.SIGTERM)
        seen: list[int] = []

        def lightnings(signum: int, frame: object) -> None:  # as Lightning's _HandlersCompose
            seen.append(signum)
            ours(signum, frame)

        signal.signal(signal.SIGTERM, lightnings)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # no KeyboardInterrupt
        assert seen == [signal.SIGTERM] and terminated == [signal.SIGTERM] * 2
        signal.signal(signal.SIGTERM, ours)
    assert signal.getsignal(signal.SIGTERM) is not ours  # the handler before it, put back


def test_sigterm_handler_lets_forked_helpers_end_quietly(capfd: pytest.CaptureFixture) -> None:
    """A process pool forked while training (the synthetic set's writers) is ended by its parent
    with SIGTERM: the helpers must exit, not print a KeyboardInterrupt traceback each."""
    import multiprocessing as mp

    with sigterm_as_ctrl_c() as terminated, mp.get_context("fork").Pool(2) as pool:
        assert pool.map(_square, range(8)) == [x * x for x in range(8)]
        pool.apply_async(time.sleep, (30,))  # busy when the pool is ended
        time.sleep(0.5)
    assert terminated == []
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_epochs_without_validation_have_no_validation_figures(
    tmp_path: Path, tiny_train_images: Path
) -> None:
    """With check_val_every_n_epoch=2 epochs 1 and 3 run no validation: their rows leave the
    validation figures empty (Lightning still holds epoch 2's), the log says so, and plateau
    steps on validated epochs only (epoch 2's loss seen again in epoch 3 would have counted as
    no improvement and halved the learning rate at patience 0)."""
    run_dir = tmp_path / "run"
    extra = ("epochs=4", "+trainer.check_val_every_n_epoch=2", "scheduler=plateau")
    result = train_main(
        *tiny_args(tiny_train_images, tmp_path, *extra, "scheduler.patience=0", "logger=none"),
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_run(run_dir).metrics
    validated = [not math.isnan(r["val_loss"]) and not math.isnan(r["val_acc"]) for r in rows]
    assert validated == [False, True, False, True]
    assert rows[3]["lr"] == rows[0]["lr"]  # epoch 4 starts at the first rate: no stale step
    log = (run_dir / "train.log").read_text()
    assert log.count("not validated this epoch") == 2


@pytest.mark.skipif(not fused_available(), reason="no C compiler here")
def test_the_cpu_fast_paths_train_exactly_as_the_plain_ones(
    tmp_path: Path, tiny_train_images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a side whose rows fill whole pages (64 px with 4 KiB pages) a run's batches are the
    cache files' mapped pages, the first block reads them as bytes and the second max-pool and
    its ReLU run as one C pass; with all three switched off (entries read into a batch, the
    batch converted by to_float, max-pool and ReLU layer by layer) the run ends with the same
    weights, bit for bit."""
    mapped: list[bool] = []
    as_bytes: list[bool] = []
    pooled: list[bool] = []
    map_batch, forward_bytes, fuse_pool = (
        DiskCache.map_batch,
        LeafNet.forward_bytes,
        LeafNet._fuse_pool,
    )

    def spy_map(self: DiskCache, *args: object) -> torch.Tensor | None:
        batch = map_batch(self, *args)
        mapped.append(batch is not None)
        return batch

    def spy_bytes(self: LeafNet, *args: object) -> torch.Tensor | None:
        logits = forward_bytes(self, *args)
        as_bytes.append(logits is not None)
        return logits

    def spy_pool(self: LeafNet, x: torch.Tensor) -> bool:
        pooled.append(fuse_pool(self, x))
        return pooled[-1]

    def weights(run: str, *extra: str) -> dict[str, torch.Tensor]:
        out = tmp_path / run
        side = f"data.image_size={page_filling_side()}"
        args = tiny_args(tiny_train_images, out, side, "epochs=2", *extra)
        train(compose("train", args), out / "run")
        return torch.load(out / "run" / "checkpoints" / "last.ckpt", weights_only=True)[
            "state_dict"
        ]

    monkeypatch.setattr(DiskCache, "map_batch", spy_map)
    monkeypatch.setattr(LeafNet, "forward_bytes", spy_bytes)
    monkeypatch.setattr(LeafNet, "_fuse_pool", spy_pool)
    fast = weights("fast")
    # (a batch with fewer images than cores keeps the layers: any, not all, for the pool)
    assert mapped and all(mapped) and as_bytes and all(as_bytes) and any(pooled)
    monkeypatch.setattr(DiskCache, "map_batch", lambda self, *args: None)
    monkeypatch.setattr(LeafNet, "forward_bytes", lambda self, *args: None)
    monkeypatch.setattr(LeafNet, "_fuse_pool", lambda self, x: False)
    plain = weights("plain")
    assert fast.keys() == plain.keys()
    assert all(torch.equal(fast[k], plain[k]) for k in fast)
