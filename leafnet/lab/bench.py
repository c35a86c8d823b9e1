"""`python -m leafnet.lab.bench`: leafnet's training step against a bare torch loop and Keras, in one run.

    python -m leafnet.lab.bench                                   # 640 px, batch 32, the defaults
    python -m leafnet.lab.bench contenders=[leafnet,torch+tuned+cl] image_size=128 profile=true
    python -m leafnet.lab.bench --help                            # every key (conf/bench.yaml)

Every contender runs in its own subprocess (a process can hold one Keras backend, and each
contender's peak RSS and allocator state must be its own). Contenders alternate: the timed steps
are spread over `rounds` rounds and each round visits every contender, so a noisy neighbour on
a shared CPU hits all of them alike; the table gives the median and the per-round spread. Each
process warms up first.

Contenders:
  leafnet              the real thing: `LeafClassifier` fitted by Lightning's Trainer from the
                       `LeafDataModule` cache (timed end-of-batch to end-of-batch, so data loading,
                       uint8->float, logging and the optimizer step are all inside)
  leafnet+bf16         the same at precision=bf16-mixed (fast on CPUs with AMX, e.g. Sapphire Rapids)
  torch[+opts]         a bare PyTorch loop over the same `LeafNet`; options: +tuned (leafnet.perf
                       allocator/threads), +cl (channels_last), +compile (torch.compile),
                       +unbanded (conv1 layer by layer, not leafnet.banded; its own auto micro-batch),
                       +serial (leafnet.banded's bands one at a time over all cores, not one per core)
  keras-tf-fit         the seed's Keras model as its users train it: `model.fit` on
                       `image_dataset_from_directory` over the same JPEG files (TensorFlow)
  keras-tf-fit-numpy   `model.fit` on numpy arrays already in memory (TensorFlow)
  keras-tf             `train_on_batch` on one fixed batch: Keras' step alone (TensorFlow)
  keras-torch          `train_on_batch` on Keras' torch backend

Beside them, in the same run: the host's fp32 4096x4096 matmul (the compute roofline) and its
memory copy bandwidth, before the first and after every round; the data pipeline (cold
decode+resize, cached batches per second); prediction on a folder of JPEGs, decode included, by
leafnet and by the Keras model through `tf.data` (what `image_dataset_from_directory` does). JSON
goes to `<out>/<date_time>.json`, a table to the terminal.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from leafnet.config import command_config, to_primitive
from leafnet.errors import LeafnetError, cli_errors
from leafnet.files import write_text
from leafnet.tables import markdown_table

# Keras contenders and the backend each runs on.
KERAS_BACKENDS = {
    "keras-tf-fit": "tensorflow",
    "keras-tf-fit-numpy": "tensorflow",
    "keras-tf": "tensorflow",
    "keras-torch": "torch",
}


# -- FLOPs and the roofline -------------------------------------------------------------------------


def train_flops_per_image(image_size: int) -> float:
    """FLOPs (2 per multiply-add) of one training image: forward, weight grads, input grads.

    Backward costs two forward passes for every layer except the first convolution, whose input
    (the image) needs no gradient: 2 x (3 x forward - conv1) multiply-adds.
    """
    from leafnet.model import LeafNet

    net = LeafNet(image_size)
    conv1 = image_size**2 * net.conv2d.out_channels * net.in_channels * 9
    return 2.0 * (3 * net.forward_flops() - conv1)


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    """Median GFLOP/s of an fp32 n x n matmul on this process' threads: the compute roofline."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def copy_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Median GB/s of copying a `megabytes` buffer on this process' threads, reads and writes
    counted: the memory bandwidth a step that streams its activations through DRAM gets."""
    import torch

    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9


# -- the contenders (run inside worker subprocesses) -------------------------------------------------


def _peak_rss_gb() -> float:
    from leafnet.perf import peak_rss_bytes

    return peak_rss_bytes() / 2**30


def steps_trainer(
    max_steps: int,
    callbacks: list[Any] | None = None,
    accelerator: str = "cpu",
    precision: str = "32-true",
) -> Any:
    """A one-device Trainer that only trains `max_steps` steps: no validation, logger, checkpoints."""
    import lightning.pytorch as pl

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


def _datamodule(a: dict[str, Any]) -> Any:
    """The training config's `LeafDataModule` on the bench's image folder."""
    from leafnet.config import compose, to_primitive
    from leafnet.data.datamodule import LeafDataModule

    cfg = compose("train", [f"data.image_size={a['image_size']}"])
    data = {**to_primitive(cfg.data), "dir": a["data_dir"], "synthetic": False}
    data["cache_dir"] = a["cache_dir"]
    return LeafDataModule(**data, batch_size=a["batch"], seed=0)


def _work_leafnet(a: dict[str, Any]) -> dict[str, Any]:
    """Lightning's Trainer fitting `LeafClassifier` from the `LeafDataModule` in-memory cache."""
    import lightning.pytorch as pl
    import torch

    from leafnet.config import compose, to_primitive
    from leafnet.module import LeafClassifier
    from leafnet.perf import allocator_state, tune_process

    tune_process()  # what leafnet.train does first
    cfg = compose("train", [f"data.image_size={a['image_size']}"])
    datamodule = _datamodule(a)
    datamodule.setup("fit")
    classifier = LeafClassifier(
        model={"image_size": a["image_size"], "num_classes": len(datamodule.class_names)},
        optimizer=to_primitive(cfg.optimizer),
        lr=float(cfg.lr),
        class_names=datamodule.class_names,
        preprocessing=datamodule.preprocessing.to_dict(),
        micro_batch_size=a["micro"],
    )
    info: dict[str, Any] = {}

    class StepTimer(pl.Callback):
        """End-of-batch to end-of-batch: everything a training step costs, loading included."""

        def __init__(self) -> None:
            self.last = 0.0
            self.times: list[float] = []
            self.prof: Any = None
            self.prof_start = 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if "allocator" not in info:
                # Before the first step: afterwards the heap holds GBs of free memory, which
                # serves the 48 MB probe whatever the threshold (allocator_state says None).
                info["allocator"] = allocator_state()
            if "channels_last" not in info:
                x = module.to_input(batch[0][:1])  # what the network is fed, per micro-batch
                info["batch_channels_last"] = x.is_contiguous(memory_format=torch.channels_last)
                info["weights_channels_last"] = module.net.conv2d.weight.is_contiguous(
                    memory_format=torch.channels_last
                )
                info["channels_last"] = (
                    info["batch_channels_last"] and info["weights_channels_last"]
                )
            if a["profile"] and trainer.global_step == a["warmup"] and self.prof is None:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if module.device.type == "cuda":
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self.prof = _profiler(activities)
                self.prof.__enter__()
                self.prof_start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if module.device.type == "cuda":  # the bench's own sync: kernels run async
                torch.cuda.synchronize()
            now = time.perf_counter()
            # Only full optimizer batches count: an epoch's smaller last batch (at batch 256 the
            # bench set holds one full batch per epoch) would pass for a very fast full one.
            if trainer.global_step > a["warmup"] and len(batch[1]) == a["batch"]:
                self.times.append(now - self.last)
            self.last = now

    timer = StepTimer()
    trainer = steps_trainer(a["warmup"] + a["steps"], [timer], a["accelerator"], a["precision"])
    trainer.fit(classifier, datamodule=datamodule)
    if timer.prof is not None:
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
        wall = time.perf_counter() - timer.prof_start
        timer.prof.__exit__(None, None, None)
        info["profile"] = _profile_rows(timer.prof, a["steps"])
        device_s = sum(e.self_device_time_total for e in timer.prof.key_averages()) / 1e6
        if device_s > 0:  # kernels on one stream: their time over the wall time of the steps
            info["gpu_busy_share"] = device_s / wall
    return {"times": timer.times, **info}


