"""`python -m leafnet.lab.bench`: leafnet's training step against a bare torch loop and Keras, in one run.

    python -m leafnet.lab.bench --image-size 640 --batch 32 --steps 6
    python -m leafnet.lab.bench --contenders leafnet,torch+tuned+cl,torch+tuned --image-size 128

Every contender runs in its own subprocess (a process can hold one Keras backend, and each
contender's peak RSS and allocator state must be its own). Contenders alternate: the timed steps
are spread over `--rounds` rounds and each round visits every contender, so a noisy neighbour on
a shared CPU hits all of them alike. Each process warms up first; the figure is the median step.

Contenders:
  leafnet        the real thing: `LeafClassifier` fitted by Lightning's Trainer from the
                 `LeafDataModule` cache (timed end-of-batch to end-of-batch, so data loading,
                 uint8->float, logging and the optimizer step are all inside)
  torch[+opts]   a bare PyTorch loop over the same `LeafNet`; options: +tuned (leafnet.perf
                 allocator/threads), +cl (channels_last), +compile (torch.compile)
  keras-tf       the seed's Keras model, TensorFlow backend (`train_on_batch`)
  keras-torch    the same on Keras' torch backend

It also measures an fp32 4096x4096 matmul (the roofline), the data pipeline (cold decode+resize
and cached batches per second) and prediction on a folder of JPEGs, decode included. JSON goes to
`outputs/bench/<date_time>.json`, a table to the terminal.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from leafnet.errors import LeafnetError, cli_errors
from leafnet.tables import markdown_table

KERAS_BACKENDS = {"keras-tf": "tensorflow", "keras-torch": "torch"}
DEFAULT_CONTENDERS = "leafnet,torch,keras-tf,keras-torch"


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
                self.prof = torch.profiler.profile(activities=activities)
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

    from leafnet.model import LeafNet
    from leafnet.perf import allocator_state, physical_cores, tune_process

    if "tuned" in options:
        tune_process()
    else:
        torch.set_num_threads(physical_cores())
    device = torch.device("cuda" if a["accelerator"] == "gpu" else "cpu")
    fmt = torch.channels_last if "cl" in options else torch.contiguous_format
    net = LeafNet(a["image_size"]).to(device=device, memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, eps=1e-7)
    run = torch.compile(net) if "compile" in options else net
    shape = (a["batch"], 3, a["image_size"], a["image_size"])
    x8 = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    y = torch.randint(0, 3, (a["batch"],), device=device)
    micro = a["micro"] or a["batch"]

    def step() -> None:
        x = x8.float().mul_(1 / 255).contiguous(memory_format=fmt)
        opt.zero_grad(set_to_none=True)
        for xc, yc in zip(x.split(micro), y.split(micro), strict=True):
            (F.cross_entropy(run(xc), yc, reduction="sum") / len(x)).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    allocator = allocator_state()  # before the first step, as for leafnet
    return {"times": _timed(step, a), "allocator": allocator}


def _timed(step: Any, a: dict[str, Any]) -> list[float]:
    for _ in range(a["warmup"]):
        step()
    times = []
    for _ in range(a["steps"]):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def _work_keras(a: dict[str, Any]) -> dict[str, Any]:
    """The seed's Sequential model and `model.compile(Adam(1e-4), categorical_crossentropy)`."""
    import keras
    import numpy as np

    s = a["image_size"]
    model = keras.Sequential(
        [
            keras.Input((s, s, 3)),
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
    rng = np.random.default_rng(0)
    x = rng.random((a["batch"], s, s, 3), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, a["batch"])]
    return {
        "times": _timed(lambda: model.train_on_batch(x, y), a),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
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
    files = sorted(
        p for p in Path(a["data_dir"]).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")
    )
    files = files[: a["predict_images"]]

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
    elif name.split("+")[0] == "torch":
        out = _work_torch(a, set(name.split("+")[1:]))
    elif name in KERAS_BACKENDS:
        out = _work_keras(a)
    elif name == "predict":
        out = _work_predict(a)
    elif name == "cached":
        out = _work_cached(a)
    else:
        raise ValueError(f"unknown contender {name!r}")
    out["peak_rss_gb"] = _peak_rss_gb()
    return out


# -- the parent: spawn, alternate, summarise ---------------------------------------------------------


def _spawn(name: str, a: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    if name in KERAS_BACKENDS:
        env["KERAS_BACKEND"] = KERAS_BACKENDS[name]
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [
        sys.executable,
        "-m",
        "leafnet.lab.bench",
        "--worker",
        name,
        "--worker-args",
        json.dumps(a),
    ]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}"}
    return json.loads(lines[-1][len("BENCH_RESULT ") :])


def _auto_micro_batch(image_size: int, batch: int, accelerator: str) -> int:
    """The micro-batch `python -m leafnet.train` picks here (micro_batch_size=auto)."""
    from leafnet.config import compose
    from leafnet.model import LeafNet
    from leafnet.module import auto_micro_batch_size
    from leafnet.perf import runs_on_cpu

    max_memory_gb = float(compose("train", []).max_memory_gb)
    return auto_micro_batch_size(
        LeafNet(image_size), batch, max_memory_gb, heap_limited=runs_on_cpu(accelerator)
    )


def available(name: str) -> str | None:
    """Why a contender cannot run here, or None."""
    import importlib.util

    if name == "keras-tf" and importlib.util.find_spec("tensorflow") is None:
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


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from leafnet.perf import tune_process

    tune_process(args.threads)
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    skipped = {c: why for c in contenders if (why := available(c))}
    contenders = [c for c in contenders if c not in skipped]
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        raise LeafnetError("--accelerator gpu: no CUDA GPU is visible here; use --accelerator cpu")
    micro = args.micro_batch or _auto_micro_batch(args.image_size, args.batch, args.accelerator)
    rounds = max(1, min(args.rounds, args.steps))
    # Enough training images that each worker's warm-up and timed steps are full batches of one
    # epoch: a partial last batch or an epoch boundary inside the timing skews the median.
    needed = args.batch * (args.warmup + math.ceil(args.steps / rounds))
    if args.data_dir:  # the user's own folder: read as it is, never written into
        data_dir = Path(args.data_dir)
        if not data_dir.is_dir():
            raise LeafnetError(f"--data-dir {data_dir} is not a folder; give a folder of images")
    else:
        data_dir = Path(f"outputs/bench/data/synthetic_{args.image_size}_{needed}")
        print(f"data: {data_dir} (generated on first use)", file=sys.stderr)
        ensure_data(data_dir, args.image_size, needed)
    base = {
        "image_size": args.image_size,
        "batch": args.batch,
        "micro": micro,
        "warmup": args.warmup,
        "data_dir": str(data_dir),
        # Under outputs/bench/, not beside the data: a user's folder stays as it was.
        "cache_dir": f"outputs/bench/cache/{data_dir.resolve().name}_{args.image_size}",
        "profile": False,
        "accelerator": args.accelerator,
        "precision": args.precision,
        "predict_images": args.predict_images,
        "predict_batch": args.predict_batch,
    }

    roofline = [matmul_gflops()]
    raw: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    for r in range(rounds):
        steps = args.steps // rounds + (1 if r < args.steps % rounds else 0)
        order = (
            contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
            if contenders
            else []
        )
        for name in order:
            print(f"round {r + 1}/{rounds}: {name} ({steps} steps)", file=sys.stderr)
            raw[name].append(_spawn(name, {**base, "steps": steps}, args.timeout))
        roofline.append(matmul_gflops())

    flops = train_flops_per_image(args.image_size)
    peak = statistics.median(roofline)
    results: dict[str, Any] = {}
    for name, parts in raw.items():
        errors = [p["error"] for p in parts if "error" in p]
        times = [t for p in parts for t in p.get("times", [])]
        if not times:
            results[name] = {"error": errors[0] if errors else "no steps timed"}
            continue
        step = statistics.median(times)
        ms = step * 1000 / args.batch
        gflops = flops * args.batch / step / 1e9
        row = {
            "ms_per_image": ms,
            "images_per_s": args.batch / step,
            "gflops": gflops,
            "roofline_share": gflops / peak,
            "peak_rss_gb": max(p.get("peak_rss_gb", 0.0) for p in parts),
            "steps_timed": len(times),
            "step_s": times,
        }
        for key in ("allocator", "channels_last", "keras", "backend"):
            if key in parts[-1]:
                row[key] = parts[-1][key]
        if errors:
            row["errors"] = errors
        results[name] = row
    for keras_name in KERAS_BACKENDS:
        k = results.get(keras_name, {})
        for name, row in results.items():
            if "ms_per_image" in row and "ms_per_image" in k and name not in KERAS_BACKENDS:
                row[f"speedup_vs_{keras_name}"] = k["ms_per_image"] / row["ms_per_image"]

    extra: dict[str, Any] = {}
    if args.profile and "leafnet" in contenders:
        print("profile: leafnet, 2 steps", file=sys.stderr)
        # Three more warm-up steps than the timed runs: the steps right after warm-up can still
        # grow the heap (first-touch page faults charged to fill_), which the medians leave out.
        profiled = {**base, "warmup": base["warmup"] + 3, "steps": 2, "profile": True}
        prof = _spawn("leafnet", profiled, args.timeout)
        extra["profile"] = prof.get("profile", prof.get("error"))
        if "gpu_busy_share" in prof:
            extra["gpu_busy_share"] = prof["gpu_busy_share"]
    if not args.no_data:
        print("data pipeline and predict", file=sys.stderr)
        extra["data"] = {
            "cached": _spawn("cached", base, args.timeout),
            "predict": _spawn("predict", {**base, "batch": args.predict_batch}, args.timeout),
        }
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
            "image_size": args.image_size,
            "batch": args.batch,
            "micro_batch": micro,
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": rounds,
            "accelerator": args.accelerator,
            "precision": args.precision,
            "gpu": torch.cuda.get_device_name(0) if args.accelerator == "gpu" else None,
        },
        "train_gflop_per_image": flops / 1e9,
        "roofline_gflops": peak,
        "roofline_samples": roofline,
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
    c = report["config"]
    lines = [
        f"leafnet bench {report['date']}  {report['machine']['cpu']}, {report['machine']['threads']} threads, "
        f"torch {report['machine']['torch']}, load {report['machine']['load_avg_1m']:.1f}",
        f"{c['image_size']}x{c['image_size']}, batch {c['batch']} (micro {c['micro_batch']}), "
        f"{c.get('accelerator', 'cpu')}{' ' + c['gpu'] if c.get('gpu') else ''}, "
        f"leafnet precision {c.get('precision', '32-true')}, "
        f"median of {c['steps']} steps after {c['warmup']} warm-up, {c['rounds']} alternating rounds; "
        f"{report['train_gflop_per_image']:.2f} GFLOP/image; roofline (fp32 4096² matmul) "
        f"{report['roofline_gflops']:.0f} GFLOP/s",
        "",
    ]
    header = ["contender", "ms/image", "images/s", "GFLOP/s", "roofline", "peak RSS GB",
              "vs keras-tf", "vs keras-torch"]  # fmt: skip
    rows: list[list[str]] = []
    for name, r in report["contenders"].items():
        if "ms_per_image" not in r:
            rows.append([name, f"error: {r.get('error', '?')[:80]}", "", "", "", "", "", ""])
            continue

        def ratio(key: str, r: dict[str, Any] = r) -> str:
            return f"{r[key]:.1f}x" if key in r else "-"

        rows.append([
            name, f"{r['ms_per_image']:.1f}", f"{r['images_per_s']:.1f}", f"{r['gflops']:.0f}",
            f"{r['roofline_share']:.0%}", f"{r['peak_rss_gb']:.2f}",
            ratio("speedup_vs_keras-tf"), ratio("speedup_vs_keras-torch"),
        ])  # fmt: skip
    for name, why in report.get("skipped", {}).items():
        rows.append([name, f"skipped: {why}", "", "", "", "", "", ""])
    lines.append(markdown_table(header, rows, right=[False] + [True] * 7))
    data = report.get("data")
    if data:
        cached, pred = data.get("cached", {}), data.get("predict", {})
        lines.append("")
        if "decode_resize_images_per_s" in pred:
            lines.append(
                f"data: cold decode+resize {pred['decode_resize_images_per_s']:.1f} images/s; "
                f"cached batches {cached.get('cached_images_per_s', float('nan')):.0f} images/s; "
                f"predict (JPEG decode included) {pred['predict_images_per_s']:.1f} images/s over "
                f"{pred['predict_images']} files, peak RSS {pred['peak_rss_gb']:.2f} GB"
            )
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
        lines.append("leafnet step profile (self CPU time per step):")
        lines += [f"  {p['op']:<45} {p['ms_per_step']:>9.1f} ms  {p['share']:>5.0%}" for p in prof]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m leafnet.lab.bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--image-size", type=int, default=640)
    p.add_argument("--batch", type=int, default=32, help="optimizer batch")
    p.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="images per forward/backward (default: what leafnet.train picks, micro_batch_size=auto)",
    )
    p.add_argument("--steps", type=int, default=6, help="timed steps per contender (median; >= 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per process")
    p.add_argument(
        "--rounds", type=int, default=2, help="alternating rounds the steps are spread over"
    )
    p.add_argument("--contenders", default=DEFAULT_CONTENDERS)
    p.add_argument(
        "--accelerator",
        choices=("cpu", "gpu"),
        default="cpu",
        help="where leafnet and the torch contenders train (Keras picks its own device)",
    )
    from leafnet.train import PRECISIONS

    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="32-true",
        help="leafnet's Trainer precision, e.g. 16-mixed on a GPU",
    )
    p.add_argument("--threads", type=int, default=None, help="default: physical cores")
    p.add_argument(
        "--data-dir", default=None, help="an image folder (default: a generated synthetic set)"
    )
    p.add_argument("--predict-images", type=int, default=64)
    p.add_argument("--predict-batch", type=int, default=16)
    p.add_argument("--profile", action="store_true", help="profile leafnet's step (torch.profiler)")
    p.add_argument(
        "--no-data", action="store_true", help="skip the data pipeline and predict figures"
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds per worker process")
    p.add_argument("--out", default="outputs/bench")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-args", help=argparse.SUPPRESS)
    return p.parse_args(argv)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = worker(args.worker, json.loads(args.worker_args))
        print("BENCH_RESULT " + json.dumps(result), flush=True)
        return 0
    if args.steps < 1 or args.batch < 1 or args.image_size < 6:
        raise LeafnetError("--steps and --batch must be >= 1 and --image-size >= 6")
    report = run_bench(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{datetime.now():%Y-%m-%d_%H-%M-%S}.json"
    path.write_text(json.dumps(report, indent=2))
    print(format_table(report))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
