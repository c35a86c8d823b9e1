"""`python -m leafnet.lab.bench`: leafnet's training step against a bare torch loop and Keras, in one run.

    python -m leafnet.lab.bench                                   # 640 px, batch 32, the defaults
    python -m leafnet.lab.bench contenders=[leafnet,torch+tuned+cl] image_size=128 profile=true
    python -m leafnet.lab.bench --help                            # every key (conf/bench.yaml)

Every contender runs in its own subprocess (a process can hold one Keras backend, and each
contender's peak RSS and allocator state must be its own). Contenders alternate: the timed steps
are spread over `rounds` rounds and each round visits every contender, so a noisy neighbour on
a shared CPU hits all of them alike; the table gives the median and the per-round spread. Each
process warms up first. With `lockstep=true` the contenders that time a step function take turns
a single step at a time instead (`lab.lockstep`), so that each step's neighbours meet the same
host, and the table adds each one's step-by-step ratio to Keras and how the two move together.

Contenders:
  command              what users run: `python -m leafnet.train` for `command_epochs` epochs on the
                       same folder, its steady epochs per training image (each from its start to
                       the next epoch's, after the first: validation, callbacks, checkpoints,
                       logging and the loop between epochs included), and where that time goes
                       outside the step (Lightning's profiler)
  command+layers       the same with model.conv1_in_bands=false (conv1 layer by layer)
  command+library      the same with conv1's bands on PyTorch's kernels, not leafnet's fused C
                       kernel (LEAFNET_NATIVE=0)
  command+bf16         the same at precision=bf16-mixed (CPUs with AVX512-BF16 or AMX), its own
                       micro-batch
  command+spin         the same with PyTorch's OpenMP threads spinning for milliseconds after each
                       op, libgomp's default before leafnet set OMP_WAIT_POLICY=PASSIVE
                       (GOMP_SPINCOUNT)
  leafnet              the step: `LeafClassifier` fitted by Lightning's Trainer from the
                       `LeafDataModule` cache (timed end-of-batch to end-of-batch, so data loading,
                       uint8->float, logging and the optimizer step are all inside)
  leafnet+bf16         the same at precision=bf16-mixed (fast on CPUs with AMX, e.g. Sapphire Rapids)
  leafnet+spin         the same with OpenMP's threads spinning, as command+spin
  torch[+opts]         a bare PyTorch loop over the same `LeafNet`; options: +tuned (leafnet.perf
                       allocator/threads), +cl (channels_last), +compile (torch.compile),
                       +unbanded (conv1 layer by layer, not leafnet.banded; its own auto micro-batch),
                       +serial (leafnet.banded's bands one at a time over all cores, not one per core),
                       +static (each core takes every k-th band, not whichever band is next),
                       +2mib (bands of 2 MiB of conv output, not a twelfth of the L3),
                       +library (the bands on PyTorch's kernels, not the fused C kernel)
  keras-tf-fit         the seed's Keras model as its users train it: `model.fit` on
                       `image_dataset_from_directory` over the same JPEG files (TensorFlow)
  keras-tf-fit-numpy   `model.fit` on numpy arrays already in memory (TensorFlow)
  keras-tf             `train_on_batch` on one fixed batch: Keras' step alone (TensorFlow)
  keras-torch          `train_on_batch` on Keras' torch backend

Beside them, in the same run: the host's fp32 4096x4096 matmul (the compute roofline) and its
memory copy bandwidth, before the first and after every round; the data pipeline (cold
decode+resize, cached batches per second); prediction on a folder of JPEGs, decode included, by
leafnet and by the Keras model through `tf.data` (what `image_dataset_from_directory` does). JSON
goes to `<out>/<date_time>.json`, a table to the terminal (`lab.bench_report`). The workers are
`lab.worker` (torch contenders in `lab.contenders`, Keras ones in `lab.keras_contenders`), the
host's figures `lab.host`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from leafnet.config import command_config, to_primitive
from leafnet.errors import LeafnetError, cli_errors
from leafnet.files import write_text
from leafnet.lab.bench_report import format_table
from leafnet.lab.host import cpu_name, host_sample, train_flops_per_image
from leafnet.lab.lockstep import as_rounds, host_correlation, paired, run_lockstep, stepped
from leafnet.lab.worker import (
    COMMANDS,
    KERAS_BACKENDS,
    STEPS,
    TORCH_OPTIONS,
    WorkerArgs,
    auto_micro_batch,
)


def _worker(name: str, a: WorkerArgs) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of contender `name`'s worker process."""
    env = dict(os.environ)
    if "+library" in name:  # conv1 on PyTorch's kernels, not leafnet.kernels' fused one
        env["LEAFNET_NATIVE"] = "0"
    if name.endswith("+spin"):  # libgomp's default spin after each op (leafnet/__init__.py)
        env["GOMP_SPINCOUNT"] = "300000"
    if name in KERAS_BACKENDS or name == "predict-keras":
        env["KERAS_BACKEND"] = KERAS_BACKENDS.get(name, "tensorflow")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    code = "import sys; from leafnet.lab.worker import main; main(*sys.argv[1:])"
    return [sys.executable, "-c", code, name, a.to_json()], env


