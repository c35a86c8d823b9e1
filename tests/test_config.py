"""Every config group composes (Hydra Compose API) and the values the trainer refuses are refused."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from leafnet import train as train_mod
from leafnet.config import CONFIG_DIR, _config_subdir
from leafnet.config import compose as leafnet_compose
from leafnet.errors import LeafnetError
from leafnet.module import build_scheduler


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_defaults_are_the_seed_setup() -> None:
    cfg = leafnet_compose("train", ["optimizer=adam", "lr=1e-4"])
    assert cfg.lr == 1e-4 and cfg.batch_size == 32 and cfg.optimizer.name == "adam"
    assert cfg.data.image_size == 640 and cfg.scheduler.name == "none"
    assert cfg.trainer.accelerator == "auto" and cfg.precision == "32-true"
    OmegaConf.resolve(cfg)  # every interpolation resolves outside a Hydra run too


@pytest.mark.parametrize(
    "group", ["data", "model", "optimizer", "scheduler", "trainer", "logger", "callbacks", "hydra"]
)
def test_every_option_composes(group: str) -> None:
    assert options(group), group
    for option in options(group):
        cfg = leafnet_compose("train", [f"{group}={option}"])
        OmegaConf.resolve(cfg)


def test_bad_group_option_lists_the_valid_ones() -> None:
    with pytest.raises(LeafnetError, match="adam"):
        leafnet_compose("train", ["optimizer=adamw"])


@pytest.mark.parametrize("name", options("scheduler"))
def test_schedulers_build(name: str) -> None:
    cfg = leafnet_compose("train", [f"scheduler={name}"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_scheduler(opt, OmegaConf.to_container(cfg.scheduler, resolve=True))
    assert (scheduler is None) == (name == "none")


@pytest.mark.parametrize("option", ["default", "cpu", "ddp"])
def test_trainer_configs_instantiate_on_cpu(option: str, tmp_path) -> None:
    cfg = leafnet_compose("train", [f"trainer={option}", "trainer.accelerator=cpu"])
    trainer = instantiate(cfg.trainer, logger=False, default_root_dir=str(tmp_path))
    assert isinstance(trainer, pl.Trainer) and trainer.max_epochs == cfg.epochs


@pytest.mark.parametrize("option", ["gpu", "mps"])
def test_gpu_and_mps_configs_train_there_or_say_why_not(option: str, tmp_path: Path) -> None:
    """trainer=gpu or mps gets that device where there is one; elsewhere Lightning refuses (it
    never falls back to the CPU unasked)."""
    from hydra.errors import InstantiationException
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

    accelerator = {"gpu": CUDAAccelerator, "mps": MPSAccelerator}[option]
    cfg = leafnet_compose("train", [f"trainer={option}"])
    if accelerator.is_available():
        trainer = instantiate(cfg.trainer, logger=False, default_root_dir=str(tmp_path))
        assert isinstance(trainer.accelerator, accelerator)
    else:
        with pytest.raises(InstantiationException, match=r"(gpu backend|MPSAccelerator)"):
            instantiate(cfg.trainer, logger=False, default_root_dir=str(tmp_path))


# The trackers write to their own stores: tested in test_train.py (MLflow) and below.
FILE_LOGGERS = [o for o in options("logger") if o not in ("mlflow", "wandb")]


def test_trackers_default_to_local_stores() -> None:
    mlflow = leafnet_compose("train", ["logger=mlflow", "paths.output_dir=/x"]).logger.mlflow
    assert mlflow.tracking_uri == "sqlite:////x/mlruns/mlflow.db"
    assert mlflow.artifact_location == "/x/mlruns/artifacts"
    assert leafnet_compose("train", ["logger=wandb"]).logger.wandb.offline is True


@pytest.mark.parametrize("option", FILE_LOGGERS)
def test_loggers_write_into_the_run_dir(option: str, tmp_path) -> None:
    cfg = leafnet_compose("train", [f"logger={option}"])
    for logger_cfg in (cfg.logger or {}).values():
        logger = instantiate(logger_cfg, save_dir=str(tmp_path))
        assert str(tmp_path) in str(logger.log_dir)


def test_callbacks_instantiate() -> None:
    cfg = leafnet_compose("train")
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    assert {type(c).__name__ for c in callbacks} >= {
        "AtomicCheckpoint",
        "DivergenceStop",
        "EpochMetrics",
    }


def test_run_directories_new_resumed_and_swept(tmp_path: Path) -> None:
    def hydra_node(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("train", ["lr=0.1", *overrides], return_hydra_config=True).hydra

    first, second = (str(hydra_node().run.dir) for _ in range(2))
    assert first.startswith("./outputs/runs/") and first != second  # unique within a second
    assert hydra_node(f"resume={tmp_path}").run.dir == str(tmp_path)  # reopens the run
    assert str(hydra_node().sweep.dir).startswith("./outputs/multiruns/")
    assert "data.dir" in hydra_node().job.config.override_dirname.exclude_keys
    # Where Hydra saves the invocation's config: a resumed run keeps its own .hydra/, and a
    # directory that holds a run is not written into (train then refuses it).
    assert _config_subdir(str(tmp_path), str(tmp_path)) == ".hydra/resume"
    assert _config_subdir(None, str(tmp_path)) == ".hydra"
    (tmp_path / "summary.json").write_text("{}")
    assert _config_subdir(None, str(tmp_path)) is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=0", "lr=0"),
        ("lr=-1e-3", "lr=-0.001"),
        ("batch_size=0", "batch_size=0"),
        ("epochs=0", "epochs=0"),
        ("micro_batch_size=0", "micro_batch_size=0"),
        ("precision=8-bit", "precision=8-bit"),
        ("precision=16-mixed", "needs a GPU"),
    ],
)
def test_bad_values_are_one_line_errors(override: str, message: str) -> None:
    cfg = leafnet_compose("train", [override, "trainer=cpu"])
    with pytest.raises(LeafnetError, match=message) as err:
        train_mod.validate(cfg)
    assert "\n" not in str(err.value)


def test_bf16_refused_on_a_cpu_without_bf16(monkeypatch) -> None:
    monkeypatch.setattr(train_mod, "cpu_has_bf16", lambda: False)
    cfg = leafnet_compose("train", ["precision=bf16-mixed", "trainer=cpu"])
    with pytest.raises(LeafnetError, match="bfloat16"):
        train_mod.validate(cfg)
    monkeypatch.setattr(train_mod, "cpu_has_bf16", lambda: True)
    train_mod.validate(cfg)
