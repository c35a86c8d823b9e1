"""The bench's torch-side contenders, each run inside its own worker subprocess (`lab.worker`).

- `leafnet`: `LeafClassifier` fitted by Lightning's Trainer from the `LeafDataModule` cache,
  timed end-of-batch to end-of-batch (loading, uint8->float, logging and the optimizer step in);
- `command`: `python -m leafnet.train` itself, `epochs` epochs on the bench's folder, its steady
  epochs (all but the first) timed from its own metrics.csv, with Lightning's profiler saying
  where each epoch's time goes outside the step;
- `torch[+options]`: a bare PyTorch loop over the same `LeafNet`;
- side measurements: cached batches per second, prediction on JPEG files.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.profilers import SimpleProfiler

from leafnet.adapters.pytorch import profiler
from leafnet.config import compose, to_primitive
from leafnet.data.datamodule import LeafDataModule
from leafnet.lab.worker import WorkerArgs, jpegs, timed
from leafnet.perf import allocator_state, physical_cores, tune_process


def steps_trainer(
    max_steps: int,
    callbacks: list[Any] | None = None,
    accelerator: str = "cpu",
    precision: str = "32-true",
) -> pl.Trainer:
    """A one-device Trainer that only trains `max_steps` steps: no validation, logger, checkpoints."""
    return pl.Trainer(
        accelerator=accelerator,
        precision=precision,
        devices=1,
        max_steps=max_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks or [],
    )


def _datamodule(a: WorkerArgs) -> LeafDataModule:
    """The training config's `LeafDataModule` on the bench's image folder."""
    cfg = compose("train", [f"data.image_size={a.image_size}"])
    data = {**to_primitive(cfg.data), "dir": a.data_dir, "synthetic": False}
    data["cache_dir"] = a.cache_dir
    return LeafDataModule(**data, batch_size=a.batch, seed=0)


class StepTimer(pl.Callback):
    """End-of-batch to end-of-batch: everything a training step costs, loading included. Notes
    the allocator and memory layout before the first step; profiles the steps after warm-up
    when asked."""

    def __init__(self, a: WorkerArgs) -> None:
        self.a = a
        self.last = 0.0
        self.times: list[float] = []
        self.info: dict[str, Any] = {}
        self.prof: Any = None
        self.prof_start = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if "allocator" not in self.info:
            # Before the first step: afterwards the heap holds GBs of free memory, which serves
            # the 48 MB probe whatever the threshold (allocator_state says None).
            self.info["allocator"] = allocator_state()
            x = module.to_input(batch[0][:1])  # what the network is fed, per micro-batch
            cl = torch.channels_last
            self.info["batch_channels_last"] = x.is_contiguous(memory_format=cl)
            self.info["weights_channels_last"] = module.net.conv2d.weight.is_contiguous(
                memory_format=cl
            )
            self.info["channels_last"] = (
                self.info["batch_channels_last"] and self.info["weights_channels_last"]
            )
        if self.a.profile and trainer.global_step == self.a.warmup and self.prof is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if module.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = profiler(activities)
            self.prof.__enter__()
            self.prof_start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if module.device.type == "cuda":  # the bench's own sync: kernels run async
            torch.cuda.synchronize()
        now = time.perf_counter()
        # Only full optimizer batches count: an epoch's smaller last batch (at batch 256 the
        # bench set holds one full batch per epoch) would pass for a very fast full one.
        if trainer.global_step > self.a.warmup and len(batch[1]) == self.a.batch:
            self.times.append(now - self.last)
        self.last = now

    def profile_report(self) -> dict[str, Any]:
        if self.prof is None:
            return {}
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
        wall = time.perf_counter() - self.prof_start
        self.prof.__exit__(None, None, None)
        report: dict[str, Any] = {"profile": _profile_rows(self.prof, self.a.steps)}
        device_s = sum(e.self_device_time_total for e in self.prof.key_averages()) / 1e6
        if device_s > 0:  # kernels on one stream: their time over the wall time of the steps
            report["gpu_busy_share"] = device_s / wall
        return report


def work_leafnet(a: WorkerArgs) -> dict[str, Any]:
    """Lightning's Trainer fitting `LeafClassifier` from the `LeafDataModule` cache."""
    from leafnet.module import LeafClassifier

    tune_process()  # what leafnet.train does first
    cfg = compose("train", [f"data.image_size={a.image_size}"])
    datamodule = _datamodule(a)
    datamodule.setup("fit")
    classifier = LeafClassifier(
        model={"image_size": a.image_size, "num_classes": len(datamodule.class_names)},
        optimizer=to_primitive(cfg.optimizer),
        lr=float(cfg.lr),
        class_names=datamodule.class_names,
        preprocessing=datamodule.preprocessing.to_dict(),
        micro_batch_size=a.micro,
    )
    timer = StepTimer(a)
    trainer = steps_trainer(a.warmup + a.steps, [timer], a.accelerator, a.precision)
    trainer.fit(classifier, datamodule=datamodule)
    return {
        "times": timer.times,
        **timer.info,
        **timer.profile_report(),
        **_band_info(a.accelerator != "gpu", str(a.precision)),
    }