def _popen(name: str, a: WorkerArgs, stderr: IO[str]) -> subprocess.Popen:
    """Contender `name`'s worker with pipes to its stdin and stdout, for `lab.lockstep`."""
    cmd, env = _worker(name, a)
    pipe = subprocess.PIPE
    return subprocess.Popen(cmd, env=env, stdin=pipe, stdout=pipe, stderr=stderr, text=True)


def spawn(name: str, a: WorkerArgs, timeout: float) -> dict[str, Any]:
    """Run contender `name` in a fresh worker process; its figures, or {"error": why}."""
    cmd, env = _worker(name, a)
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


def contender_names(value: Any) -> list[str]:
    """`contenders=a,b` or `contenders=[a,b]`, each one the bench knows."""
    names = [str(c).strip() for c in (value.split(",") if isinstance(value, str) else value)]
    names = [c for c in names if c]
    for c in names:
        base, *options = c.split("+")
        known = (
            c in (*STEPS, *COMMANDS)
            or c in KERAS_BACKENDS
            or (base == "torch" and set(options) <= set(TORCH_OPTIONS))
        )
        if not known:
            raise LeafnetError(
                f"contenders: {c!r} is unknown; use command[+layers|+library|+bf16|+spin], "
                "leafnet[+bf16|+spin], "
                f"torch[+{']['.join(f'+{o}' for o in TORCH_OPTIONS)[1:]}] or "
                + ", ".join(KERAS_BACKENDS)
            )
    return names


def contender_row(
    parts: list[dict[str, Any]], batch: int, flops: float, peak: float
) -> dict[str, Any]:
    """One contender's figures from its per-round worker results."""
    errors = [p["error"] for p in parts if "error" in p]
    times = [t for p in parts for t in p.get("times", [])]
    if not times:
        return {"error": errors[0] if errors else "no steps timed"}
    step = statistics.median(times)
    per_round = [statistics.median(p["times"]) * 1000 / batch for p in parts if p.get("times")]
    gflops = flops * batch / step / 1e9
    row = {
        "ms_per_image": step * 1000 / batch,
        "round_ms_per_image": per_round,
        # The rounds' spread, max - min over the median: how steady the contender is.
        "spread": (max(per_round) - min(per_round)) / statistics.median(per_round),
        "images_per_s": batch / step,
        "gflops": gflops,
        "roofline_share": gflops / peak,
        "peak_rss_gb": max(p.get("peak_rss_gb", 0.0) for p in parts),
        "steps_timed": len(times),
        "step_s": times,
    }
    keys = (
        "allocator",
        "band_bytes",
        "conv1_kernel",
        "channels_last",
        "keras",
        "backend",
        "micro_batch",
        "train_images",
    )
    for key in keys:
        if key in parts[-1]:
            row[key] = parts[-1][key]
    # The command's epoch, part by part: each part's median over rounds, in ms and as a share of
    # its round's epoch. The share outside the step is taken round by round: the host drifts
    # between rounds, so the median step and the median epoch may come from different ones.
    rounds: dict[str, list[dict[str, float]]] = {}
    for key in ("breakdown_ms_per_image", "breakdown_share"):
        rounds[key] = [p[key] for p in parts if p.get(key)]
        if rounds[key]:
            row[key] = {
                k: statistics.median(b.get(k, 0.0) for b in rounds[key]) for k in rounds[key][0]
            }
    if rounds["breakdown_share"]:
        row["outside_share_rounds"] = [1 - b["step"] for b in rounds["breakdown_share"]]
        row["outside_share"] = statistics.median(row["outside_share_rounds"])
    if errors:
        row["errors"] = errors
    return row


