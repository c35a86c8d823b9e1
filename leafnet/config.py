"""Composing leafnet's Hydra configs outside `@hydra.main`: command-line tools and tests.

Training runs through `@hydra.main` (it owns run directories and sweeps). Commands that only read
a config (summary, predict, evaluate, export, explain, compare) compose it with Hydra's Compose
API, so they create no run directory.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from leafnet.errors import LeafnetError
from leafnet.rank import is_rank0

# The top-level conf/ in a source checkout (and an editable install); leafnet/conf/ in a wheel.
_PACKAGE = Path(__file__).resolve().parent
CONFIG_DIR = _PACKAGE / "conf" if (_PACKAGE / "conf").is_dir() else _PACKAGE.parent / "conf"


def _resuming(resume: object) -> bool:
    return resume not in (None, "", "null")


def _run_dir(resume: object, new_dir: str) -> str:
    """`hydra.run.dir`: the resumed run's directory, or a new one."""
    return str(resume) if _resuming(resume) else new_dir


def _config_subdir(resume: object, output_dir: str) -> str | None:
    """`hydra.output_subdir`, where Hydra saves this invocation's config. A resumed run keeps its
    own `.hydra/` (this one goes to `.hydra/resume/`); in a directory that already holds a run,
    which `train` then refuses, Hydra saves nothing rather than replace that run's config; nor
    does any process of a multi-process run but the first (they share its directory)."""
    if not is_rank0():
        return None
    if _resuming(resume):
        return ".hydra/resume"
    out = Path(output_dir)
    if (out / "summary.json").exists() or (out / "checkpoints").exists():
        return None
    return ".hydra"


# Used by conf/hydra/default.yaml.
OmegaConf.register_new_resolver("leafnet.run_dir", _run_dir, replace=True)
OmegaConf.register_new_resolver("leafnet.config_subdir", _config_subdir, replace=True)


def compose(
    config_name: str = "train", overrides: Sequence[str] = (), return_hydra_config: bool = False
) -> DictConfig:
    """Compose `conf/<config_name>.yaml` with command-line style `overrides`.

    A bad override (unknown group option, malformed key=value) becomes a `LeafnetError`.
    """
    try:
        kwargs = {"overrides": list(overrides), "return_hydra_config": return_hydra_config}
        if GlobalHydra.instance().is_initialized():  # inside `@hydra.main`: its search path
            return hydra_compose(config_name=config_name, **kwargs)
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, **kwargs)
    except (HydraException, OmegaConfBaseException) as err:
        raise LeafnetError(f"config: {' '.join(str(err).split())}") from None


def to_primitive(value: Any) -> Any:
    """Plain dicts, lists and scalars (what checkpoints and hparams may hold): config nodes are
    resolved, other mappings and tuples converted all the way down."""
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): to_primitive(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [to_primitive(v) for v in value]
    return value


def command_config(
    name: str, argv: Sequence[str], required: Sequence[str] = (), conf: str | None = None
) -> DictConfig:
    """`conf/<conf or name>.yaml` with `argv` overrides for `python -m leafnet.<name>`; each key of
    `required` must be set. `--help` prints the command's keys (its YAML, with what each one does)
    and exits."""
    conf = conf or name
    if any(a in ("-h", "--help") for a in argv):
        print(command_help(name.rsplit(".", 1)[-1], conf))
        sys.exit(0)
    cfg = compose(conf, argv)
    for key in required:
        if OmegaConf.select(cfg, key, default=None) in (None, "", "???"):
            raise LeafnetError(
                f"{key}= is required: leafnet {name.removeprefix('lab.')} {key}=... "
                f"(leafnet {name.removeprefix('lab.')} --help lists the keys)"
            )
    from leafnet.schema import check_command_config

    check_command_config(conf, to_primitive(cfg))
    return cfg


def training_args(argv: Sequence[str] | None, name: str, what: str) -> list[str] | None:
    """The arguments of a command that takes training's keys (demo, summary): None after
    printing its `--help` when they ask for it."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(command_help(name, "train", what))
        return None
    return args


# Commands that take training's keys (conf/train.yaml) rather than a YAML of their own.
_TRAIN_KEYS_COMMANDS = ("train", "summary", "demo")


def command_help(name: str, conf: str, what: str = "") -> str:
    """`leafnet <name> --help`: the usage and each key with its comment, from the YAML the command
    reads (`conf/<conf>.yaml`; training's commands: train.yaml, the data keys and the groups)."""
    conf = "train" if name in _TRAIN_KEYS_COMMANDS else conf
    lines = [f"usage: leafnet {name} [key=value ...]" + (f"   ({what})" if what else "")]
    path = CONFIG_DIR / f"{conf}.yaml"
    if path.is_file():
        lines += ["", f"keys and defaults ({path.name}):", "", path.read_text().rstrip()]
    if conf == "train":
        data = CONFIG_DIR / "data" / "folder.yaml"
        lines += ["", "data.* keys (data=folder; data=synthetic adds the generator's):", ""]
        lines += [data.read_text().rstrip()]
        groups = sorted(
            d for d in CONFIG_DIR.iterdir() if d.is_dir() and not d.name.startswith("_")
        )
        lines += ["", "config groups (group=option):"]
        for group in groups:
            options = sorted(f.stem for f in group.glob("*.yaml"))
            lines.append(f"  {group.name:<15} {', '.join(options)}")
        lines += ["", "e.g. leafnet train optimizer=sgd lr=0.01 data=folder data.dir=leaves"]
    return "\n".join(lines)