def _profiler(activities: list[Any]) -> Any:
    """torch's profiler, also recording the ops of threads it did not start (the banded block's
    per-core workers) where this torch can; otherwise their time shows as the block's own."""
    import torch

    try:
        from torch._C._profiler import _ExperimentalConfig

        config = _ExperimentalConfig(profile_all_threads=True)
    except (ImportError, TypeError):
        return torch.profiler.profile(activities=activities)
    return torch.profiler.profile(activities=activities, experimental_config=config)


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


def _work_torch(a: dict[str, Any], options: set[str]) -> dict[str, Any]:
    """A bare PyTorch loop over LeafNet: Adam, cross-entropy, the same micro-batching."""
    import torch
    import torch.nn.functional as F

    from leafnet import banded
    from leafnet.model import LeafNet
    from leafnet.perf import allocator_state, physical_cores, tune_process

    if "tuned" in options:
        tune_process()
    else:
        torch.set_num_threads(physical_cores())
    device = torch.device("cuda" if a["accelerator"] == "gpu" else "cpu")
    fmt = torch.channels_last if "cl" in options else torch.contiguous_format
    micro = a["micro"] or a["batch"]
    if "serial" in options:
        banded.PER_CORE = False
    if "unbanded" in options:  # conv1 layer by layer, as before leafnet.banded
        LeafNet.banded = False
        if not a["micro_fixed"]:
            micro = _auto_micro_batch(a["image_size"], a["batch"], a["accelerator"])
    net = LeafNet(a["image_size"]).to(device=device, memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, eps=1e-7)
    run = torch.compile(net) if "compile" in options else net
    shape = (a["batch"], 3, a["image_size"], a["image_size"])
    x8 = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    y = torch.randint(0, 3, (a["batch"],), device=device)

    def step() -> None:
        x = x8.float().mul_(1 / 255).contiguous(memory_format=fmt)
        opt.zero_grad(set_to_none=True)
        for xc, yc in zip(x.split(micro), y.split(micro), strict=True):
            (F.cross_entropy(run(xc), yc, reduction="sum") / len(x)).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    allocator = allocator_state()  # before the first step, as for leafnet
    return {"times": _timed(step, a), "allocator": allocator, "micro_batch": micro}


