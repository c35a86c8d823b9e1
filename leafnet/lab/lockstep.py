"""The bench's lockstep mode (`lockstep=true`): contenders take turns one training step at a time.

Rounds of whole timed loops cannot tell a contender's own unsteadiness from the host's: on a
shared CPU the host's speed drifts over minutes, and a contender whose round falls in a slow
minute looks unsteady. Here every contender is one long-lived worker that has warmed up and then
runs one step each time the parent asks (`worker.timed`); the parent asks each in turn, the order
reversed every cycle, so neighbouring steps of different contenders meet the same host. Beside
each contender's own step-to-step spread, the report gives, per cycle, its time against a
reference's (the first Keras contender, else the first one named) and how closely the two move
together (their correlation): contenders that move together are feeling the host, not their
own code.

Only contenders built on `worker.timed` run here: torch[+opts], keras-tf and keras-torch.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from leafnet.lab.worker import LOCKSTEP_READY, LOCKSTEP_STEP, WorkerArgs

STEPPED = ("torch", "keras-tf", "keras-torch")


def stepped(name: str) -> bool:
    """Whether contender `name` can run in lockstep (its worker times a step function)."""
    return name.split("+")[0] in STEPPED


def _line_starting(stream: IO[str], prefix: str) -> str | None:
    """The rest of the next line that starts with `prefix`, or None when the worker has ended."""
    for line in stream:
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    return None


def _answer(proc: subprocess.Popen, prefix: str, timeout: float | None) -> str | None:
    """The worker's next line starting with `prefix` (`_line_starting`); a worker still silent
    after `timeout` seconds is killed, and TimeoutError raised."""
    killed: list[bool] = []

    def kill() -> None:
        killed.append(True)
        proc.kill()

    timer = threading.Timer(timeout or 0, kill)
    if timeout:
        timer.start()
    try:
        line = _line_starting(proc.stdout, prefix)
    finally:
        timer.cancel()
    if killed:
        proc.wait()
        raise TimeoutError
    return line


def run_lockstep(
    contenders: list[str],
    base: WorkerArgs,
    cycles: int,
    popen: Any,
    sample: Callable[[], dict[str, float]] | None = None,
    timeout: float | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, float]]]:
    """`cycles` steps of every contender, in turn; {contender: [its worker's result]}, as
    `bench._alternate` gives them, and `sample()` taken after every cycle (the host's speed).
    `popen(name, args, log)` starts a worker with pipes to its stdin and stdout, its stderr into
    the file `log` (a pipe nobody reads could fill and stall it). A worker that takes longer
    than `timeout` seconds to warm up or to answer a step is killed and reported; the others go
    on."""
    args = WorkerArgs(**{**asdict(base), "lockstep": True})
    logs = Path(base.out_dir) / "lockstep"
    logs.mkdir(parents=True, exist_ok=True)
    workers: dict[str, subprocess.Popen] = {}
    errors: dict[str, str] = {}
    for name in contenders:  # one at a time: warm-ups must not share the cores
        print(f"lockstep: warming up {name}", file=sys.stderr)
        log = logs / f"{name}.stderr.txt"
        with log.open("w") as stderr:
            proc = popen(name, args, stderr)
        try:
            ready = _answer(proc, LOCKSTEP_READY, timeout)
        except TimeoutError:
            errors[name] = f"timed out after {timeout:.0f} s warming up"
            continue
        if ready is None:
            proc.wait()
            errors[name] = " | ".join(log.read_text().strip().splitlines()[-3:]) or f"see {log}"
            continue
        workers[name] = proc
    order = list(workers)
    samples: list[dict[str, float]] = []
    for cycle in range(cycles):
        print(f"lockstep: cycle {cycle + 1}/{cycles}", file=sys.stderr)
        for name in order if cycle % 2 == 0 else order[::-1]:
            proc = workers[name]
            if name in errors:
                continue
            try:
                proc.stdin.write("step\n")
                proc.stdin.flush()
                if _answer(proc, LOCKSTEP_STEP, timeout) is None:
                    errors[name] = f"the worker ended in cycle {cycle + 1}"
            except BrokenPipeError:
                errors[name] = f"the worker ended in cycle {cycle + 1}"
            except TimeoutError:
                errors[name] = f"timed out after {timeout:.0f} s in cycle {cycle + 1}"
        if sample is not None:
            samples.append(sample())
    raw: dict[str, list[dict[str, Any]]] = {name: [{"error": why}] for name, why in errors.items()}
    for name, proc in workers.items():
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()  # the worker's cue to report
        result = _line_starting(proc.stdout, "BENCH_RESULT ")
        proc.wait()
        if name not in raw:
            raw[name] = [json.loads(result) if result else {"error": "no result"}]
    return {name: raw[name] for name in contenders}, samples


def as_rounds(result: dict[str, Any], rounds: int) -> list[dict[str, Any]]:
    """A lockstep worker's steps cut into `rounds` consecutive blocks, so the report's per-round
    medians and spread read as they do for alternating rounds."""
    times = result.get("times")
    if not times:
        return [result]
    size = -(-len(times) // rounds)
    return [{**result, "times": times[i : i + size]} for i in range(0, len(times), size)]


def paired(times: dict[str, list[float]], reference: str) -> dict[str, dict[str, float]]:
    """Per contender, against `reference`'s step in the same cycle: the median ratio
    (reference / contender: above 1, the contender is faster), its 10th-90th percentiles, and the
    correlation of the two step times."""
    ref = times[reference]
    out: dict[str, dict[str, float]] = {}
    for name, mine in times.items():
        if name == reference or len(mine) != len(ref) or len(mine) < 3:
            continue
        ratios = [r / m for r, m in zip(ref, mine, strict=True)]
        deciles = statistics.quantiles(ratios, n=10)
        out[name] = {
            "ratio_median": statistics.median(ratios),
            "ratio_p10": deciles[0],
            "ratio_p90": deciles[-1],
            "correlation": statistics.correlation(ref, mine),
        }
    return out


def host_correlation(times: list[float], samples: list[dict[str, float]]) -> float | None:
    """How a contender's steps move with the host's own matmul time sampled in the same cycle
    (near 1: its slow steps are the host's slow moments)."""
    if len(times) != len(samples) or len(times) < 3:
        return None
    return statistics.correlation(times, [1 / s["matmul_gflops"] for s in samples])
