"""A run's bookkeeping, beside `train()`: its directory, its summary, its time, its signals.

- `open_run(cfg, run_dir, overrides)` is the block `train()` runs in. It prepares the process,
  resolves `resume=` to the run's own saved config and `last.ckpt`, claims the run directory
  (`rundir.claim`), and writes `summary.json` however the block ends: `completed` or `diverged`
  (from what the run logged), `lr_find`, `failed` with the error, or `interrupted`; with the wall
  time (a resumed run's earlier time included) and the peak memory.
- `Run.finish()` prints the result table and ends a diverged run with `Diverged`.
- `run_job(task, cfg, multirun)` is the error policy around Hydra's task function: a single run
  ends with one line and a non-zero exit; a sweep job logs the error and returns, so the sweep
  goes on. SIGTERM (a cluster pre-empting the job) is handled as Ctrl-C is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from leafnet.adapters.tensorboard import without_tensorflow
from leafnet.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, LeafnetError, fail
from leafnet.perf import peak_rss_bytes, split_threads, tune_process
from leafnet.rank import is_rank0
from leafnet.training import rundir
from leafnet.training.checkpoint import AtomicCheckpoint
from leafnet.training.outcome import blank_summary, format_result, write_summary
from leafnet.training.quiet import quiet_third_parties
from leafnet.training.resume import resume_config

log = logging.getLogger(__name__)


class Diverged(LeafnetError):
    """The loss became NaN or infinite, or exploded; the run was saved with status diverged."""


@dataclass
class Run:
    """One run in progress: its config (a resume's own), directory, checkpoint to resume from,
    overrides, and the summary that will be written."""

    cfg: DictConfig
    dir: Path
    ckpt_path: str | None
    overrides: list[str]
    summary: dict[str, Any]
    started: float  # perf_counter() at the start, less a resumed run's earlier time
    rank0: bool
    stamped: bool = False  # time and memory taken: the printed result and summary.json agree

    def stamp(self) -> None:
        self.stamped = True
        self.summary["wall_time_s"] = round(time.perf_counter() - self.started, 2)
        self.summary["peak_rss_gb"] = round(peak_rss_bytes() / 2**30, 3)

    def finish(self) -> float | None:
        """Print the result; a diverged run ends here with `Diverged`. Returns the best
        validation accuracy."""
        self.stamp()
        if self.rank0:
            log.info("\n%s", format_result(self.summary, self.dir))
        diverged, lr = self.summary.get("diverged_at"), float(self.cfg.lr)
        if diverged:
            raise Diverged(
                f"training diverged (loss {diverged.get('reason', 'not finite')}) at epoch "
                f"{diverged['epoch']} step {diverged['step']} with lr={lr:g}; try a lower "
                f"learning rate, e.g. lr={lr / 10:g}"
            )
        return self.summary["best_val_acc"]


def _earlier_time(run_dir: Path) -> float:
    """The wall time a resumed run had spent before it stopped."""
    try:
        return float(json.loads((run_dir / "summary.json").read_text()).get("wall_time_s") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


@contextlib.contextmanager
def open_run(
    cfg: DictConfig, run_dir: str | os.PathLike | None, overrides: list[str]
) -> Iterator[Run]:
    """The block one run trains in; see the module docstring."""
    started = time.perf_counter()
    quiet_third_parties()
    without_tensorflow()
    tune_process()
    split_threads()  # a parallel sweep (hydra/launcher=joblib): cpus // n_jobs threads per job
    ckpt_path = None
    if cfg.get("resume"):
        cfg, run_dir, overrides = resume_config(cfg, overrides)
        ckpt_path = str(AtomicCheckpoint.resume_path(run_dir))
        log.info("resuming from %s", ckpt_path)
    if run_dir is None:
        run_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else "."
    run_dir = Path(run_dir)
    rank0 = is_rank0()
    claimed = rundir.claim(run_dir, resuming=ckpt_path is not None) if rank0 else None
    with claimed or contextlib.nullcontext():
        earlier = _earlier_time(run_dir) if ckpt_path else 0.0
        run = Run(
            cfg,
            run_dir,
            ckpt_path,
            overrides,
            blank_summary(cfg, overrides),
            started - earlier,
            rank0,
        )
        try:
            yield run
        except KeyboardInterrupt:
            run.summary["status"] = "interrupted"
            raise
        except Diverged:
            raise  # status diverged is already set
        except BaseException as err:
            run.summary["status"] = "failed"
            run.summary["error"] = " ".join(str(err).split()) or type(err).__name__
            raise
        finally:
            if not run.stamped:
                run.stamp()
            if rank0:
                write_summary(run_dir, run.summary)


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[list[int]]:
    """SIGTERM handled as Ctrl-C is: last.ckpt, status interrupted. Yields the list the signal
    number is appended to, so the caller can tell the two apart. While Lightning trains or tests,
    it is Lightning's graceful stop at a batch's end. Outside the main thread (signals need it)
    nothing changes."""
    terminated: list[int] = []
    trainer_pid = os.getpid()

    def on_sigterm(signum: int, frame: object) -> None:
        if os.getpid() != trainer_pid:
            # A forked helper (a process pool writing the synthetic set, a data-loader worker)
            # inherits this handler; its parent ends it with SIGTERM, which must just end it.
            os._exit(128 + signum)
        terminated.append(signum)
        if signal.getsignal(signal.SIGTERM) is not on_sigterm:
            # While a trainer runs, Lightning's handler calls this one and stops the loop itself
            # at the next batch's end (`train.interruptible` makes that this interruption).
            # Raising here would stop whatever line runs, TensorBoard's writer queue among them,
            # whose close then waits up to two minutes for a wake-up that was lost.
            return
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield terminated
        return
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield terminated
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_job(
    task: Callable[[DictConfig], float | None], cfg: DictConfig, multirun: bool
) -> float | None:
    """`task(cfg)` under the error policy of the module docstring."""
    with sigterm_as_ctrl_c() as terminated:
        try:
            return task(cfg)
        except KeyboardInterrupt:
            code = EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
            run_dir = (
                Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
            )
            if run_dir is not None and (run_dir / "checkpoints" / "last.ckpt").is_file():
                fail(f"interrupted (last.ckpt saved; continue with resume={run_dir})", code)
            fail(
                "interrupted before the first checkpoint, so there is nothing to resume; start "
                "again (the same hydra.run.dir may be used)",
                code,
            )
        except LeafnetError as err:
            log.error("%s", " ".join(str(err).split()))  # into train.log too, beside summary.json
            if not multirun:
                fail(str(err))
            if isinstance(err, Diverged):
                # A sweeper that optimises the return value (hparams_search=optuna) must learn that
                # this learning rate is bad, not treat the trial as failed and learn nothing.
                return 0.0
        except Exception:
            if not multirun:
                raise
            log.exception("run failed; the sweep goes on")
    return None
