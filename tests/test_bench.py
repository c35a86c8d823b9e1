"""`python -m leafnet.lab.bench` end to end at a tiny size: the report's figures hang together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from fixtures_cli import run_error

from leafnet import banded, kernels
from leafnet.adapters.pytorch import cpu_has_bf16
from leafnet.lab.bench import main as bench_main
from leafnet.lab.host import train_flops_per_image
from leafnet.lab.lockstep import as_rounds, host_correlation, paired, run_lockstep
from leafnet.lab.worker import WorkerArgs


def bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    # Run from tmp_path: the bench writes its generated data and reports under ./outputs/bench.
    return subprocess.run(
        [sys.executable, "-m", "leafnet.lab.bench", *args],
        cwd=tmp_path,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow  # a benchmark run, about 5 minutes on 2 cores
def test_bench_reports_consistent_figures(tmp_path: Path) -> None:
    args = (
        *("image_size=32", "batch_size=4", "steps=2", "warmup=1", "rounds=2"),
        "contenders=[command,command+layers,command+library,command+bf16,leafnet,torch+tuned+cl,torch+tuned+cl+library]",
        "profile=true",
        "command_epochs=3",
        *("predict_images=8", "predict_batch=4"),
    )
    result = bench(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = list((tmp_path / "outputs" / "bench").glob("*.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())

    config = report["config"]
    assert config["accelerator"] == "cpu" and config["precision"] == "32-true"
    assert config["micro_batch"] == 4  # leafnet.train's auto micro-batch: the whole batch at 32 px
    assert report["train_gflop_per_image"] == pytest.approx(train_flops_per_image(32) / 1e9)
    assert report["roofline_gflops"] > 0 and report["copy_gbs"] > 0
    assert len(report["host_samples"]) == 3  # before the first round and after each of two
    fused = "fused" if kernels.conv_pool() is not None else "pytorch"
    for name in ("leafnet", "torch+tuned+cl", "torch+tuned+cl+library"):
        row = report["contenders"][name]
        assert row["band_bytes"] == banded.band_bytes()  # this host's, as in training
        assert row["conv1_kernel"] == ("pytorch" if name.endswith("+library") else fused)
        assert row["steps_timed"] == 2 and len(row["step_s"]) == 2
        assert len(row["round_ms_per_image"]) == 2  # one step in each round
        assert row["ms_per_image"] > 0
        assert row["peak_rss_gb"] > 0
    layers = report["contenders"]["command+layers"]  # model.conv1_in_bands=false, its own micro
    assert layers["ms_per_image"] > 0 and layers["micro_batch"] == 4
    assert "command, conv1 layer by layer (`model.conv1_in_bands=false`, micro 4)" in result.stdout
    command = report["contenders"]["command"]
    assert command["conv1_kernel"] == fused
    runs = [
        json.loads(p.read_text())
        for p in (tmp_path / "outputs/bench/command").glob("*/summary.json")
    ]
    peaks = [run["peak_rss_gb"] for run in runs]
    assert len(peaks) == 6 + 2 * cpu_has_bf16()  # each command variant: one run a round
    assert command["peak_rss_gb"] in peaks  # the training process' own, not its worker's
    assert report["contenders"]["command+library"]["conv1_kernel"] == "pytorch"
    bf16 = report["contenders"]["command+bf16"]
    if cpu_has_bf16():  # the command itself at bf16-mixed, precision given once
        assert bf16["ms_per_image"] > 0
        precisions = [[o for o in r["overrides"] if o.startswith("precision=")] for r in runs]
        assert precisions.count(["precision=bf16-mixed"]) == 2
    else:  # the command's own one-line refusal, as a user would see it
        assert "no native bfloat16" in bf16["error"]
    assert "conv1_kernel" not in layers
    assert len(command["round_ms_per_image"]) == 2  # one steady epoch in each round
    parts = command["breakdown_ms_per_image"]
    assert 0 < parts["step"] < command["ms_per_image"]
    assert parts["validation"] > 0 and parts["checkpoint writes"] > 0
    assert "the command's steady epoch" in result.stdout
    leafnet = report["contenders"]["leafnet"]
    assert leafnet["channels_last"] is True
    assert leafnet["allocator"]["glibc"] is False or leafnet["allocator"]["tuned"] is True
    assert report["profile"] and all(p["ms_per_step"] >= 0 for p in report["profile"])
    assert "gpu_busy_share" not in report  # CPU only
    assert report["data"]["predict"]["predict_images"] == 8
    assert report["data"]["predict"]["predict_images_per_s"] > 0
    assert report["data"]["cached"]["cached_images_per_s"] > 0
    # The terminal table names every contender with its figure.
    assert f"| leafnet | {leafnet['ms_per_image']:.1f} |" in result.stdout
    assert "| torch+tuned+cl |" in result.stdout
    assert f"conv1 bands of {banded.band_bytes() / 2**20:g} MiB" in result.stdout
    assert (
        "(fused and pytorch kernels)" if fused == "fused" else "(pytorch kernels)"
    ) in result.stdout
    assert "cpu, leafnet precision 32-true" in result.stdout
    assert "predict, JPEG decode included, 8 files: leafnet" in result.stdout
    assert report["command"] == "python -m leafnet.lab.bench " + " ".join(args)


@pytest.mark.slow  # a benchmark run, ~40 s on 2 cores
def test_lockstep_bench_pairs_each_step_with_the_references(tmp_path: Path) -> None:
    args = (
        *("lockstep=true", "image_size=32", "batch_size=4", "steps=4", "warmup=1", "rounds=2"),
        "contenders=[torch+tuned+cl,torch+tuned+cl+static+2mib,torch+tuned+cl+unbanded]",
        "data_pipeline=false",
    )
    result = bench(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(next((tmp_path / "outputs" / "bench").glob("*.json")).read_text())
    assert report["config"]["lockstep"] is True
    assert len(report["host_samples"]) == 5  # before the first cycle and after each of four
    first, second = (
        report["contenders"][n] for n in ("torch+tuned+cl", "torch+tuned+cl+static+2mib")
    )
    for row in (first, second):
        assert row["steps_timed"] == 4 and len(row["round_ms_per_image"]) == 2
        assert -1 <= row["host_correlation"] <= 1
    assert first["band_bytes"] == banded.band_bytes() and second["band_bytes"] == 2 << 20
    assert "band_bytes" not in report["contenders"]["torch+tuned+cl+unbanded"]  # conv1 whole
    assert "lockstep" not in first  # the reference
    pair = second["lockstep"]
    assert pair["reference"] == "torch+tuned+cl"
    ratios = [a / b for a, b in zip(first["step_s"], second["step_s"], strict=True)]
    assert pair["ratio_p10"] <= pair["ratio_median"] <= pair["ratio_p90"]
    assert min(ratios) <= pair["ratio_median"] <= max(ratios)
    assert "steps in lockstep, cut into 2 rounds" in result.stdout
    assert (
        "| torch+tuned+cl+static+2mib |" in result.stdout
        and "speed against torch+tuned+cl" in result.stdout
    )


def test_bench_refuses_a_gpu_it_does_not_have(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the bench writes under ./outputs/bench
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # any machine: no GPU
    err = run_error(capsys, ["accelerator=gpu", "contenders=leafnet"], bench_main)
    assert "no CUDA GPU is visible here; use accelerator=cpu" in err
    assert not (tmp_path / "outputs").exists()  # nothing generated for a run that cannot start


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("steps=0", "steps=0 is not valid: use a positive integer"),
        ("image_size=abc", "image_size='abc' is not valid: use an integer from 6 to 8192"),
        ("precision=8-bit", "use 32-true, 16-mixed or bf16-mixed"),
        ("contenders=[leafnet,tf2]", "contenders: 'tf2' is unknown"),
        ("data_dir=no/such/folder", "data_dir=no/such/folder is not a folder"),
        ("lockstep=yes", "lockstep='yes' is not valid: use true or false"),
        ("command_epochs=2", "command_epochs=2 is not valid: use an integer of at least 3"),
    ],
)
def test_bench_refuses_bad_keys_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    arg: str,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    err = run_error(capsys, [arg], bench_main)
    assert message in err
    assert not (tmp_path / "outputs").exists()


def test_the_flop_count_is_the_hand_count() -> None:
    # 640 px, multiply-adds per image: conv1 640^2 x 32 x 27, conv2 213^2 x 16 x 288, dense
    # 179,776 x 8, dense_1 8 x 3; training = forward + weight grads + input grads, less conv1's
    # input grads: 2 FLOPs x (3 x 564,392,984 - 353,894,400).
    assert train_flops_per_image(640) == 2_678_569_104


ARGS = WorkerArgs(
    image_size=32, batch=4, micro=4, micro_fixed=False, warmup=1, data_dir="d", cache_dir="c",
    out_dir="o",
)  # fmt: skip


def test_a_worker_killed_by_a_signal_is_reported_as_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Keras at batch 256 and 640 px outgrows a 24 GiB host: the kernel kills its worker, whose
    # last log lines (TensorFlow's start-up noise) say nothing of why.
    from leafnet.lab import bench as bench_module

    def killed(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, -9, "", "I0000 oneDNN custom operations are on.")

    monkeypatch.setattr(bench_module.subprocess, "run", killed)
    result = bench_module.spawn("keras-tf-fit", ARGS, timeout=10)
    assert result == {"error": "killed by SIGKILL (the kernel's OOM killer, if memory ran out)"}


def test_a_worker_killed_by_an_unnamed_signal_is_reported_by_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from leafnet.lab import bench as bench_module

    def killed(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, -36, "", "")  # a real-time signal: no name

    monkeypatch.setattr(bench_module.subprocess, "run", killed)
    assert bench_module.spawn("keras-tf", ARGS, timeout=10) == {"error": "killed by signal 36"}


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _SlowEpochs(pl.Callback):
    """Costs 0.3 s at the start of the first epoch only (a warm-up the steady epochs leave out),
    and 0.1 s at the end of every epoch, after the epoch's own hooks (which an epoch's time
    between its start and end hooks would miss)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 0:
            time.sleep(0.3)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        time.sleep(0.1)


