"""`python -m leafnet.train [key=value ...]`: train LeafNet with Hydra configs (conf/train.yaml).

One run writes everything into its run directory (docs/architecture.md): `.hydra/`, `train.log`,
`checkpoints/{best,last}.ckpt`, `split.csv`, `data_report.json`, `metrics.csv`, `summary.json`
and the TensorBoard events. At the end the best checkpoint is tested and a result table printed.

- `resume=<run dir>` continues that run from `last.ckpt` with the run's own saved config, in the
  same directory and TensorBoard log (only `epochs`, `trainer.*` and memory settings may change).
- A NaN or infinite loss, or an exploding one (an epoch's mean training loss over
  `callbacks.divergence.max_loss_ratio` x ln(classes)), ends the run with status `diverged`; a single run then exits non-zero
  with one line, while a sweep (`-m`) goes on to its next job. A run that fails with an error in
  a sweep is recorded as `failed` and the sweep goes on too.
- `tune.lr_find=true` runs Lightning's learning-rate finder, saves its plot and suggestion in the
  run directory and stops: train again with the suggested `lr=`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from leafnet.baseline import colour_baseline, verdict
from leafnet.config import CONFIG_DIR, command_help, compose, to_primitive
from leafnet.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, LeafnetError, fail
from leafnet.module import LeafClassifier
from leafnet.perf import peak_rss_bytes, runs_on_cpu, split_threads, tune_process
from leafnet.runs import read_run
from leafnet.schema import check_train_config
from leafnet.training import rundir
from leafnet.training.callbacks import AtomicCheckpoint, DivergenceStop
from leafnet.training.outcome import (
    final_metrics,
    fit_outcome,
    format_result,
    test_outcome,
    write_summary,
)
from leafnet.training.quiet import quiet_third_parties
from leafnet.training.resume import resume_config

log = logging.getLogger(__name__)

# TensorBoard's writer imports TensorFlow when it is installed (the `bench` extra installs it):
# 10 s and 0.5 GB per run, for nothing, since event files need only TensorBoard's own stub.
# An importable `tensorboard.compat.notf` is TensorBoard's switch for the stub.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))

PRECISIONS = ("32-true", "32", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")


class Diverged(LeafnetError):
    """The loss became NaN or infinite, or exploded; the run was saved with status diverged."""


# -- checks ----------------------------------------------------------------------------------------


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); emulated bf16 is ~100x slower."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def validate(cfg: DictConfig) -> None:
    """One-line errors for values that would fail later, deep inside torch or Lightning: every
    key's type and range (`leafnet.schema`), then what depends on the machine."""
    check_train_config(to_primitive(cfg))
    if not cfg.data.get("synthetic"):  # the synthetic set is written on first use
        from leafnet.data.datamodule import check_data_dir

        check_data_dir(str(cfg.data.dir))
    precision = str(cfg.precision)
    if precision not in PRECISIONS:
        raise LeafnetError(f"precision={precision} is unknown; use one of {', '.join(PRECISIONS)}")
    if runs_on_cpu(str(cfg.trainer.get("accelerator", "auto"))):
        if precision.startswith("16"):
            raise LeafnetError(
                f"precision={precision} needs a GPU; on the CPU use precision=32-true"
            )
        if precision.startswith("bf16") and not cpu_has_bf16():
            raise LeafnetError(
                f"precision={precision}: this CPU has no native bfloat16 (AVX512-BF16/AMX), so it "
                "would run many times slower; use precision=32-true"
            )


# -- the run ---------------------------------------------------------------------------------------


def _hydra_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _peak_rss_gb() -> float:
    return round(peak_rss_bytes() / 2**30, 3)


def _flat_hparams(cfg: DictConfig, classifier: LeafClassifier) -> dict[str, Any]:
    """The HParams tab's columns: one flat value per knob that distinguishes runs."""
    hp = classifier.hparams
    return {
        "optimizer": hp.optimizer.get("name", "?"),
        "lr": hp.lr,
        "batch_size": cfg.batch_size,
        "micro_batch_size": hp.micro_batch_size or cfg.batch_size,
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "weight_decay": hp.weight_decay,
        "scheduler": hp.scheduler.get("name", "none"),
        "precision": str(cfg.precision),
        "image_size": hp.model["image_size"],
        "conv1_filters": hp.model.get("conv1_filters", 32),
        "conv2_filters": hp.model.get("conv2_filters", 16),
        "dense_units": hp.model.get("dense_units", 8),
        "resize": hp.preprocessing["resize"],
        "normalize": hp.preprocessing["normalize"],
        "augment": str(cfg.data.get("augment", "none")),
    }


