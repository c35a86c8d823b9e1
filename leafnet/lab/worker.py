"""A bench worker: one contender (or side measurement) in a fresh process, its raw figures
printed as one `BENCH_RESULT {json}` line for the parent (`lab.bench`).

Light on purpose: a Keras worker must not have loaded torch (its threads and memory would count
as Keras'), so each contender's module is imported only in the worker that runs it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Keras contenders and the backend each runs on.
KERAS_BACKENDS = {
    "keras-tf-fit": "tensorflow",
    "keras-tf-fit-numpy": "tensorflow",
    "keras-tf": "tensorflow",
    "keras-torch": "torch",
}
TORCH_OPTIONS = ("tuned", "cl", "compile", "unbanded", "serial", "static", "2mib", "library")
# leafnet's own step as a contender: as trained, at bf16-mixed, with OpenMP spinning (`+spin`).
STEPS = ("leafnet", "leafnet+bf16", "leafnet+spin")
# The training command as a contender, and the overrides each variant adds to it.
# (`+library` runs without leafnet's C kernel: bench._worker sets LEAFNET_NATIVE=0; `+spin` with
# OpenMP's threads spinning after each op, as before leafnet set its wait policy: GOMP_SPINCOUNT.)
COMMANDS = {
    "command": [],
    "command+layers": ["model.conv1_in_bands=false"],
    "command+library": [],
    "command+spin": [],
    "command+bf16": ["precision=bf16-mixed"],
}
# What a lockstep worker prints once warm, and after each step (`lab.lockstep`).
LOCKSTEP_READY = "LOCKSTEP_READY"
LOCKSTEP_STEP = "LOCKSTEP_STEP "


@dataclass
class WorkerArgs:
    """What a worker is asked to run: the bench's settings for one contender in one round."""

    image_size: int
    batch: int
    micro: int
    micro_fixed: bool
    warmup: int
    data_dir: str
    cache_dir: str
    out_dir: str
    accelerator: str = "cpu"
    precision: str = "32-true"
    steps: int = 0
    epochs: int = 3  # the `command` contender's epochs; the first is its warm-up
    profile: bool = False
    predict_images: int = 64
    predict_batch: int = 16
    lockstep: bool = False  # one step per line on stdin until it closes (`lab.lockstep`)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def run(name: str, a: WorkerArgs) -> dict[str, Any]:
    """Run contender `name` in this process; returns its raw figures and peak memory."""
    if name in KERAS_BACKENDS or name == "predict-keras":
        from leafnet.lab import keras_contenders

        out = keras_contenders.work(name, a)
    else:
        from leafnet.lab import contenders

        if name in ("leafnet", "leafnet+spin"):
            out = contenders.work_leafnet(a)
        elif name == "leafnet+bf16":  # bf16-mixed, its own micro-batch
            micro = a.micro if a.micro_fixed else auto_micro_batch(a, "bf16-mixed")
            bf16 = WorkerArgs(**{**asdict(a), "precision": "bf16-mixed", "micro": micro})
            out = {**contenders.work_leafnet(bf16), "micro_batch": micro}
        elif name in COMMANDS:
            out = contenders.work_command(a, COMMANDS[name])
        elif name.split("+")[0] == "torch":
            options = set(name.split("+")[1:])
            unbanded = "unbanded" in options and not a.micro_fixed
            micro = auto_micro_batch(a, a.precision, banded=False) if unbanded else a.micro
            out = contenders.work_torch(a, options, micro)
        elif name == "predict":
            out = contenders.work_predict(a)
        elif name == "cached":
            out = contenders.work_cached(a)
        else:
            raise ValueError(f"unknown contender {name!r}")
    from leafnet.perf import peak_rss_bytes

    out.setdefault("peak_rss_gb", peak_rss_bytes() / 2**30)  # unless it ran in a child
    return out


def auto_micro_batch(a: WorkerArgs, precision: str, banded: bool = True) -> int:
    """The micro-batch `python -m leafnet.train` picks for these settings (micro_batch_size=auto);
    `banded=False` for LeafNet with conv1 layer by layer."""
    from leafnet.config import compose
    from leafnet.model import LeafNet
    from leafnet.module import auto_micro_batch_size
    from leafnet.perf import runs_on_cpu

    net = LeafNet(a.image_size)
    net.banded = banded
    return auto_micro_batch_size(
        net,
        a.batch,
        float(compose("train", []).max_memory_gb),
        heap_limited=runs_on_cpu(a.accelerator),
        precision=precision,
    )


def timed(step: Callable[[], Any], a: WorkerArgs) -> list[float]:
    """Seconds of each of `a.steps` calls of `step`, after `a.warmup` untimed ones; in lockstep,
    one call per line on stdin, each one's seconds printed back, until stdin closes."""
    for _ in range(a.warmup):
        step()
    if a.lockstep:
        print(LOCKSTEP_READY, flush=True)
    times = []
    for _ in sys.stdin if a.lockstep else range(a.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        if a.lockstep:
            print(f"{LOCKSTEP_STEP}{times[-1]}", flush=True)
    return times


def jpegs(a: WorkerArgs) -> list[Path]:
    """The first `predict_images` JPEG files of the bench's folder, in a fixed order."""
    files = sorted(p for p in Path(a.data_dir).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    return files[: a.predict_images]


def main(name: str, args_json: str) -> None:
    """The entry of a worker subprocess."""
    result = run(name, WorkerArgs(**json.loads(args_json)))
    print("BENCH_RESULT " + json.dumps(result), flush=True)