def test_the_commands_epochs_are_timed_whole_and_only_when_steady(tmp_path: Path) -> None:
    from leafnet.lab.contenders import EpochProfiler, epoch_breakdown, epoch_cycles

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 2)), 2)
    trainer = pl.Trainer(
        max_epochs=4, profiler=EpochProfiler(dirpath=tmp_path, filename="profile"),
        callbacks=[_SlowEpochs()], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(_Tiny(), data)
    report = json.loads((tmp_path / "fit-profile.txt").read_text())
    starts = report["epoch_starts"]
    assert len(starts) == len(report["epoch_ends"]) == 4
    # Epochs 2 and 3, each from its start to the next one's: 4 batches each.
    batches = report["durations"]["run_training_batch"]
    assert len(batches[starts[1]["run_training_batch"] : starts[-1]["run_training_batch"]]) == 8
    cycles = epoch_cycles(report)
    assert len(cycles) == 2 and all(0.1 <= c < 0.3 for c in cycles)  # the end hook in, warm-up out
    parts = epoch_breakdown(report, images=8)
    assert parts["step"] > 0
    assert parts["callback _SlowEpochs"] == pytest.approx(100 / 8, rel=0.2)  # ms per image
    assert sum(parts.values()) <= 1000 * max(cycles) / 8


def test_a_command_that_stops_before_a_steady_epoch_is_an_error_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that diverges in its second epoch leaves no epoch timed from start to start."""
    from dataclasses import replace

    from leafnet.lab import contenders

    def stopped_early(cmd, **kwargs):
        run_dir = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        run_dir.mkdir(parents=True)
        counts = {"run_training_batch": 0}
        profile = {"epoch_starts": [counts, counts], "epoch_ends": [counts, counts],
                   "epoch_start_s": [0.0, 1.0], "durations": {"run_training_batch": []}}  # fmt: skip
        (run_dir / "fit-profile.txt").write_text(json.dumps(profile))
        classes = {"a": {"train": 4, "val": 1, "test": 1}}
        (run_dir / "data_report.json").write_text(json.dumps({"classes": classes}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(contenders.subprocess, "run", stopped_early)
    out = contenders.work_command(replace(ARGS, out_dir=str(tmp_path), epochs=3), [])
    assert "stopped before its third epoch began" in out["error"]


def test_the_commands_parts_and_rest_add_up_to_the_epochs_they_were_summed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steady epochs of 1.2, 0.6 and 0.6 s (median 0.6, mean 0.8), 0.5 s of steps each: the
    shares are of the mean, the epochs the parts are summed over, so they add up to 1 and the
    rest is what the parts leave (0.3 of 0.8 s), not a median's leftover."""
    from dataclasses import replace

    from leafnet.lab import contenders

    real_run = subprocess.run

    def steady_run(cmd, **kwargs):
        if "leafnet.train" not in cmd:  # e.g. the compiler's version, for the report
            return real_run(cmd, **kwargs)
        run_dir = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        run_dir.mkdir(parents=True)
        starts = [{"run_training_batch": i} for i in range(5)]  # one batch an epoch
        profile = {"epoch_starts": starts, "epoch_ends": starts,
                   "epoch_start_s": [0.0, 2.0, 3.2, 3.8, 4.4],
                   "durations": {"run_training_batch": [0.5] * 5}}  # fmt: skip
        (run_dir / "fit-profile.txt").write_text(json.dumps(profile))
        classes = {"a": {"train": 4, "val": 1, "test": 1}}
        (run_dir / "data_report.json").write_text(json.dumps({"classes": classes}))
        summary = {"micro_batch_size": 4, "peak_rss_gb": 1.0}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(contenders.subprocess, "run", steady_run)
    out = contenders.work_command(replace(ARGS, out_dir=str(tmp_path), epochs=5), [])
    shares = out["breakdown_share"]
    assert shares["step"] == pytest.approx(0.5 / 0.8)
    assert shares["rest (Lightning's loop, logging)"] == pytest.approx(0.3 / 0.8)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_lockstep_refuses_contenders_that_cannot_take_one_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    err = run_error(capsys, ["lockstep=true", "contenders=[torch,command,leafnet]"], bench_main)
    assert "lockstep=true: command, leafnet cannot be timed a step at a time" in err
    assert not (tmp_path / "outputs").exists()  # refused before any data is generated


# A stand-in worker: notes each step it takes in a shared file; at its second step "broken"
# ends and "stuck" stops answering.
FAKE_WORKER = """
import json, sys, time
from leafnet.lab.worker import LOCKSTEP_READY, LOCKSTEP_STEP
name, steps_file = sys.argv[1:]
print("warming up", flush=True)
print(LOCKSTEP_READY, flush=True)
times = []
for line in sys.stdin:
    if name == "broken" and times:
        sys.exit(1)
    if name == "stuck" and times:
        time.sleep(60)
    with open(steps_file, "a") as f:
        f.write(name + "\\n")
    times.append(0.1 * len(times) + (0.05 if name == "b" else 0.1))
    print(LOCKSTEP_STEP + str(times[-1]), flush=True)
print("BENCH_RESULT " + json.dumps({"times": times}), flush=True)
"""


def test_lockstep_hands_out_single_steps_in_turn(tmp_path: Path) -> None:
    """Each worker warms up alone, then takes one step when asked, the order reversed every
    cycle; a worker that ends early is reported and the others go on."""
    steps_file = tmp_path / "steps.txt"

    def popen(name: str, args: WorkerArgs, stderr) -> subprocess.Popen:
        assert args.lockstep
        return subprocess.Popen(
            [sys.executable, "-c", FAKE_WORKER, name, str(steps_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip

    base = WorkerArgs(
        image_size=32, batch=4, micro=4, micro_fixed=False, warmup=1,
        data_dir="", cache_dir="", out_dir=str(tmp_path),
    )  # fmt: skip
    host = iter([300.0, 150.0, 100.0])  # the host slows as the steps do
    sampled: list[str] = []

    def sample() -> dict[str, float]:
        sampled.append(steps_file.read_text().split()[-1])  # after each cycle's last step
        return {"matmul_gflops": next(host)}

    raw, samples = run_lockstep(["a", "broken", "b"], base, 3, popen, sample)
    assert steps_file.read_text().split() == ["a", "broken", "b", "b", "a", "a", "b"]
    assert sampled == ["b", "a", "b"] and len(samples) == 3
    assert raw["a"] == [{"times": pytest.approx([0.1, 0.2, 0.3])}]
    assert raw["broken"] == [{"error": "the worker ended in cycle 2"}]
    rounds = as_rounds(raw["b"][0], 2)
    assert [r["times"] for r in rounds] == [pytest.approx([0.05, 0.15]), pytest.approx([0.25])]
    pairs = paired({"a": raw["a"][0]["times"], "b": raw["b"][0]["times"]}, "a")
    assert pairs["b"]["ratio_median"] == pytest.approx(0.2 / 0.15)  # b is faster than a
    assert pairs["b"]["correlation"] == pytest.approx(1.0)  # they slow down together
    assert host_correlation(raw["a"][0]["times"], samples) > 0.9  # and with the host
    assert host_correlation(raw["a"][0]["times"], samples[:2]) is None  # not the same cycles


def test_lockstep_kills_a_worker_that_stops_answering(tmp_path: Path) -> None:
    """A worker silent for longer than the bench's timeout is killed and reported as timed out;
    the others finish their steps."""
    steps_file = tmp_path / "steps.txt"
    procs: list[subprocess.Popen] = []

    def popen(name: str, args: WorkerArgs, stderr) -> subprocess.Popen:
        procs.append(subprocess.Popen(
            [sys.executable, "-c", FAKE_WORKER, name, str(steps_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
        ))  # fmt: skip
        return procs[-1]

    base = WorkerArgs(
        image_size=32, batch=4, micro=4, micro_fixed=False, warmup=1,
        data_dir="", cache_dir="", out_dir=str(tmp_path),
    )  # fmt: skip
    start = time.monotonic()
    raw, _ = run_lockstep(["stuck", "a"], base, 3, popen, timeout=2)
    assert time.monotonic() - start < 30  # not the stuck worker's 60 s
    assert raw["stuck"] == [{"error": "timed out after 2 s in cycle 2"}]
    assert raw["a"] == [{"times": pytest.approx([0.1, 0.2, 0.3])}]
    assert all(p.poll() is not None for p in procs)  # no worker left running


def test_the_share_outside_the_step_is_each_rounds_own_whatever_the_host_did_between_them() -> None:
    """Three rounds on a drifting host: 10%, 10% and 20% of each epoch outside the step. The
    median step (12) and the median epoch (15) come from different rounds and would say 20%."""
    from leafnet.lab.bench import contender_row
    from leafnet.lab.bench_report import format_table

    def round_(epoch: float, step: float) -> dict[str, object]:
        parts = {"step": step, "validation": epoch - step}
        shares = {k: v / epoch for k, v in parts.items()}
        times = [epoch * 32 / 1000] * 3  # seconds per batch of 32
        return {"times": times, "breakdown_ms_per_image": parts, "breakdown_share": shares}

    rounds = [round_(10.0, 9.0), round_(20.0, 18.0), round_(15.0, 12.0)]
    row = contender_row(rounds, batch=32, flops=1e9, peak=1e12)
    assert row["ms_per_image"] == pytest.approx(15.0)
    assert row["breakdown_ms_per_image"]["step"] == pytest.approx(12.0)
    assert row["outside_share_rounds"] == pytest.approx([0.1, 0.1, 0.2])
    assert row["outside_share"] == pytest.approx(0.1)
    report = {
        "date": "2026-12-07T08:00:00", "train_gflop_per_image": 2.68, "roofline_gflops": 250.0,
        "copy_gbs": 20.0, "host_samples": [{"matmul_gflops": 250.0}],
        "machine": {"cpu": "a CPU", "threads": 2, "torch": "2", "load_avg_1m": 0.5},
        "config": {"image_size": 640, "batch": 32, "micro_batch": 32, "steps": 15, "warmup": 2,
                   "rounds": 3},
        "contenders": {"command": row},
    }  # fmt: skip
    table = format_table(report)
    assert "outside the command's step (every part but the first): 10.0% of the epoch" in table
    assert "(the median of the rounds' own, 10.0%-20.0%)" in table
    assert "| validation | 2.00 | 10.0% |" in table  # the rounds' median share, not 2.0 of 15


def test_the_table_says_how_the_host_moved_and_how_much_of_the_epoch_is_outside_the_step() -> None:
    from leafnet.lab.bench_report import format_table

    def row(ms: float, **extra: object) -> dict[str, object]:
        return {"ms_per_image": ms, "round_ms_per_image": [ms], "spread": 0.0, "gflops": 1.0,
                "roofline_share": 0.5, "peak_rss_gb": 1.0, **extra}  # fmt: skip

    parts = {"step": 16.0, "validation": 3.0, "checkpoint writes": 1.0}
    report = {
        "date": "2026-12-07T08:00:00", "train_gflop_per_image": 2.68, "roofline_gflops": 250.0,
        "copy_gbs": 20.0, "host_samples": [{"matmul_gflops": g} for g in (200.0, 300.0, 250.0)],
        "machine": {"cpu": "a CPU", "threads": 2, "torch": "2", "load_avg_1m": 0.5},
        "config": {"image_size": 640, "batch": 32, "micro_batch": 32, "steps": 15, "warmup": 2,
                   "rounds": 5},
        "contenders": {"command": row(20.0, breakdown_ms_per_image=parts),
                       "torch+tuned+cl": row(18.0)},
    }  # fmt: skip
    table = format_table(report)
    # (300 - 200) / 250: the host's own spread, reckoned as the contenders' is.
    assert "matmul 250 GFLOP/s (samples 200-300, spread 40%)" in table
    # 4 of the epoch's 20 ms/image are outside the step; the epoch is 20 / 18 of the bare loop.
    assert "outside the command's step (every part but the first): 20.0% of the epoch" in table
    assert "the epoch against the step alone (torch+tuned+cl, 18.0 ms/image): +11.1%" in table
    report["contenders"]["leafnet"] = row(19.0)  # leafnet's own step, where it ran, comes first
    assert "(leafnet, 19.0 ms/image): +5.3%" in format_table(report)
    # The workers' OpenMP wait policy, where the run recorded it (older reports have none).
    assert "OpenMP" not in table
    report["machine"]["omp_wait_policy"] = "PASSIVE"
    assert "load 0.5, OpenMP waits PASSIVE" in format_table(report)