def _data_dir(cfg: Any, out: Path, needed: int) -> Path:
    if cfg.data_dir:  # the user's own folder: read as it is, never written into
        data_dir = Path(str(cfg.data_dir))
        if not data_dir.is_dir():
            raise LeafnetError(f"data_dir={data_dir} is not a folder; give a folder of images")
        return data_dir
    data_dir = out / "data" / f"synthetic_{cfg.image_size}_{needed}"
    print(f"data: {data_dir} (generated on first use)", file=sys.stderr)
    ensure_data(data_dir, cfg.image_size, needed)
    return data_dir


def _alternate(contenders: list[str], base: WorkerArgs, cfg: Any, rounds: int) -> tuple[dict, list]:
    """Every contender once per round, the order rotated each round, the host sampled before
    the first round and after each: {contender: [per-round results]}, host samples."""
    host = [host_sample()]
    raw: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    for r in range(rounds):
        steps = cfg.steps // rounds + (1 if r < cfg.steps % rounds else 0)
        shift = r % len(contenders) if contenders else 0
        for name in contenders[shift:] + contenders[:shift]:
            print(f"round {r + 1}/{rounds}: {name} ({steps} steps)", file=sys.stderr)
            args = WorkerArgs(**{**asdict(base), "steps": steps})
            raw[name].append(spawn(name, args, cfg.timeout))
        host.append(host_sample())
    return raw, host


def _side_measurements(cfg: Any, base: WorkerArgs, contenders: list[str]) -> dict[str, Any]:
    """The step's profile, the data pipeline and prediction, when asked."""
    extra: dict[str, Any] = {}
    if cfg.profile and "leafnet" in contenders:
        print("profile: leafnet, 2 steps", file=sys.stderr)
        # Three more warm-up steps than the timed runs: the steps right after warm-up can still
        # grow the heap (first-touch page faults charged to fill_), which the medians leave out.
        profiled = WorkerArgs(
            **{**asdict(base), "warmup": base.warmup + 3, "steps": 2, "profile": True}
        )
        prof = spawn("leafnet", profiled, cfg.timeout)
        extra["profile"] = prof.get("profile", prof.get("error"))
        if "gpu_busy_share" in prof:
            extra["gpu_busy_share"] = prof["gpu_busy_share"]
    if cfg.data_pipeline:
        print("data pipeline and predict", file=sys.stderr)
        predict_args = WorkerArgs(**{**asdict(base), "batch": cfg.predict_batch})
        extra["data"] = {
            "cached": spawn("cached", base, cfg.timeout),
            "predict": spawn("predict", predict_args, cfg.timeout),
        }
        if available("keras-tf-fit") is None:
            extra["data"]["predict_keras"] = spawn("predict-keras", base, cfg.timeout)
    return extra