def _band_info(on_cpu: bool, precision: str = "32-true") -> dict[str, Any]:
    """Where conv1 trained in bands: the conv output a band of leafnet.banded held, and whose
    kernels computed them ("fused": leafnet.kernels' C kernel, "pytorch": PyTorch's). Under
    mixed precision only the C kernel takes the bands (LeafNet._banded_now)."""
    from leafnet import banded

    if not on_cpu:
        return {}
    fused = banded.fused_available()
    if "mixed" in precision and not fused:
        return {}
    return {"band_bytes": banded.band_bytes(), "conv1_kernel": "fused" if fused else "pytorch"}


def _profile_rows(prof: Any, steps: int, top: int = 10) -> list[dict[str, Any]]:
    """The ops that hold the most self CPU time, per step."""
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1.0
    return [
        {
            "op": e.key,
            "ms_per_step": round(e.self_cpu_time_total / 1000 / steps, 2),
            "share": round(e.self_cpu_time_total / total, 3),
            "calls_per_step": round(e.count / steps, 1),
        }
        for e in rows
    ]


# -- the training command ----------------------------------------------------------------------


class EpochProfiler(SimpleProfiler):
    """Lightning's SimpleProfiler noting how many calls of each action came before each training
    epoch began (its first `on_train_epoch_start` hook) and after it ended (its last
    `on_train_epoch_end` hook), and when each epoch began; its report as JSON: the steady
    epochs' share of every action can then be read."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epoch_starts: list[dict[str, int]] = []
        self.epoch_ends: list[dict[str, int]] = []
        self.epoch_start_s: list[float] = []

    def _counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.recorded_durations.items()}

    def start(self, action_name: str) -> None:
        between_epochs = len(self.epoch_starts) == len(self.epoch_ends)
        if action_name.endswith(".on_train_epoch_start") and between_epochs:
            self.epoch_starts.append(self._counts())
            self.epoch_start_s.append(time.perf_counter())
        super().start(action_name)

    def stop(self, action_name: str) -> None:
        super().stop(action_name)
        if action_name.endswith(".on_train_epoch_end") and self.epoch_starts:
            if len(self.epoch_ends) < len(self.epoch_starts):
                self.epoch_ends.append({})
            self.epoch_ends[-1] = self._counts()

    def summary(self) -> str:
        return json.dumps(
            {
                "epoch_starts": self.epoch_starts,
                "epoch_ends": self.epoch_ends,
                "epoch_start_s": self.epoch_start_s,
                "durations": self.recorded_durations,
            }
        )


# Where a steady epoch's time goes, by profiler action: (row, what the action's name holds).
# The step and the loader are per batch; the rest is what the command does beyond the step.
EPOCH_PARTS = (
    ("step", "run_training_batch"),
    ("data loading", "[_TrainingEpochLoop].train_dataloader_next"),
    ("validation", "[Strategy]SingleDeviceStrategy.validation_step"),
    ("validation loading", "[_EvaluationLoop].val_next"),
    ("checkpoint writes", "save_checkpoint"),
)


def epoch_cycles(profile: dict[str, Any]) -> list[float]:
    """Seconds from each steady epoch's start to the next epoch's (from the second epoch on): its
    whole cost, the loop's work between epochs and every end-of-epoch hook included."""
    starts = profile.get("epoch_start_s", [])
    return [b - a for a, b in itertools.pairwise(starts[1:])]


