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
import difflib
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from leafnet.adapters.pytorch import cpu_has_bf16
from leafnet.baseline import colour_baseline, verdict
from leafnet.config import CONFIG_DIR, command_help, compose, to_primitive
from leafnet.data.datamodule import LeafDataModule
from leafnet.data.folder import check_data_dir
from leafnet.errors import LeafnetError, fail
from leafnet.module import LeafClassifier
from leafnet.perf import runs_on_cpu
from leafnet.rank import is_rank0, started_by_launcher
from leafnet.runs import read_run
from leafnet.schema import check_train_config
from leafnet.training import logs, rundir
from leafnet.training.bookkeeping import Run, open_run, run_job
from leafnet.training.callbacks import DivergenceStop
from leafnet.training.checkpoint import AtomicCheckpoint
from leafnet.training.outcome import final_metrics, fit_outcome, test_outcome
from leafnet.training.resume import resume_config
from leafnet.training.tune import lr_find

log = logging.getLogger(__name__)

PRECISIONS = ("32-true", "32", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")


# -- checks ----------------------------------------------------------------------------------------


def validate(cfg: DictConfig) -> None:
    """One-line errors for values that would fail later, deep inside torch or Lightning: every
    key's type and range (`leafnet.schema`), then what depends on the machine."""
    check_train_config(to_primitive(cfg))
    if not cfg.data.get("synthetic"):  # the synthetic set is written on first use
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


def train(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> float | None:
    """Train one run; returns the best validation accuracy (what sweepers maximise)."""
    with open_run(cfg, run_dir, _hydra_overrides()) as run:
        cfg = run.cfg  # a resumed run's own saved config
        validate(cfg)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        # Only the first process writes the data's files (split.csv, data_report.json): another
        # one starting sooner would leave them in the directory the first has yet to claim.
        datamodule = LeafDataModule(
            **to_primitive(cfg.data),
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            run_dir=str(run.dir) if run.rank0 else None,
        )
        datamodule.prepare_data()
        datamodule.setup("fit")
        classifier = LeafClassifier.from_config(
            to_primitive(cfg),
            datamodule.class_names,
            datamodule.preprocessing.to_dict(),
            class_counts=datamodule.class_counts("train"),
        )
        loggers = [make_logger(node, run) for node in (cfg.get("logger") or {}).values()]
        callbacks = make_callbacks(cfg, with_loggers=bool(loggers))
        trainer: pl.Trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=str(run.dir)
        )
        if cfg.get("tune", {}).get("lr_find"):
            return find_lr(trainer, classifier, datamodule, run)

        log.info(
            "training %s lr=%g batch %d (micro-batches of %d) at %d px, precision %s, "
            "on %d classes -> %s",
            run.summary["optimizer"], cfg.lr, cfg.batch_size, classifier.hparams.micro_batch_size,
            cfg.data.image_size, cfg.precision, len(datamodule.class_names), run.dir,
        )  # fmt: skip
        with interruptible(trainer):
            trainer.fit(
                classifier, datamodule=datamodule, ckpt_path=run.ckpt_path, weights_only=True
            )
        # The run's facts, from what it logged and wrote: metrics.csv (EpochMetrics), the last
        # logged val_alive_units (DeadUnits), the divergence record of its DivergenceStop.
        alive = trainer.callback_metrics.get("val_alive_units")
        run.summary.update(fit_outcome(read_run(run.dir).metrics, diverged_at(callbacks), alive))
        run.summary["micro_batch_size"] = classifier.hparams.micro_batch_size
        run.summary["seed"] = cfg.seed
        run.summary["class_counts"] = datamodule.report["classes"]

        best = AtomicCheckpoint.best_to_test(trainer, run.dir)
        if best is not None:
            with interruptible(trainer):
                tested = trainer.test(
                    classifier, datamodule=datamodule, ckpt_path=str(best), verbose=False,
                    weights_only=True,
                )  # fmt: skip
            confusion = classifier.confusion_matrix()
            run.summary.update(
                test_outcome(tested[0] if tested else {}, datamodule.class_names, confusion)
            )
            if run.rank0:
                run.summary["colour_baseline"] = against_colour(datamodule, run.summary)
        log_hyperparams(trainer, _flat_hparams(cfg, classifier), final_metrics(run.summary))
        return run.finish()


def _hydra_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def make_logger(node: DictConfig, run: Run) -> Any:
    """A logger from its config, writing under the run directory; a run name left null (MLflow's
    `run_name`, W&B's `name`) becomes the run's overrides."""
    kwargs: dict[str, Any] = {"save_dir": str(run.dir)}
    for key in ("run_name", "name"):
        if key in node and node[key] is None:
            kwargs[key] = ",".join(run.overrides) or run.dir.name
    target = str(node.get("_target_", ""))
    for extra in ("mlflow", "wandb"):
        if target.lower().endswith(f"{extra}logger") and importlib.util.find_spec(extra) is None:
            raise LeafnetError(f"logger={extra} needs pip install 'leafnet[{extra}]'")
    uri = str(node.get("tracking_uri") or "")
    if uri.startswith("sqlite:///"):  # SQLite creates the file, not its folder
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return instantiate(node, **kwargs)


def make_callbacks(cfg: DictConfig, with_loggers: bool) -> list[pl.Callback]:
    """The configured callbacks, less those Lightning would refuse in this run."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not with_loggers:  # logger=none: nothing to monitor the learning rate into
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar it may not show
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


def diverged_at(callbacks: list[pl.Callback]) -> dict[str, Any] | None:
    """Where the loss stopped being finite or exploded, as the run's DivergenceStop recorded it."""
    stops = [cb for cb in callbacks if isinstance(cb, DivergenceStop)]
    return stops[0].diverged_at if stops else None


@contextlib.contextmanager
def interruptible(trainer: pl.Trainer) -> Iterator[None]:
    """Lightning turns Ctrl-C into sys.exit(1), and SIGTERM into its SIGTERMException at a batch's
    end, after the callbacks' on_exception; raise either again as the interruption it was."""
    try:
        yield
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    if trainer.received_sigterm:  # in the last batch, after Lightning's last look
        raise KeyboardInterrupt


def against_colour(datamodule: LeafDataModule, summary: dict[str, Any]) -> dict[str, Any]:
    """The colour baseline on the run's own split, with a warning when the model is not clearly
    better (docs/real_data.md)."""
    splits = {s: datamodule.dataset(s) for s in ("train", "val", "test")}
    colour = colour_baseline(splits)
    warning = verdict(summary["test_balanced_acc"], colour.get("test_balanced_acc"))
    if warning:
        log.warning("%s", warning)
    return colour


def log_hyperparams(trainer: pl.Trainer, hparams: dict[str, Any], final: dict[str, float]) -> None:
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            # The HParams tab pairs hparams with these metrics (instead of hp_metric = -1).
            logger.log_hyperparams(hparams, final)
        else:
            logger.log_hyperparams(hparams)
            logger.log_metrics(final)
        logger.finalize("success")


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


def find_lr(
    trainer: pl.Trainer, classifier: LeafClassifier, datamodule: LeafDataModule, run: Run
) -> None:
    """`tune.lr_find=true`: Lightning's learning-rate finder instead of training."""
    steps = int(run.cfg.tune.get("num_training", 100))
    suggestion = lr_find(trainer, classifier, datamodule, run.dir, num_training=steps)
    run.summary["status"] = "lr_find"
    run.summary["lr_suggestion"] = suggestion
    log.info(
        "lr finder suggests lr=%g (plot in %s); train with lr=%g", suggestion, run.dir, suggestion
    )


# -- entry point -----------------------------------------------------------------------------------


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _task(cfg: DictConfig) -> float | None:
    """Hydra's task function: one run, logging into its directory's train.log."""
    logs.to_console()
    run_log = Path(HydraConfig.get().runtime.output_dir) / "train.log"
    with logs.to_file(run_log) if is_rank0() else contextlib.nullcontext():
        return run_job(train, cfg, multirun=_is_multirun())


_HYDRA_FLAGS_THAT_RUN_NOTHING = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i")


def _closest_key(cfg: DictConfig, key: str) -> str:
    """The config keys nearest to a misspelt `key` (', or ...'), for the error line."""

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
    try:
        return compose("train", overrides, return_hydra_config=True)
    except LeafnetError as err:
        text = str(err)
        key = re.search(r"Could not override '([\w.]+)'", text)
        if key:
            hint = _closest_key(compose("train", []), key.group(1))
            raise LeafnetError(
                f"{key.group(1)} is not a leafnet setting{hint} (leafnet train --help lists them)"
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
    logs.to_console()
    if any(a in ("-h", "--help") for a in argv):
        print(command_help("train", "train", "train a model (Hydra: key=value, -m for sweeps)"))
        return
    if any(a.split("=")[0] in _HYDRA_FLAGS_THAT_RUN_NOTHING for a in argv):
        _task()
        return
    overrides = [a for a in argv if not a.startswith("-")]
    if started_by_launcher() and not any(a.startswith("hydra.run.dir=") for a in overrides):
        fail(
            "a run that torchrun or srun starts in several processes needs hydra.run.dir=<a "
            "folder every process reaches>, the same in each (docs/training.md, 'Several "
            "processes and machines')"
        )
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
        if run_dir is None or not is_rank0():
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
