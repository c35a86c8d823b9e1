"""Resuming a run: its config composed again from leafnet's own config groups.

A run directory may come from someone else. `resume_config` never instantiates what the run's
`.hydra/config.yaml` names: it composes `conf/train.yaml` again with the run's saved overrides
(`.hydra/overrides.yaml`), taking only keys on `saved_override_allowed`'s allow-list (leafnet's own
knobs: no paths, no `hydra.*`, no logger or checkpoint settings, no interpolations), allows only
the changes in `RESUME_CHANGEABLE` on the command line, and checks that every class the result
would build is one that leafnet's own `conf/` names. The saved file is read size-capped and
without YAML aliases.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from leafnet.config import CONFIG_DIR, compose, to_primitive
from leafnet.errors import LeafnetError
from leafnet.runs import load_run_yaml

log = logging.getLogger(__name__)

# What `resume=` may change: how long and where it runs, never what it computes.
RESUME_CHANGEABLE = (
    "epochs", "trainer.", "micro_batch_size", "max_memory_gb", "data.num_workers", "data.cache_dir",
)  # fmt: skip

# What a saved override may set: the knobs of a run, never a path or a hook. A run directory may
# come from someone else, and a path there (a checkpoint folder, a logger's name, a cache) would
# make this process write or delete files outside the run directory.
_SAVED_TOP = {
    "lr", "batch_size", "micro_batch_size", "max_memory_gb", "epochs", "seed", "weight_decay",
    "precision", "tune.lr_find", "tune.num_training", "class_weight", "backbone_lr_scale",
}  # fmt: skip
_SAVED_GROUPS = {
    "data", "model", "optimizer", "scheduler", "trainer", "logger", "callbacks", "experiment",
    "hparams_search",
}  # fmt: skip
_SAVED_DATA_PATHS = {"data.cache_dir", "data.split_file"}  # the run's own split.csv is used
_SAVED_TRAINER = {
    "accelerator", "devices", "strategy", "num_nodes", "precision", "max_epochs", "deterministic",
    "limit_train_batches", "limit_val_batches", "limit_test_batches", "gradient_clip_val",
    "gradient_clip_algorithm", "accumulate_grad_batches", "check_val_every_n_epoch",
    "log_every_n_steps", "num_sanity_val_steps", "enable_progress_bar", "benchmark",
}  # fmt: skip
_SAVED_CALLBACK_KNOBS = {
    "monitor", "mode", "patience", "min_delta", "check_every_n_steps", "max_loss_ratio",
    "num_images", "every_n_epochs", "logging_interval", "layer",
}  # fmt: skip
_NAME = re.compile(r"[A-Za-z0-9_\-]+")


def saved_override_allowed(override: str) -> bool:
    """Whether a saved override sets one of leafnet's own knobs (the allow-list above)."""
    if "${" in override or ("=" not in override and not override.startswith("~")):
        return False
    key, _, value = override.partition("=")
    removing = key.startswith("~")
    key = key.lstrip("+~")
    parts = key.split(".")
    if len(parts) == 1 and key in _SAVED_GROUPS:  # a group option: a plain name, or a list of them
        names = [v.strip() for v in value.strip("[]").split(",")] if value else []
        return all(n == "null" or _NAME.fullmatch(n) for n in names)
    if removing:
        return len(parts) == 2 and parts[0] == "callbacks"
    if key in _SAVED_TOP or key == "data.dir":
        return True
    if parts[0] in ("model", "optimizer", "scheduler") and len(parts) == 2:
        return True
    if parts[0] == "data" and len(parts) == 2:
        return key not in _SAVED_DATA_PATHS
    if parts[0] == "trainer" and len(parts) == 2:
        return parts[1] in _SAVED_TRAINER
    if parts[0] == "callbacks" and len(parts) == 3:
        return parts[2] in _SAVED_CALLBACK_KNOBS
    return False


def trusted_targets() -> set[str]:
    """Every class leafnet's own config groups name (`_target_:` in conf/): all a resumed run may
    build, whatever a run directory's files say."""
    found: set[str] = set()
    for path in CONFIG_DIR.rglob("*.yaml"):
        found.update(re.findall(r"^\s*_target_:\s*([\w.]+)", path.read_text(), re.MULTILINE))
    return found


def _targets(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield str(value)
            yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


def resume_config(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, Path, list[str]]:
    """The resumed run's config, composed again from leafnet's config groups with the run's saved
    overrides, plus the few changes `resume=` allows; and the run directory and its overrides.

    A run directory may come from someone else: its `.hydra/config.yaml` is never instantiated,
    and an override that would name a class to build (`_target_`) is refused.
    """
    run_dir = Path(str(cfg.resume))
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise LeafnetError(
            f"resume={run_dir}: no .hydra/overrides.yaml there; give a run directory"
        )
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise LeafnetError(f"resume={run_dir}: no checkpoints/last.ckpt to continue from")
    try:
        original = load_run_yaml(saved)
    except LeafnetError as err:
        raise LeafnetError(f"resume={run_dir}: {err}") from None
    if not isinstance(original, list) or not all(isinstance(o, str) for o in original):
        raise LeafnetError(f"resume={run_dir}: {saved} is not a list of key=value overrides")
    kept = [
        o for o in original if not o.split("=", 1)[0].lstrip("+~").startswith(("hydra.", "resume"))
    ]
    for override in kept:
        if any(word in override for word in ("_target_", "_partial_", "_args_", "_recursive_")):
            raise LeafnetError(
                f"resume={run_dir}: its saved override {override!r} names code to run; leafnet "
                "resumes only from its own config groups (start a new run instead)"
            )
    ignored = [o for o in kept if not saved_override_allowed(o)]
    if ignored:
        log.warning(
            "resume: ignoring %d saved override(s) that are not leafnet's own knobs (paths, "
            "logger or checkpoint settings): %s",
            len(ignored),
            " ".join(ignored),
        )
    kept = [o for o in kept if o not in ignored]
    changes = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "resume" or key.startswith("hydra."):
            continue
        if not key.startswith(RESUME_CHANGEABLE):
            raise LeafnetError(
                f"resume: {override!r} would change what the run computes; only epochs, trainer.*, "
                "micro_batch_size, max_memory_gb, data.num_workers and data.cache_dir may change "
                "(start a new run)"
            )
        changes.append(override)
    resumed = compose("train", [*kept, *changes])
    before = compose("train", kept).scheduler
    if before.get("name") == "cosine" and before.get("T_max") != resumed.scheduler.get("T_max"):
        raise LeafnetError(
            f"resume={run_dir}: scheduler=cosine decays over the run's {before.get('T_max')} "
            "epochs, so its first epochs already followed that schedule and a longer run would "
            "not be the straight run; resume with the same epochs, or start a new run with the "
            "new epochs"
        )
    with open_dict(resumed):
        resumed.resume = str(run_dir)
        # The run's own split, whatever its saved config said (a sweep's split file lives in a
        # sweep directory that resolves differently now); files that appeared since are reported
        # and left out, files that vanished stop the run.
        if (run_dir / "split.csv").is_file():
            resumed.data.split_file = str(run_dir / "split.csv")
    unknown = sorted(set(_targets(to_primitive(resumed))) - trusted_targets())
    if unknown:
        raise LeafnetError(
            f"resume={run_dir}: its config would build {unknown[0]}, which is not one of "
            "leafnet's config groups; start a new run instead"
        )
    return resumed, run_dir, kept
