"""Reading a finished run: its checkpoint, config, summary and per-epoch metrics.

There is one way to load a checkpoint (`load_classifier`), always through
`torch.load(weights_only=True)`: a file whose pickle would build arbitrary Python objects (and so
could run code) is refused with a `LeafnetError`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning
import torch
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from leafnet.errors import LeafnetError
from leafnet.files import atomic_path
from leafnet.module import LeafClassifier
from leafnet.schema import check_checkpoint_hparams


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A `.ckpt` file as given, or a run directory's `checkpoints/best.ckpt`."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise LeafnetError(
            f"{path} holds no checkpoints/best.ckpt or last.ckpt; is it a run directory?"
        )
    raise LeafnetError(f"checkpoint {path} not found; give a .ckpt file or a run directory")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint dict, loaded with `weights_only=True` (tensors and plain containers only)."""
    path = find_checkpoint(path)
    try:
        with warnings.catch_warnings():
            # An old-protocol pickle makes torch warn on stderr; the error below says enough.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():
            # Not a pickle of objects at all (an image, random bytes): say so, not "unsafe".
            raise LeafnetError(f"{path} is not a checkpoint (not a torch.save file)") from None
        raise LeafnetError(
            f"{path} is refused: it holds Python objects that could run code when loaded "
            "(only tensors and plain values are allowed); use a checkpoint written by leafnet"
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as err:
        # A text file makes the unpickler raise KeyError; a zip of other files RuntimeError.
        raise LeafnetError(
            f"{path} is not a readable checkpoint: {' '.join(str(err).split()) or type(err).__name__}"
        ) from None


def load_classifier(path: str | os.PathLike, map_location: Any = "cpu") -> LeafClassifier:
    """A `LeafClassifier` in eval mode from a checkpoint or run directory."""
    ckpt = load_checkpoint(path, map_location)
    if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise LeafnetError(
            f"{find_checkpoint(path)} is not a leafnet checkpoint (no hyper_parameters)"
        )
    hparams = ckpt["hyper_parameters"]
    if not isinstance(hparams, dict):
        raise LeafnetError(f"{find_checkpoint(path)} is not a leafnet checkpoint")
    check_checkpoint_hparams(hparams, str(find_checkpoint(path)))
    try:
        classifier = LeafClassifier(**hparams)
        classifier.load_state_dict(ckpt["state_dict"])
    except (TypeError, KeyError, RuntimeError) as err:
        # Hyper-parameters or weights of another model: one line, not a traceback.
        raise LeafnetError(
            f"{find_checkpoint(path)} does not match leafnet's model: {' '.join(str(err).split())[:300]}"
        ) from None
    return classifier.to(
        map_location if isinstance(map_location, str | torch.device) else "cpu"
    ).eval()


def save_classifier(classifier: LeafClassifier, path: str | os.PathLike) -> Path:
    """Write a Lightning-compatible checkpoint of a bare module (no trainer), atomically.

    It loads with `load_classifier` and with `LeafClassifier.load_from_checkpoint`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": classifier.state_dict(),
        LeafClassifier.CHECKPOINT_HYPER_PARAMS_KEY: dict(classifier.hparams),
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return path


@dataclass
class Run:
    """What a run directory holds so far: resolved config, saved overrides, summary.json,
    metrics.csv rows (one per epoch)."""

    path: Path
    config: DictConfig | None
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, float]] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)


def _to_float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan  # type: ignore[arg-type]
    except ValueError:
        return math.nan


def read_metrics(path: Path) -> list[dict[str, float]]:
    """metrics.csv's rows as floats (nan where empty), one per epoch in order: the last row wins
    for a repeated epoch (as after a resume), a partly written last line is dropped."""
    if not path.is_file():
        return []
    rows: dict[float, dict[str, float]] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if None in row or None in row.values():  # a line cut short while being written
                continue
            epoch = _to_float(row.get("epoch"))
            if math.isfinite(epoch):
                rows[epoch] = {k: _to_float(v) for k, v in row.items()}
    return [rows[e] for e in sorted(rows)]


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        # Infinity and NaN (not JSON, but Python's json reads them) become null: a hand-edited or
        # foreign summary must not turn into an OverflowError far from here.
        data = json.loads(path.read_text(), parse_constant=lambda _: None) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):  # being written by a run that has not finished
        return {}
    return data if isinstance(data, dict) else {}


# A run's YAML files are a few KB; a folder from someone else may hold anything.
MAX_RUN_YAML_BYTES = 1 << 20


def load_run_yaml(path: Path) -> Any:
    """A YAML file of a run directory as plain Python, read size-capped and with anchors and
    aliases refused (nested aliases expand exponentially; leafnet never writes them)."""
    try:
        if path.stat().st_size > MAX_RUN_YAML_BYTES:
            raise LeafnetError(f"{path} is over {MAX_RUN_YAML_BYTES >> 20} MB; not a run's file")
        text = path.read_text(encoding="utf-8")
        events = list(yaml.parse(text, Loader=yaml.SafeLoader))
        if any(isinstance(e, yaml.AliasEvent) or getattr(e, "anchor", None) for e in events):
            raise LeafnetError(f"{path} uses YAML anchors or aliases, which leafnet never writes")
        return yaml.safe_load(text)
    except (OSError, UnicodeError, yaml.YAMLError) as err:
        reason = " ".join(str(err).split())
        raise LeafnetError(f"{path} is not readable YAML ({reason})") from None


def _read_yaml(path: Path) -> Any:
    try:
        return OmegaConf.create(load_run_yaml(path)) if path.is_file() else None
    except (LeafnetError, OmegaConfBaseException):
        return None


def read_run(run_dir: str | os.PathLike) -> Run:
    """Read a run directory, finished or still running: what is missing or half-written reads
    as empty (no config, no summary, fewer metrics rows)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LeafnetError(f"run directory {run_dir} not found")
    config = _read_yaml(run_dir / ".hydra" / "config.yaml")
    overrides = _read_yaml(run_dir / ".hydra" / "overrides.yaml")
    return Run(
        run_dir,
        config if isinstance(config, DictConfig) else None,
        _read_summary(run_dir / "summary.json"),
        read_metrics(run_dir / "metrics.csv"),
        [str(o) for o in overrides] if isinstance(overrides, ListConfig) else [],
    )


# How deep find_run_dirs looks: outputs/ -> multiruns/ -> <date_time>/ -> <num>_<overrides>/.
_SCAN_DEPTH = 4


def _natural_key(path: Path) -> list[Any]:
    """Sort `10_lr=...` after `9_lr=...`."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name)]


def is_run_dir(path: Path) -> bool:
    """A run directory has metrics, a summary, or the config Hydra writes when a job starts."""
    return any((path / name).is_file() for name in ("metrics.csv", "summary.json")) or (
        (path / ".hydra" / "config.yaml").is_file()
    )


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories in `paths` (each a run, a multirun directory, or a folder of either)."""
    found: list[Path] = []

    def scan(path: Path, depth: int) -> None:
        if is_run_dir(path):
            found.append(path)
            return
        if depth >= _SCAN_DEPTH:
            return
        for child in sorted((c for c in path.iterdir() if c.is_dir()), key=_natural_key):
            if not child.name.startswith(".") and child.name != "checkpoints":
                scan(child, depth + 1)

    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise LeafnetError(
                f"{path} is not a directory; pass a multirun directory "
                "(outputs/multiruns/<date_time>) or run directories"
            )
        scan(path, 0)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise LeafnetError(
            f"no runs under {', '.join(str(p) for p in paths)} "
            "(a run directory holds metrics.csv, summary.json or .hydra/config.yaml)"
        )
    return unique


def run_datamodule(run_dir: str | os.PathLike) -> Any:
    """A finished run's data on its own split (`split.csv`), set up, no augmentation: what the
    colour baseline of `calibration` and `evaluate` trains on."""
    from leafnet.config import to_primitive
    from leafnet.data.datamodule import LeafDataModule

    run = read_run(run_dir)
    split = Path(run_dir) / "split.csv"
    if run.config is None or not split.is_file():
        raise LeafnetError(f"{run_dir} has no .hydra/config.yaml and split.csv; is it a run dir?")
    data = {**to_primitive(run.config.data), "split_file": str(split), "kfold": None}
    data.update(synthetic=False, augment="none", num_workers=0)
    dm = LeafDataModule(**data, batch_size=int(run.config.batch_size), seed=int(run.config.seed))
    dm.setup("fit")
    return dm