def _timed(step: Any, a: dict[str, Any]) -> list[float]:
    for _ in range(a["warmup"]):
        step()
    times = []
    for _ in range(a["steps"]):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def _keras_seed_model(size: int) -> Any:
    """The seed's Sequential model, compiled as the seed does (Adam 1e-4, categorical CE)."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            keras.layers.Conv2D(32, (3, 3), padding="same", activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(3, 3)),
            keras.layers.Conv2D(16, (3, 3), padding="same", activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")
    return model


def _work_keras(a: dict[str, Any], name: str) -> dict[str, Any]:
    """The seed's Keras model trained three ways (see the module docstring)."""
    import keras
    import numpy as np

    s, batch = a["image_size"], a["batch"]
    model = _keras_seed_model(s)
    if name in ("keras-tf", "keras-torch"):
        rng = np.random.default_rng(0)
        x = rng.random((batch, s, s, 3), dtype=np.float32)
        y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, batch)]
        times = _timed(lambda: model.train_on_batch(x, y), a)
    else:
        steps = a["warmup"] + a["steps"]
        stamps: list[float] = []

        class Stamps(keras.callbacks.Callback):
            def on_train_batch_end(self, batch_index: int, logs: Any = None) -> None:
                stamps.append(time.perf_counter())

        if name == "keras-tf-fit":
            # As the seed's users load a folder: decode + resize in the input pipeline, 1/255.
            data = keras.utils.image_dataset_from_directory(
                a["data_dir"], image_size=(s, s), batch_size=batch, label_mode="categorical",
                shuffle=True, seed=0, verbose=False,
            ).map(lambda x, y: (x / 255.0, y))  # fmt: skip
            fit_args: dict[str, Any] = {"x": data}
        else:
            rng = np.random.default_rng(0)
            fit_args = {
                "x": rng.random((steps * batch, s, s, 3), dtype=np.float32),
                "y": np.eye(3, dtype=np.float32)[rng.integers(0, 3, steps * batch)],
                "batch_size": batch,
            }
        start = time.perf_counter()
        model.fit(**fit_args, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[Stamps()])
        ends = [start, *stamps]
        times = [b - e for e, b in itertools.pairwise(ends)][a["warmup"] :]
    return {"times": times, "keras": keras.__version__, "backend": keras.backend.backend()}


