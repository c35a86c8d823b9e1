"""Resuming a run: its config composed again from leafnet's own config groups.

A run directory may come from someone else. `resume_config` never instantiates what the run's
`.hydra/config.yaml` names: it composes `conf/train.yaml` again with the run's saved overrides
(`.hydra/overrides.yaml`), refuses an override that names code (`_target_` and friends), allows
only the changes in `RESUME_CHANGEABLE`, and checks that every class the result would build is
one that leafnet's own `conf/` names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from leafnet.config import CONFIG_DIR, compose, to_primitive
from leafnet.errors import LeafnetError

# What `resume=` may change: how long and where it runs, never what it computes.
RESUME_CHANGEABLE = ("epochs", "trainer.", "micro_batch_size", "max_memory_gb", "data.num_workers")


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
        original = OmegaConf.to_container(OmegaConf.load(saved))
    except Exception as err:  # a hand-edited or foreign file: any YAML error
        raise LeafnetError(f"resume={run_dir}: {saved} is not readable YAML ({err})") from None
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
    changes = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "resume" or key.startswith("hydra."):
            continue
        if not key.startswith(RESUME_CHANGEABLE):
            raise LeafnetError(
                f"resume: {override!r} would change what the run computes; only epochs, trainer.*, "
                "micro_batch_size, max_memory_gb and data.num_workers may change (start a new run)"
            )
        changes.append(override)
    resumed = compose("train", [*kept, *changes])
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