def run_bench(cfg: Any) -> dict[str, Any]:
    """Every contender over `cfg.rounds` alternating rounds, the host figures between rounds."""
    import torch

    from leafnet.perf import l3_cache_bytes, tune_process

    tune_process(cfg.threads)
    contenders = contender_names(cfg.contenders)
    skipped = {c: why for c in contenders if (why := available(c))}
    contenders = [c for c in contenders if c not in skipped]
    unstepped = [c for c in contenders if not stepped(c)]
    if cfg.lockstep and unstepped:
        raise LeafnetError(
            f"lockstep=true: {', '.join(unstepped)} cannot be timed a step at a time; "
            "use torch[+options], keras-tf or keras-torch, or lockstep=false"
        )
    if cfg.accelerator == "gpu" and not torch.cuda.is_available():
        raise LeafnetError("accelerator=gpu: no CUDA GPU is visible here; use accelerator=cpu")
    rounds = max(1, min(cfg.rounds, cfg.steps))
    # Enough images that each worker's warm-up and timed steps are full batches of one epoch
    # (the training split is 70% of the folder): a partial last batch or an epoch boundary
    # inside the timing skews the median.
    needed = cfg.batch_size * (cfg.warmup + math.ceil(cfg.steps / rounds))
    out = Path(str(cfg.out))
    data_dir = _data_dir(cfg, out, needed)
    base = WorkerArgs(
        image_size=cfg.image_size, batch=cfg.batch_size, micro=0, micro_fixed=cfg.micro_batch_size is not None,
        warmup=cfg.warmup, data_dir=str(data_dir),
        # Under out/, not beside the data: a user's folder stays as it was.
        cache_dir=str(out / "cache" / f"{data_dir.resolve().name}_{cfg.image_size}"),
        out_dir=str(out), accelerator=cfg.accelerator, precision=cfg.precision,
        epochs=cfg.command_epochs, predict_images=cfg.predict_images, predict_batch=cfg.predict_batch,
    )  # fmt: skip
    base.micro = cfg.micro_batch_size or auto_micro_batch(base, cfg.precision)

    if cfg.lockstep:  # the host sampled before the first cycle and after each
        first = host_sample()
        lock, host = run_lockstep(contenders, base, cfg.steps, _popen, host_sample, cfg.timeout)
        raw = {name: as_rounds(parts[0], rounds) for name, parts in lock.items()}
        host.insert(0, first)
    else:
        raw, host = _alternate(contenders, base, cfg, rounds)
    flops = train_flops_per_image(cfg.image_size)
    peak = statistics.median(h["matmul_gflops"] for h in host)
    results = {
        name: contender_row(parts, cfg.batch_size, flops, peak) for name, parts in raw.items()
    }
    for keras_name in KERAS_BACKENDS:
        k = results.get(keras_name, {})
        for name, row in results.items():
            if "ms_per_image" in row and "ms_per_image" in k and name not in KERAS_BACKENDS:
                row[f"speedup_vs_{keras_name}"] = k["ms_per_image"] / row["ms_per_image"]
    if cfg.lockstep:  # each step against the first Keras contender's, else the first one's
        steps = {name: row["step_s"] for name, row in results.items() if "step_s" in row}
        reference = next((k for k in [*KERAS_BACKENDS, *steps] if k in steps), None)
        for name, pairs in paired(steps, reference).items() if reference else ():
            results[name]["lockstep"] = {"reference": reference, **pairs}
        for name, times in steps.items():
            results[name]["host_correlation"] = host_correlation(times, host[1:])
    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # the workers' (leafnet's)
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_avg_1m": os.getloadavg()[0],
            "l3_bytes": l3_cache_bytes(),
        },
        "config": {
            "image_size": cfg.image_size,
            "batch": cfg.batch_size,
            "micro_batch": base.micro,
            "steps": cfg.steps,
            "warmup": cfg.warmup,
            "rounds": rounds,
            "lockstep": bool(cfg.lockstep),
            "command_epochs": cfg.command_epochs,
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
        **_side_measurements(cfg, base, contenders),
    }


@cli_errors
def main(argv: list[str] | None = None) -> None:
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


if __name__ == "__main__":
    main()