def epoch_breakdown(profile: dict[str, Any], images: int) -> dict[str, float]:
    """ms per training image of each part of the steady epochs (`epoch_cycles`), from an
    `EpochProfiler` report: the step, the loaders, validation, checkpoint writes, and each
    callback (its hooks summed; the checkpoint writes inside `AtomicCheckpoint`'s not twice).
    The parts do not nest: what they leave of the epochs is Lightning's own loop."""
    starts, durations = profile["epoch_starts"], profile["durations"]
    if len(starts) < 3:
        return {}
    # Calls from the second epoch's start to the last epoch's start.
    steady = {k: sum(v[starts[1].get(k, 0) : starts[-1].get(k, 0)]) for k, v in durations.items()}
    per_image = 1000 / (images * (len(starts) - 2))
    parts = {row: steady.get(action, 0.0) * per_image for row, action in EPOCH_PARTS}
    for action, seconds in steady.items():
        if action.startswith("[Callback]"):
            name = action.removeprefix("[Callback]").split("{")[0].rsplit(".", 1)[0]
            key = f"callback {name}"
            parts[key] = parts.get(key, 0.0) + seconds * per_image
    if "callback AtomicCheckpoint" in parts:
        parts["callback AtomicCheckpoint"] -= parts["checkpoint writes"]
    return parts


def work_command(a: WorkerArgs, extra: list[str]) -> dict[str, Any]:
    """`python -m leafnet.train` on the bench's folder at the bench's size and batch, `a.epochs`
    epochs, with the `extra` overrides; its steady epochs' time per training image, each from its
    start to the next epoch's (`epoch_cycles`). With `extra` given (it changes the network) and no
    micro-batch fixed for the bench, the command picks its own micro-batch, as a user's run
    would."""
    run_dir = Path(a.out_dir) / "command" / time.strftime("%Y-%m-%d_%H-%M-%S")
    overrides = [
        "data=folder", f"data.dir={a.data_dir}", f"data.cache_dir={a.cache_dir}",
        f"data.image_size={a.image_size}", f"batch_size={a.batch}",
        f"micro_batch_size={a.micro if a.micro_fixed or not extra else 'auto'}",
        f"epochs={a.epochs}", f"trainer.accelerator={a.accelerator}", f"precision={a.precision}",
        f"hydra.run.dir={run_dir}", "+trainer.profiler._target_=leafnet.lab.contenders.EpochProfiler",
        f"+trainer.profiler.dirpath={run_dir}", "+trainer.profiler.filename=profile",
    ]  # fmt: skip
    replaced = {e.split("=")[0] for e in extra}  # each key once: `extra` wins
    overrides = [o for o in overrides if o.split("=")[0] not in replaced] + extra
    done = subprocess.run(
        [sys.executable, "-m", "leafnet.train", *overrides], capture_output=True, text=True
    )
    if done.returncode != 0:
        return {"error": " | ".join(done.stderr.strip().splitlines()[-2:])}
    classes = json.loads((run_dir / "data_report.json").read_text())["classes"]
    images = sum(c["train"] for c in classes.values())
    profile = json.loads((run_dir / "fit-profile.txt").read_text())
    cycles = epoch_cycles(profile)  # the first epoch is the warm-up
    if not cycles:  # stopped early (diverged): no steady epoch followed by another
        return {
            "error": f"the command stopped before its third epoch began; see {run_dir}/train.log"
        }
    parts = epoch_breakdown(profile, images)
    # The mean over the epochs the parts are summed over: the parts and the rest then add up to it.
    epoch_ms = statistics.mean(cycles) * 1000 / images
    parts["rest (Lightning's loop, logging)"] = epoch_ms - sum(parts.values())
    summary = json.loads((run_dir / "summary.json").read_text())
    setting = dict(o.split("=", 1) for o in overrides if "=" in o)  # not `~key` deletions
    return {
        "times": [c * a.batch / images for c in cycles],  # per optimizer batch
        "train_images": images,
        "micro_batch": summary["micro_batch_size"],
        "peak_rss_gb": summary["peak_rss_gb"],  # the training process', not this worker's
        "breakdown_ms_per_image": parts,
        "breakdown_share": {k: v / epoch_ms for k, v in parts.items()},
        "run_dir": str(run_dir),
        # This worker's environment and compiler are the training process'.
        **_band_info(
            a.accelerator != "gpu" and setting.get("model.conv1_in_bands") != "false",
            setting["precision"],
        ),
    }