def _jpegs(a: dict[str, Any]) -> list[Path]:
    """The first `predict_images` JPEG files of the bench's folder, in a fixed order."""
    files = sorted(
        p for p in Path(a["data_dir"]).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")
    )
    return files[: a["predict_images"]]


def _work_predict_keras(a: dict[str, Any]) -> dict[str, Any]:
    """Keras' `model.predict` on the same files through `tf.data`: read, decode, bilinear resize
    and 1/255 in the pipeline, as `image_dataset_from_directory` does."""
    import tensorflow as tf

    s, files = a["image_size"], [str(p) for p in _jpegs(a)]
    model = _keras_seed_model(s)

    def load(path: Any) -> Any:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.image.resize(image, (s, s)) / 255.0

    def dataset(paths: list[str]) -> Any:
        return tf.data.Dataset.from_tensor_slices(paths).map(load).batch(a["predict_batch"])

    model.predict(dataset(files[: a["predict_batch"]]), verbose=0)  # warm-up
    t = time.perf_counter()
    model.predict(dataset(files), verbose=0)
    return {
        "predict_images": len(files),
        "predict_images_per_s": len(files) / (time.perf_counter() - t),
    }


def _work_predict(a: dict[str, Any]) -> dict[str, Any]:
    """Prediction on a folder of JPEGs through `data.images` (decode + resize + network)."""
    import torch

    from leafnet.data.images import Preprocessing, load_for_model, to_float
    from leafnet.model import LeafNet
    from leafnet.perf import tune_process

    tune_process()
    prep = Preprocessing(image_size=a["image_size"])
    net = LeafNet(a["image_size"]).to(memory_format=torch.channels_last).eval()
    files = _jpegs(a)

    def run(paths: list[Path]) -> None:
        for i in range(0, len(paths), a["predict_batch"]):
            x = torch.stack([load_for_model(p, prep) for p in paths[i : i + a["predict_batch"]]])
            with torch.inference_mode():
                net(to_float(x, prep).contiguous(memory_format=torch.channels_last)).softmax(-1)

    run(files[: a["predict_batch"]])  # warm-up
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


def _work_cached(a: dict[str, Any]) -> dict[str, Any]:
    """Batches per second out of the `LeafDataModule` in-memory cache, scaled to float as trained."""
    import torch

    from leafnet.data.images import to_float
    from leafnet.perf import tune_process

    tune_process()
    dm = _datamodule(a)
    t = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - t
    n = 0
    t = time.perf_counter()
    # Whole epochs (a loader per epoch, as the Trainer makes them) for at least a second.
    while time.perf_counter() - t < 1.0 or n < 4 * a["batch"]:
        for x, _y in dm.train_dataloader():
            to_float(x, dm.preprocessing).contiguous(memory_format=torch.channels_last)
            n += len(x)
    return {"cached_images_per_s": n / (time.perf_counter() - t), "setup_s": setup_s}