def train(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> float | None:
    """Train one run; returns the best validation accuracy (what sweepers maximise)."""
    started = time.perf_counter()
    quiet_third_parties()
    tune_process()
    split_threads()  # a parallel sweep (hydra/launcher=joblib): cpus // n_jobs threads per job

    overrides = _hydra_overrides()
    ckpt_path = None
    if cfg.get("resume"):
        cfg, run_dir, overrides = resume_config(cfg, overrides)
        ckpt_path = str(AtomicCheckpoint.resume_path(run_dir))
        log.info("resuming from %s", ckpt_path)
    if run_dir is None:
        run_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else "."
    run_dir = Path(run_dir)
    # DDP's other ranks run this too, in the directory rank 0 holds.
    rank0 = int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0
    claimed = rundir.claim(run_dir, resuming=ckpt_path is not None) if rank0 else nullcontext()
    with claimed:
        return _train_in(cfg, run_dir, ckpt_path, overrides, started, rank0)


def _train_in(
    cfg: DictConfig,
    run_dir: Path,
    ckpt_path: str | None,
    overrides: list[str],
    started: float,
    rank0: bool,
) -> float | None:
    """Train in a claimed run directory; summary.json says how it ended, whatever happens."""
    summary: dict[str, Any] = {
        "status": "failed",
        "optimizer": cfg.optimizer.get("name") if "optimizer" in cfg else None,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "image_size": cfg.data.image_size,
        "epochs_completed": 0,
        "best_val_acc": None,
        "best_epoch": None,
        "final_val_loss": None,
        "final_train_loss": None,
        "test_acc": None,
        "test_f1_macro": None,
        "test_balanced_acc": None,
        "wall_time_s": 0.0,
        "images_per_s": None,
        "peak_rss_gb": 0.0,
        "diverged_at": None,
        "overrides": overrides,
    }
    previous = run_dir / "summary.json"
    earlier_time = 0.0  # a resumed run's time includes the time before it stopped
    if ckpt_path and previous.is_file():
        earlier_time = json.loads(previous.read_text()).get("wall_time_s") or 0.0
    try:
        return _fit_and_test(cfg, run_dir, ckpt_path, summary, started - earlier_time)
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        raise
    except Diverged:
        raise  # status diverged is already set
    except BaseException as err:
        summary["status"] = "failed"
        summary["error"] = " ".join(str(err).split()) or type(err).__name__
        raise
    finally:
        summary["wall_time_s"] = round(earlier_time + time.perf_counter() - started, 2)
        summary["peak_rss_gb"] = _peak_rss_gb()
        if rank0:
            write_summary(run_dir, summary)


def _logger(node: DictConfig, run_dir: Path, overrides: list[str]) -> Any:
    """A logger from its config, writing under the run directory; a run name left null (MLflow's
    `run_name`, W&B's `name`) becomes the run's overrides."""
    kwargs: dict[str, Any] = {"save_dir": str(run_dir)}
    for key in ("run_name", "name"):
        if key in node and node[key] is None:
            kwargs[key] = ",".join(overrides) or run_dir.name
    target = str(node.get("_target_", ""))
    for extra in ("mlflow", "wandb"):
        if target.lower().endswith(f"{extra}logger") and importlib.util.find_spec(extra) is None:
            raise LeafnetError(f"logger={extra} needs pip install 'leafnet[{extra}]'")
    uri = str(node.get("tracking_uri") or "")
    if uri.startswith("sqlite:///"):  # SQLite creates the file, not its folder
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return instantiate(node, **kwargs)


@contextmanager
def _interruptible(trainer: pl.Trainer) -> Iterator[None]:
    """Lightning turns Ctrl-C (and SIGTERM, see `run_job`) into sys.exit(1) after the callbacks'
    on_exception; raise it again as the interruption it was."""
    try:
        yield
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise


def _fit_and_test(
    cfg: DictConfig, run_dir: Path, ckpt_path: str | None, summary: dict[str, Any], started: float
) -> float | None:
    from leafnet.data.datamodule import LeafDataModule

    validate(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = LeafDataModule(
        **to_primitive(cfg.data), batch_size=cfg.batch_size, seed=cfg.seed, run_dir=str(run_dir)
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    class_names = list(datamodule.class_names)
    classifier = LeafClassifier.from_config(
        to_primitive(cfg),
        class_names,
        datamodule.preprocessing.to_dict(),
        class_counts=datamodule.class_counts("train"),
    )

    loggers = [
        _logger(c, run_dir, summary["overrides"]) for c in (cfg.get("logger") or {}).values()
    ]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not loggers:  # logger=none: nothing to monitor the learning rate into
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar it may not show
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=str(run_dir)
    )

    if cfg.get("tune", {}).get("lr_find"):
        from leafnet.training.tune import lr_find

        steps = int(cfg.tune.get("num_training", 100))
        suggestion = lr_find(trainer, classifier, datamodule, run_dir, num_training=steps)
        summary["status"] = "lr_find"
        summary["lr_suggestion"] = suggestion
        log.info(
            "lr finder suggests lr=%g (plot in %s); train with lr=%g",
            suggestion,
            run_dir,
            suggestion,
        )
        return None

    log.info(
        "training %s lr=%g batch %d (micro-batches of %d) at %dx%d on %d classes -> %s",
        summary["optimizer"], cfg.lr, cfg.batch_size, classifier.hparams.micro_batch_size,
        cfg.data.image_size, cfg.data.image_size, len(class_names), run_dir,
    )  # fmt: skip
    with _interruptible(trainer):
        trainer.fit(classifier, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    # The run's facts, from what it logged and wrote: metrics.csv (EpochMetrics), the last logged
    # val_alive_units (DeadUnits), and the divergence record of the DivergenceStop it built.
    stops = [cb for cb in callbacks if isinstance(cb, DivergenceStop)]
    diverged = stops[0].diverged_at if stops else None
    alive = trainer.callback_metrics.get("val_alive_units")
    summary.update(fit_outcome(read_run(run_dir).metrics, diverged, alive))
    summary["micro_batch_size"] = classifier.hparams.micro_batch_size
    summary["seed"] = cfg.seed
    summary["class_counts"] = datamodule.report["classes"]

    best_ckpt = run_dir / "checkpoints" / "best.ckpt"
    if best_ckpt.is_file():
        with _interruptible(trainer):
            metrics = trainer.test(
                classifier,
                datamodule=datamodule,
                ckpt_path=str(best_ckpt),
                verbose=False,
                weights_only=True,
            )
        summary.update(
            test_outcome(metrics[0] if metrics else {}, class_names, classifier.confusion_matrix())
        )
        if trainer.is_global_zero:
            splits = {s: datamodule.dataset(s) for s in ("train", "val", "test")}
            summary["colour_baseline"] = colour_baseline(splits)
            colour = summary["colour_baseline"].get("test_balanced_acc")
            warning = verdict(summary["test_balanced_acc"], colour)
            if warning:
                log.warning("%s", warning)

    final = final_metrics(summary)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            # The HParams tab pairs hparams with these metrics (instead of hp_metric = -1).
            logger.log_hyperparams(_flat_hparams(cfg, classifier), final)
        else:
            logger.log_hyperparams(_flat_hparams(cfg, classifier))
            logger.log_metrics(final)
        logger.finalize("success")

    if trainer.is_global_zero:
        summary["wall_time_s"] = round(time.perf_counter() - started, 2)
        summary["peak_rss_gb"] = _peak_rss_gb()
        log.info("\n%s", format_result(summary, run_dir))
    if diverged:
        raise Diverged(
            f"training diverged (loss {diverged.get('reason', 'not finite')}) at epoch "
            f"{diverged['epoch']} step {diverged['step']}"
            f" with lr={cfg.lr:g}; try a lower learning rate, e.g. lr={cfg.lr / 10:g}"
        )
    return summary["best_val_acc"]


# -- entry point -----------------------------------------------------------------------------------


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _task(cfg: DictConfig) -> float | None:
    """Hydra's task function."""
    return run_job(cfg, multirun=_is_multirun())


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[list[int]]:
    """SIGTERM (a cluster pre-empting the job) handled as Ctrl-C is: last.ckpt, status
    interrupted. Yields the list the signal number is appended to, so the caller can tell the two
    apart. Outside the main thread (signals need it) nothing changes."""
    terminated: list[int] = []
    trainer_pid = os.getpid()

    def on_sigterm(signum: int, frame: object) -> None:
        if os.getpid() != trainer_pid:
            # A forked helper (a process pool writing the synthetic set, a data-loader worker)
            # inherits this handler; its parent ends it with SIGTERM, which must just end it.
            os._exit(128 + signum)
        terminated.append(signum)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield terminated
        return
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield terminated
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_job(cfg: DictConfig, multirun: bool) -> float | None:
    """Train, applying the error policy: a single run ends with one line and a non-zero exit; a
    sweep job logs the error and returns, so the sweep goes on."""
    with sigterm_as_ctrl_c() as terminated:
        try:
            return train(cfg)
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


_HYDRA_FLAGS_THAT_RUN_NOTHING = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i")


def _closest_key(cfg: DictConfig, key: str) -> str:
    """The config keys nearest to a misspelt `key` (', or ...'), for the error line."""
    import difflib

    def walk(node: Any, prefix: str) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield f"{prefix}{k}"
                yield from walk(v, f"{prefix}{k}.")

    known = list(walk(to_primitive(cfg), ""))
    near = difflib.get_close_matches(key, known, n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(near)}?" if near else ""


def _composed(overrides: list[str]) -> DictConfig:
    """The run's config with Hydra's section, composed before Hydra starts: a misspelt key or
    option is one line naming the nearest valid ones."""
    import difflib

    try:
        return compose("train", overrides, return_hydra_config=True)
    except LeafnetError as err:
        text = str(err)
        key = re.search(r"Could not override '([\w.]+)'", text)
        if key:
            hint = _closest_key(compose("train", []), key.group(1))
            raise LeafnetError(
                f"{key.group(1)} is not a leafnet setting{hint} "
                "(python -m leafnet.train --help lists them)"
            ) from None
        option = re.search(
            r"Could not find '(\w+)/([^']+)' Available options in '\w+': (.*?) Config", text
        )
        if option:
            group, name, known = option.group(1), option.group(2), option.group(3).split()
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {group}={near[0]}? " if near else ""
            raise LeafnetError(
                f"{group}={name} is not an option; {hint}the options are {', '.join(known)}"
            ) from None
        raise


def _output_dir(hydra_cfg: DictConfig, key: str) -> Path | None:
    """`hydra.<key>` made absolute, or None while it needs a running Hydra to resolve."""
    try:
        return Path(str(OmegaConf.select(hydra_cfg, key))).absolute()
    except Exception:
        return None


def check_output_dirs(hydra_cfg: DictConfig) -> None:
    """One line, before Hydra starts, when the run or sweep directory cannot be created (Hydra
    would create it with a traceback)."""
    for key in ("run.dir", "sweep.dir"):
        wanted = _output_dir(hydra_cfg, key)
        if wanted is None:
            continue
        existing = next(p for p in (wanted, *wanted.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise LeafnetError(
                f"hydra.{key}={wanted} cannot be created: {existing} is not a writable folder; "
                "choose another hydra.run.dir or paths.output_dir"
            )


def main() -> None:
    """Check the command line and take the run directory before Hydra writes anything there: a
    start that would fail, or a directory another process is training in, is left untouched."""
    argv = sys.argv[1:]
    if any(a in ("-h", "--help") for a in argv):
        print(command_help("train", "train", "train a model (Hydra: key=value, -m for sweeps)"))
        return
    if any(a.split("=")[0] in _HYDRA_FLAGS_THAT_RUN_NOTHING for a in argv):
        _task()
        return
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        cfg = _composed(overrides)
    except LeafnetError as err:
        if "To sweep over it" not in str(err):
            fail(str(err))
        cfg = None  # sweep syntax (lr=0.1,0.01) composes only inside Hydra's sweeper
    try:
        if cfg is not None:
            check_output_dirs(cfg.hydra)
        multirun = cfg is None or any(a in ("-m", "--multirun") for a in argv)
        if multirun or cfg.hydra.mode == RunMode.MULTIRUN:
            _task()  # each job claims its own directory
            return
        resuming = bool(cfg.get("resume"))
        job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        if not resuming:  # a new run's directory is made only for a start that can go ahead
            validate(job)
        elif not Path(str(cfg.resume)).is_dir():
            raise LeafnetError(f"resume={cfg.resume}: no such run directory")
        run_dir = _output_dir(cfg.hydra, "run.dir")
        rank0 = (
            int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0
        )
        if run_dir is None or not rank0:
            _task()
            return
        # The directory as resolved now, for Hydra too (its `${now:}` would name another).
        quoted = str(run_dir).replace("\\", "\\\\").replace("'", "\\'")
        sys.argv.append(f"hydra.run.dir='{quoted}'")
        with rundir.claim(run_dir, resuming=resuming):
            if resuming:  # refused before Hydra writes its config and log into the run
                validate(resume_config(job, overrides)[0])
            _task()
    except LeafnetError as err:
        fail(str(err))


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy: joblib's workers then receive the
    # task function by reference (leafnet.train._task) instead of a by-value pickle of __main__.
    from leafnet.train import main as _main

    _main()