# -- the bare loop, the data pipeline, prediction ------------------------------------------------


def work_torch(a: WorkerArgs, options: set[str], micro: int) -> dict[str, Any]:
    """A bare PyTorch loop over LeafNet: Adam, cross-entropy, micro-batches of `micro`."""
    import torch.nn.functional as F

    from leafnet import banded
    from leafnet.model import LeafNet

    if "tuned" in options:
        tune_process()
    else:
        torch.set_num_threads(physical_cores())
    device = torch.device("cuda" if a.accelerator == "gpu" else "cpu")
    fmt = torch.channels_last if "cl" in options else torch.contiguous_format
    if "serial" in options:
        banded.PER_CORE = False
    if "static" in options:
        banded.HAND_OUT = False
    if "2mib" in options:  # the fixed budget before bands followed the L3
        banded.band_bytes = lambda: banded.MIN_BAND_BYTES
    if "unbanded" in options:  # conv1 layer by layer, as before leafnet.banded
        LeafNet.banded = False
    net = LeafNet(a.image_size).to(device=device, memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, eps=1e-7)
    run = torch.compile(net) if "compile" in options else net
    shape = (a.batch, 3, a.image_size, a.image_size)
    x8 = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    y = torch.randint(0, 3, (a.batch,), device=device)

    def step() -> None:
        x = x8.float().mul_(1 / 255).contiguous(memory_format=fmt)
        opt.zero_grad(set_to_none=True)
        for xc, yc in zip(x.split(micro), y.split(micro), strict=True):
            (F.cross_entropy(run(xc), yc, reduction="sum") / len(x)).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    allocator = allocator_state()  # before the first step, as for leafnet
    times = timed(step, a)
    return {
        "times": times,
        "allocator": allocator,
        "micro_batch": micro,
        **_band_info(device.type == "cpu" and "unbanded" not in options),
    }


def work_predict(a: WorkerArgs) -> dict[str, Any]:
    """Prediction on a folder of JPEGs through `data.images` (decode + resize + network)."""
    from leafnet.data.images import Preprocessing, load_for_model, to_float
    from leafnet.model import LeafNet

    tune_process()
    prep = Preprocessing(image_size=a.image_size)
    net = LeafNet(a.image_size).to(memory_format=torch.channels_last).eval()
    files = jpegs(a)

    def run(paths: list[Path]) -> None:
        for i in range(0, len(paths), a.predict_batch):
            x = torch.stack([load_for_model(p, prep) for p in paths[i : i + a.predict_batch]])
            with torch.inference_mode():
                net(to_float(x, prep).contiguous(memory_format=torch.channels_last)).softmax(-1)

    run(files[: a.predict_batch])  # warm-up
    t = time.perf_counter()
    run(files)
    elapsed = time.perf_counter() - t
    # The data pipeline alone: decode + resize cold (no cache), then batches from the cache.
    t = time.perf_counter()
    for p in files:
        load_for_model(p, prep)
    decode = time.perf_counter() - t
    return {
        "predict_images": len(files),
        "predict_images_per_s": len(files) / elapsed,
        "decode_resize_images_per_s": len(files) / decode,
    }


def work_cached(a: WorkerArgs) -> dict[str, Any]:
    """Batches per second out of the `LeafDataModule` cache, scaled to float as trained."""
    from leafnet.data.images import to_float

    tune_process()
    dm = _datamodule(a)
    t = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - t
    n = 0
    t = time.perf_counter()
    # Whole epochs (a loader per epoch, as the Trainer makes them) for at least a second.
    while time.perf_counter() - t < 1.0 or n < 4 * a.batch:
        for x, _y in dm.train_dataloader():
            to_float(x, dm.preprocessing).contiguous(memory_format=torch.channels_last)
            n += len(x)
    return {"cached_images_per_s": n / (time.perf_counter() - t), "setup_s": setup_s}