def worker(name: str, a: dict[str, Any]) -> dict[str, Any]:
    """Run one contender (or one side measurement) in this process; returns its raw figures."""
    if name == "leafnet":
        out = _work_leafnet(a)
    elif name == "leafnet+bf16":  # precision=bf16-mixed: conv1 layer by layer, its own micro-batch
        micro = a["micro"]
        if not a["micro_fixed"]:
            micro = _auto_micro_batch(a["image_size"], a["batch"], a["accelerator"], "bf16-mixed")
        out = {
            **_work_leafnet({**a, "precision": "bf16-mixed", "micro": micro}),
            "micro_batch": micro,
        }
    elif name.split("+")[0] == "torch":
        out = _work_torch(a, set(name.split("+")[1:]))
    elif name in KERAS_BACKENDS:
        out = _work_keras(a, name)
    elif name == "predict":
        out = _work_predict(a)
    elif name == "predict-keras":
        out = _work_predict_keras(a)
    elif name == "cached":
        out = _work_cached(a)
    else:
        raise ValueError(f"unknown contender {name!r}")
    out["peak_rss_gb"] = _peak_rss_gb()
    return out


# -- the parent: spawn, alternate, summarise ---------------------------------------------------------


def _spawn(name: str, a: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    if name in KERAS_BACKENDS or name == "predict-keras":
        env["KERAS_BACKEND"] = KERAS_BACKENDS.get(name, "tensorflow")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    code = "import sys; from leafnet.lab.bench import worker_main; worker_main(*sys.argv[1:])"
    cmd = [sys.executable, "-c", code, name, json.dumps(a)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode < 0:
        # A worker killed by a signal leaves only its last log lines, which never say why.
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:  # a signal Python has no name for (a real-time one)
            sig = f"signal {-proc.returncode}"
        why = " (the kernel's OOM killer, if memory ran out)" if sig == "SIGKILL" else ""
        return {"error": f"killed by {sig}{why}"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}"}
    return json.loads(lines[-1][len("BENCH_RESULT ") :])


def _auto_micro_batch(
    image_size: int, batch: int, accelerator: str, precision: str = "32-true"
) -> int:
    """The micro-batch `python -m leafnet.train` picks here (micro_batch_size=auto)."""
    from leafnet.config import compose
    from leafnet.model import LeafNet
    from leafnet.module import auto_micro_batch_size
    from leafnet.perf import runs_on_cpu

    max_memory_gb = float(compose("train", []).max_memory_gb)
    return auto_micro_batch_size(
        LeafNet(image_size),
        batch,
        max_memory_gb,
        heap_limited=runs_on_cpu(accelerator),
        precision=precision,
    )


def available(name: str) -> str | None:
    """Why a contender cannot run here, or None."""
    import importlib.util

    if KERAS_BACKENDS.get(name) == "tensorflow" and importlib.util.find_spec("tensorflow") is None:
        return "tensorflow not installed (pip install 'leafnet[bench]')"
    if name in KERAS_BACKENDS and importlib.util.find_spec("keras") is None:
        return "keras not installed (pip install 'leafnet[bench]')"
    return None


def ensure_data(data_dir: Path, image_size: int, images_needed: int) -> None:
    """A synthetic JPEG set large enough that the training split holds `images_needed` images."""
    from leafnet.data.synthetic import ensure_synthetic

    # 70% of the set is the training split (15% validation, 15% test by default).
    per_class = math.ceil(images_needed / 0.7 / 3) + 2
    # Files at least 256 px: small renders degenerate, and decoding should cost what a photo does.
    ensure_synthetic(data_dir, n_per_class=per_class, size=max(image_size, 256))


def _contender_names(value: Any) -> list[str]:
    """`contenders=a,b` or `contenders=[a,b]`, each one the bench knows."""
    names = [str(c).strip() for c in (value.split(",") if isinstance(value, str) else value)]
    names = [c for c in names if c]
    torch_options = {"tuned", "cl", "compile", "unbanded", "serial"}
    for c in names:
        base, *options = c.split("+")
        known = (
            c in ("leafnet", "leafnet+bf16")
            or c in KERAS_BACKENDS
            or (base == "torch" and set(options) <= torch_options)
        )
        if not known:
            raise LeafnetError(
                f"contenders: {c!r} is unknown; use leafnet, leafnet+bf16, "
                "torch[+tuned][+cl][+compile][+unbanded][+serial] or " + ", ".join(KERAS_BACKENDS)
            )
    return names


def _host_sample() -> dict[str, float]:
    return {"matmul_gflops": matmul_gflops(), "copy_gbs": copy_gbs()}


def _contender_row(
    parts: list[dict[str, Any]], cfg: Any, flops: float, peak: float
) -> dict[str, Any]:
    """One contender's figures from its per-round worker results."""
    errors = [p["error"] for p in parts if "error" in p]
    times = [t for p in parts for t in p.get("times", [])]
    if not times:
        return {"error": errors[0] if errors else "no steps timed"}
    step = statistics.median(times)
    per_round = [statistics.median(p["times"]) * 1000 / cfg.batch for p in parts if p.get("times")]
    gflops = flops * cfg.batch / step / 1e9
    row = {
        "ms_per_image": step * 1000 / cfg.batch,
        "round_ms_per_image": per_round,
        "images_per_s": cfg.batch / step,
        "gflops": gflops,
        "roofline_share": gflops / peak,
        "peak_rss_gb": max(p.get("peak_rss_gb", 0.0) for p in parts),
        "steps_timed": len(times),
        "step_s": times,
    }
    for key in ("allocator", "channels_last", "keras", "backend", "micro_batch"):
        if key in parts[-1]:
            row[key] = parts[-1][key]
    if errors:
        row["errors"] = errors
    return row


def run_bench(cfg: Any) -> dict[str, Any]:
    """Every contender over `cfg.rounds` alternating rounds, the host figures between rounds."""
    import torch

    from leafnet.perf import tune_process

    tune_process(cfg.threads)
    contenders = _contender_names(cfg.contenders)
    skipped = {c: why for c in contenders if (why := available(c))}
    contenders = [c for c in contenders if c not in skipped]
    if cfg.accelerator == "gpu" and not torch.cuda.is_available():
        raise LeafnetError("accelerator=gpu: no CUDA GPU is visible here; use accelerator=cpu")
    micro = cfg.micro_batch or _auto_micro_batch(
        cfg.image_size, cfg.batch, cfg.accelerator, cfg.precision
    )
    rounds = max(1, min(cfg.rounds, cfg.steps))
    # Enough images that each worker's warm-up and timed steps are full batches of one epoch
    # (the training split is 70% of the folder): a partial last batch or an epoch boundary
    # inside the timing skews the median.
    needed = cfg.batch * (cfg.warmup + math.ceil(cfg.steps / rounds))
    out = Path(str(cfg.out))
    if cfg.data_dir:  # the user's own folder: read as it is, never written into
        data_dir = Path(str(cfg.data_dir))
        if not data_dir.is_dir():
            raise LeafnetError(f"data_dir={data_dir} is not a folder; give a folder of images")
    else:
        data_dir = out / "data" / f"synthetic_{cfg.image_size}_{needed}"
        print(f"data: {data_dir} (generated on first use)", file=sys.stderr)
        ensure_data(data_dir, cfg.image_size, needed)
    base = {
        "image_size": cfg.image_size,
        "batch": cfg.batch,
        "micro": micro,
        "micro_fixed": cfg.micro_batch is not None,
        "warmup": cfg.warmup,
        "data_dir": str(data_dir),
        # Under out/, not beside the data: a user's folder stays as it was.
        "cache_dir": str(out / "cache" / f"{data_dir.resolve().name}_{cfg.image_size}"),
        "profile": False,
        "accelerator": cfg.accelerator,
        "precision": cfg.precision,
        "predict_images": cfg.predict_images,
        "predict_batch": cfg.predict_batch,
    }

    host = [_host_sample()]
    raw: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    for r in range(rounds):
        steps = cfg.steps // rounds + (1 if r < cfg.steps % rounds else 0)
        order = (
            contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
            if contenders
            else []
        )
        for name in order:
            print(f"round {r + 1}/{rounds}: {name} ({steps} steps)", file=sys.stderr)
            raw[name].append(_spawn(name, {**base, "steps": steps}, cfg.timeout))
        host.append(_host_sample())

    flops = train_flops_per_image(cfg.image_size)
    peak = statistics.median(h["matmul_gflops"] for h in host)
    results = {name: _contender_row(parts, cfg, flops, peak) for name, parts in raw.items()}
    for keras_name in KERAS_BACKENDS:
        k = results.get(keras_name, {})
        for name, row in results.items():
            if "ms_per_image" in row and "ms_per_image" in k and name not in KERAS_BACKENDS:
                row[f"speedup_vs_{keras_name}"] = k["ms_per_image"] / row["ms_per_image"]

    extra: dict[str, Any] = {}
    if cfg.profile and "leafnet" in contenders:
        print("profile: leafnet, 2 steps", file=sys.stderr)
        # Three more warm-up steps than the timed runs: the steps right after warm-up can still
        # grow the heap (first-touch page faults charged to fill_), which the medians leave out.
        profiled = {**base, "warmup": base["warmup"] + 3, "steps": 2, "profile": True}
        prof = _spawn("leafnet", profiled, cfg.timeout)
        extra["profile"] = prof.get("profile", prof.get("error"))
        if "gpu_busy_share" in prof:
            extra["gpu_busy_share"] = prof["gpu_busy_share"]
    if cfg.data_pipeline:
        print("data pipeline and predict", file=sys.stderr)
        extra["data"] = {
            "cached": _spawn("cached", base, cfg.timeout),
            "predict": _spawn("predict", {**base, "batch": cfg.predict_batch}, cfg.timeout),
        }
        if available("keras-tf-fit") is None:
            extra["data"]["predict_keras"] = _spawn("predict-keras", base, cfg.timeout)
    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_avg_1m": os.getloadavg()[0],
        },
        "config": {
            "image_size": cfg.image_size,
            "batch": cfg.batch,
            "micro_batch": micro,
            "steps": cfg.steps,
            "warmup": cfg.warmup,
            "rounds": rounds,
            "accelerator": cfg.accelerator,
            "precision": cfg.precision,
            "gpu": torch.cuda.get_device_name(0) if cfg.accelerator == "gpu" else None,
        },
        "train_gflop_per_image": flops / 1e9,
        "roofline_gflops": peak,
        "copy_gbs": statistics.median(h["copy_gbs"] for h in host),
        "host_samples": host,
        "contenders": results,
        "skipped": skipped,
        **extra,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_table(report: dict[str, Any]) -> str:
    """The terminal (and README) table: one row per contender, then the side measurements."""
    c, m = report["config"], report["machine"]
    lines = [
        f"leafnet bench {report['date']}  {m['cpu']}, {m['threads']} threads, "
        f"torch {m['torch']}, load {m['load_avg_1m']:.1f}",
        f"{c['image_size']}x{c['image_size']}, batch {c['batch']} (micro {c['micro_batch']}), "
        f"{c.get('accelerator', 'cpu')}{' ' + c['gpu'] if c.get('gpu') else ''}, "
        f"leafnet precision {c.get('precision', '32-true')}, "
        f"median of {c['steps']} steps after {c['warmup']} warm-up, {c['rounds']} alternating rounds; "
        f"{report['train_gflop_per_image']:.2f} GFLOP/image",
        f"host: fp32 4096² matmul {report['roofline_gflops']:.0f} GFLOP/s, memory copy "
        f"{report.get('copy_gbs', float('nan')):.1f} GB/s (medians of {len(report.get('host_samples', []))} "
        "samples, one before the first round and one after each)",
        "",
    ]
    contenders = report["contenders"]
    keras = [k for k in KERAS_BACKENDS if "ms_per_image" in contenders.get(k, {})]
    header = ["contender", "ms/image", "spread", "GFLOP/s", "roofline", "peak RSS GB"]
    header += [f"vs {k}" for k in keras]
    rows: list[list[str]] = []
    for name, r in contenders.items():
        if "ms_per_image" not in r:
            rows.append([name, f"error: {r.get('error', '?')[:80]}"] + [""] * (len(header) - 2))
            continue
        per_round = r.get("round_ms_per_image") or [r["ms_per_image"]]
        own_micro = r.get("micro_batch", c["micro_batch"]) != c["micro_batch"]
        rows.append(
            [
                f"{name} (micro {r['micro_batch']})" if own_micro else name,
                f"{r['ms_per_image']:.1f}",
                f"{min(per_round):.1f}-{max(per_round):.1f}",
                f"{r['gflops']:.0f}",
                f"{r['roofline_share']:.0%}",
                f"{r['peak_rss_gb']:.2f}",
            ]
            + [f"{r[f'speedup_vs_{k}']:.1f}x" if f"speedup_vs_{k}" in r else "-" for k in keras]
        )
    for name, why in report.get("skipped", {}).items():
        rows.append([name, f"skipped: {why}"] + [""] * (len(header) - 2))
    lines.append(markdown_table(header, rows, right=[False] + [True] * (len(header) - 1)))
    data = report.get("data")
    if data:
        cached, pred = data.get("cached", {}), data.get("predict", {})
        lines.append("")
        if "decode_resize_images_per_s" in pred:
            lines.append(
                f"data: cold decode+resize {pred['decode_resize_images_per_s']:.1f} images/s; "
                f"cached batches {cached.get('cached_images_per_s', float('nan')):.0f} images/s"
            )
            line = (
                f"predict, JPEG decode included, {pred['predict_images']} files: leafnet "
                f"{pred['predict_images_per_s']:.1f} images/s (peak RSS {pred['peak_rss_gb']:.2f} GB)"
            )
            keras_pred = data.get("predict_keras", {})
            if "predict_images_per_s" in keras_pred:
                ratio = pred["predict_images_per_s"] / keras_pred["predict_images_per_s"]
                line += (
                    f", Keras-TF model.predict on tf.data {keras_pred['predict_images_per_s']:.1f}"
                    f" images/s, peak RSS {keras_pred['peak_rss_gb']:.2f} GB (leafnet {ratio:.1f}x)"
                )
            elif "error" in keras_pred:
                line += f", Keras: {keras_pred['error'][:80]}"
            lines.append(line)
        else:
            lines.append(f"data: {pred.get('error') or cached.get('error')}")
    if "gpu_busy_share" in report:
        lines.append("")
        lines.append(
            f"GPU busy (kernel time over wall time, profiled leafnet steps): "
            f"{report['gpu_busy_share']:.0%}"
        )
    prof = report.get("profile")
    if isinstance(prof, list):
        lines.append("")
        lines.append(
            "leafnet step profile (self CPU time per step, summed over threads; the banded "
            "block's own rows are mostly the main thread waiting for its workers):"
        )
        lines += [f"  {p['op']:<45} {p['ms_per_step']:>9.1f} ms  {p['share']:>5.0%}" for p in prof]
    return "\n".join(lines)


def worker_main(name: str, args_json: str) -> None:
    """The entry of a worker subprocess: one contender's raw figures as a BENCH_RESULT line."""
    print("BENCH_RESULT " + json.dumps(worker(name, json.loads(args_json))), flush=True)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    """`key=value` arguments (conf/bench.yaml): run the bench, write its JSON, print the table."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = command_config("lab.bench", argv, conf="bench")
    report = run_bench(cfg)
    report["command"] = "python -m leafnet.lab.bench " + " ".join(argv)
    report["config"]["requested"] = to_primitive(cfg)
    out = Path(str(cfg.out))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{datetime.now():%Y-%m-%d_%H-%M-%S}.json"
    write_text(path, json.dumps(report, indent=2))
    print(format_table(report))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
