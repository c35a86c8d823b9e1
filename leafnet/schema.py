"""The training config's types and ranges, checked in one place before anything runs.

Hydra hands command-line values over as typed as they were written (`data.image_size=abc` is a
string, `lr=true` a bool, `data.image_size=8.7` a float), and code deep inside would either
crash with a traceback or quietly coerce them (`bool("no")` is True). `check_train_config(cfg)`
walks the table below and raises one `LeafnetError` naming the key, the value and what it takes.
Booleans accept only true or false; integers no floats; numbers no booleans.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from leafnet.errors import LeafnetError


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_path(v: Any) -> bool:
    # `data.dir=2024` reaches us as the integer 2024: a folder may have such a name.
    return isinstance(v, str | int | float) and not isinstance(v, bool)


def _three(low: float, high: float, ints: bool) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        ok = _is_int if ints else _is_number
        return (
            isinstance(v, list | tuple)
            and len(v) == 3
            and all(ok(x) and low <= x <= high for x in v)
        )

    return check


@dataclass(frozen=True)
class Key:
    """One config key: `check(value)` is True for a valid value; `expect` says what is valid."""

    path: str
    check: Callable[[Any], bool]
    expect: str
    nullable: bool = False


def one_of(*choices: str) -> Callable[[Any], bool]:
    return lambda v: v in choices


def positive_int(v: Any) -> bool:
    return _is_int(v) and v >= 1


def fraction(v: Any) -> bool:
    return _is_number(v) and 0 <= v < 1


TRAIN_KEYS: tuple[Key, ...] = (
    Key("lr", lambda v: _is_number(v) and v > 0, "a positive number, e.g. lr=1e-4"),
    Key("batch_size", positive_int, "a positive integer, e.g. batch_size=32"),
    Key("micro_batch_size", lambda v: v == "auto" or positive_int(v), "auto or a positive integer"),
    Key("max_memory_gb", lambda v: _is_number(v) and v > 0, "a positive number of GB"),
    Key("epochs", positive_int, "a positive integer"),
    Key("seed", _is_int, "an integer"),
    Key("weight_decay", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    Key(
        "class_weight",
        lambda v: (
            v == "balanced"
            or (isinstance(v, Mapping) and all(_is_number(w) and w >= 0 for w in v.values()))
        ),
        "null, balanced, or {class name: weight >= 0, ...}",
        nullable=True,
    ),
    Key(
        "backbone_lr_scale",
        lambda v: _is_number(v) and 0 < v <= 1,
        "a number in (0, 1]: the pretrained layers' lr as a fraction of lr",
    ),
    Key("resume", _is_str, "a run directory", nullable=True),
    Key("tune.lr_find", _is_bool, "true or false"),
    Key("tune.num_training", positive_int, "a positive integer"),
    Key("data.dir", _is_path, "a folder with one sub-folder per class"),
    Key("data.synthetic", _is_bool, "true or false"),
    Key("data.synthetic_seed", _is_int, "an integer"),
    Key(
        "data.synthetic_size",
        lambda v: _is_int(v) and 32 <= v <= 4096,
        "an integer from 32 to 4096",
    ),
    Key(
        "data.synthetic_per_class",
        lambda v: positive_int(v) and v <= 10000,
        "an integer from 1 to 10000",
    ),
    Key("data.image_size", lambda v: _is_int(v) and 6 <= v <= 8192, "an integer from 6 to 8192"),
    Key("data.pad_color", _three(0, 255, ints=True), "three integers 0-255, e.g. [0,0,0]"),
    Key("data.mean", _three(-1e3, 1e3, ints=False), "three numbers"),
    Key("data.std", _three(1e-6, 1e3, ints=False), "three positive numbers"),
    Key("data.val_fraction", fraction, "a number in [0, 1)"),
    Key("data.test_fraction", fraction, "a number in [0, 1)"),
    Key("data.split_file", _is_str, "a split.csv path", nullable=True),
    Key("data.split_seed", _is_int, "an integer", nullable=True),
    Key("data.kfold", lambda v: _is_int(v) and v >= 2, "an integer >= 2", nullable=True),
    Key("data.fold", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Key("data.strict", _is_bool, "true or false"),
    Key("data.min_size", positive_int, "a positive integer (pixels)"),
    Key("data.max_pixels", positive_int, "a positive integer"),
    Key("data.cache", _is_bool, "true or false"),
    Key("data.cache_dir", _is_str, "a folder", nullable=True),
    Key(
        "data.num_workers",
        lambda v: v == "auto" or (_is_int(v) and v >= 0),
        "auto or an integer >= 0",
    ),
    Key("data.limit_per_class", positive_int, "a positive integer", nullable=True),
    Key("data.augment", one_of("none", "basic"), "none or basic"),
    Key("data.sampler", one_of("shuffle", "balanced"), "shuffle or balanced"),
    Key("data.synthetic_style", one_of("lab", "field"), "lab or field"),
    Key(
        "model.num_classes",
        lambda v: _is_int(v) and 2 <= v <= 100_000,
        "an integer from 2 to 100000",
        nullable=True,
    ),
    Key(
        "model.conv1_filters", lambda v: positive_int(v) and v <= 4096, "an integer from 1 to 4096"
    ),
    Key(
        "model.conv2_filters", lambda v: positive_int(v) and v <= 4096, "an integer from 1 to 4096"
    ),
    Key(
        "model.dense_units", lambda v: positive_int(v) and v <= 65536, "an integer from 1 to 65536"
    ),
    Key("model.dropout", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    Key("model.global_pool", _is_bool, "true or false"),
    Key("model.conv1_in_bands", _is_bool, "true or false"),
    # conf/optimizer/*.yaml and conf/scheduler/*.yaml: each file has some of these keys.
    Key(
        "optimizer.betas",
        lambda v: isinstance(v, list | tuple) and len(v) == 2 and all(fraction(b) for b in v),
        "two numbers in [0, 1), e.g. [0.9,0.999]",
    ),
    Key("optimizer.eps", lambda v: _is_number(v) and v > 0, "a positive number, e.g. 1e-7"),
    Key("optimizer.amsgrad", _is_bool, "true or false"),
    Key("optimizer.momentum", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    Key("optimizer.nesterov", _is_bool, "true or false"),
    Key("optimizer.dampening", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    Key("optimizer.alpha", fraction, "a number in [0, 1), e.g. 0.9"),
    Key("optimizer.centered", _is_bool, "true or false"),
    Key("optimizer.initial_accumulator_value", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    Key("optimizer.lr_decay", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    Key("scheduler.T_max", positive_int, "a positive integer (epochs)"),
    Key("scheduler.eta_min", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    Key("scheduler.step_size", positive_int, "a positive integer (epochs)"),
    Key("scheduler.gamma", lambda v: _is_number(v) and v > 0, "a positive number, e.g. 0.5"),
    Key("scheduler.mode", one_of("min", "max"), "min or max"),
    Key("scheduler.factor", lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    Key("scheduler.patience", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Key("scheduler.min_lr", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    Key(
        "callbacks.divergence.max_loss_ratio",
        lambda v: _is_number(v) and v > 1,
        "a number > 1, or null (off)",
        nullable=True,
    ),
    Key("callbacks.divergence.check_every_n_steps", positive_int, "a positive integer"),
    Key("data.duplicates", one_of("near", "exact", "off"), "near, exact or off"),
    Key("data.group_pattern", _is_str, "a regular expression on file names", nullable=True),
    Key("model.name", _is_str, "a torchvision model name, e.g. resnet18"),
    Key("model.pretrained", _is_bool, "true or false"),
)

_MISSING = object()


def _select(cfg: Mapping[str, Any], path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def check_config(cfg: Mapping[str, Any], keys: tuple[Key, ...]) -> None:
    """Raise one LeafnetError for the first key whose value is of the wrong type or range.

    `cfg` is a resolved plain dict (`config.to_primitive`); keys it does not have are skipped
    (each config group has its own: `model.name` only with `model=torchvision`).
    """
    for key in keys:
        value = _select(cfg, key.path)
        if value is _MISSING or (value is None and key.nullable):
            continue
        if not key.check(value):
            shown = "null" if value is None else repr(value)
            raise LeafnetError(f"{key.path}={shown} is not valid: use {key.expect}")


# The commands' keys (conf/<command>.yaml), one table per command. A key several commands take
# means the same thing in each, and is written once here: the command vocabulary.
CKPT = Key("ckpt", _is_path, "a .ckpt file or a run directory")
INPUT = Key("input", _is_path, "an image, a folder or a quoted glob")
RUNS = Key("runs", lambda v: _is_path(v) or isinstance(v, list), "a run folder or a list of them")
OUT_FILE = Key("out", _is_path, "a file name", nullable=True)
OUT_DIR = Key("out", _is_path, "a folder", nullable=True)
OVERWRITE = Key("overwrite", _is_bool, "true or false")
BATCH_SIZE = Key("batch_size", positive_int, "a positive integer")
WORKERS = Key("workers", lambda v: _is_int(v) and v >= 0, "an integer >= 0")
DEVICE = Key("device", _is_str, "auto, cpu, cuda, cuda:N or mps")
PROGRESS = Key(
    "progress", _is_bool, "true or false (null: when there are many files)", nullable=True
)
IMAGE_SIZE = Key("image_size", lambda v: _is_int(v) and 6 <= v <= 8192, "an integer from 6 to 8192")
TIMEOUT = Key("timeout", lambda v: _is_number(v) and v > 0, "a positive number of seconds")

COMMAND_KEYS: dict[str, tuple[Key, ...]] = {
    "predict": (
        CKPT, INPUT, OUT_FILE, BATCH_SIZE, WORKERS, DEVICE, PROGRESS, OVERWRITE,
        Key("resume", _is_bool, "true or false"),
    ),
    "evaluate": (
        CKPT, Key("data.dir", _is_path, "a folder with one sub-folder per class", nullable=True),
        OUT_DIR, BATCH_SIZE, WORKERS, DEVICE, PROGRESS, OVERWRITE,
    ),
    "export": (
        CKPT, Key("format", one_of("onnx", "torchscript", "keras"), "onnx, torchscript or keras"),
        OUT_FILE, OVERWRITE,
    ),
    "explain": (CKPT, INPUT, OUT_DIR, DEVICE, OVERWRITE),
    "app": (
        CKPT, DEVICE,
        Key("host", _is_str, "an address to listen on, e.g. 127.0.0.1"),
        Key("port", lambda v: _is_int(v) and 1 <= v <= 65535, "a port number from 1 to 65535"),
        Key("max_upload_mb", lambda v: _is_number(v) and v > 0, "a positive number of MB"),
    ),
    "compare": (RUNS, OUT_DIR, OVERWRITE, Key("all_runs", _is_bool, "true or false")),
    "calibration": (RUNS, OUT_FILE),
    "cache": (Key("dir", _is_path, "a folder"), Key("clear", _is_bool, "true or false")),
    "synthetic": (
        Key("style", one_of("lab", "field"), "lab or field"), OUT_DIR,
        Key("seed", _is_int, "an integer"), Key("n_per_class", positive_int, "a positive integer"),
        Key("size", lambda v: _is_int(v) and 32 <= v <= 4096, "an integer from 32 to 4096"),
        Key("preview", _is_path, "a PNG file name", nullable=True), OVERWRITE,
    ),
    "scale": (
        Key("counts", lambda v: isinstance(v, list) and all(positive_int(x) for x in v),
            "a list of positive integers"),
        IMAGE_SIZE,
        Key("photo_size",
            lambda v: isinstance(v, list) and len(v) == 2 and all(positive_int(x) for x in v),
            "[width, height]"),
        Key("model", _is_str, "a model config name, e.g. leafnet_gap"),
        BATCH_SIZE, Key("batches", positive_int, "a positive integer"),
        Key("starts", lambda v: isinstance(v, list) and all(x in ("cold", "warm") for x in v),
            "a list of cold and warm"),
        TIMEOUT, OUT_DIR,
    ),
    "bench": (
        IMAGE_SIZE, BATCH_SIZE,
        Key("micro_batch_size", positive_int, "a positive integer (null: automatic)", nullable=True),
        Key("steps", positive_int, "a positive integer"),
        Key("warmup", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        Key("rounds", positive_int, "a positive integer"),
        Key("lockstep", _is_bool, "true or false"),
        Key("command_epochs", lambda v: _is_int(v) and v >= 3,
            "an integer of at least 3 (the first epoch is the warm-up; each epoch after it is "
            "timed from its start to the next one's)"),
        Key("contenders", lambda v: _is_str(v) or isinstance(v, list),
            "a list, e.g. [command,leafnet,keras-tf-fit]"),
        Key("accelerator", one_of("cpu", "gpu"), "cpu or gpu"),
        Key("precision", one_of("32-true", "16-mixed", "bf16-mixed"),
            "32-true, 16-mixed or bf16-mixed"),
        Key("threads", positive_int, "a positive integer (null: physical cores)", nullable=True),
        Key("data_dir", _is_path, "a folder of images", nullable=True),
        Key("data_pipeline", _is_bool, "true or false"),
        Key("predict_images", positive_int, "a positive integer"),
        Key("predict_batch", positive_int, "a positive integer"),
        Key("profile", _is_bool, "true or false"),
        TIMEOUT, OUT_DIR,
    ),
}  # fmt: skip


def check_command_config(command: str, cfg: Mapping[str, Any]) -> None:
    """Check a command's resolved config (`conf/<command>.yaml`) against its table."""
    check_config(cfg, COMMAND_KEYS[command])


def check_train_config(cfg: Mapping[str, Any]) -> None:
    """Check a resolved training config (`conf/train.yaml` with its groups) against TRAIN_KEYS."""
    check_config(cfg, TRAIN_KEYS)


# A checkpoint's network is built before its weights are read: its size is checked first, so a
# crafted file cannot make leafnet allocate terabytes.
MAX_PARAMETERS = 2_000_000_000


def check_checkpoint_model(model: Mapping[str, Any], where: str) -> None:
    """A checkpoint's `hyper_parameters.model` within the ranges training accepts, and a LeafNet
    of at most MAX_PARAMETERS parameters."""
    if not isinstance(model, Mapping):
        raise LeafnetError(
            f"{where}: hyper_parameters.model is not a mapping; not a leafnet checkpoint"
        )
    try:
        check_config(
            {"model": model, "data": {"image_size": model.get("image_size", 640)}}, TRAIN_KEYS
        )
    except LeafnetError as err:
        raise LeafnetError(f"{where}: {err}") from None
    if model.get("arch", "leafnet") == "leafnet":
        side = int(model.get("image_size", 640)) // 3 // 2
        features = model.get("conv2_filters", 16) * (1 if model.get("global_pool") else side * side)
        dense = features * model.get("dense_units", 8)
        if dense > MAX_PARAMETERS:
            raise LeafnetError(
                f"{where}: its network would have {dense:,} parameters in one layer; not a model "
                "leafnet trains"
            )


MAX_CLASSES = 1000  # a checkpoint's class list; the test metrics allocate classes x classes


def check_checkpoint_hparams(hparams: Mapping[str, Any], where: str) -> None:
    """What a checkpoint's `hyper_parameters` may hold before anything is built from them: the
    model (`check_checkpoint_model`), at most MAX_CLASSES distinct class names, the image size
    its preprocessing and its model agree on, an integer micro-batch."""
    model = hparams.get("model", {})
    check_checkpoint_model(model, where)
    names = hparams.get("class_names")
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise LeafnetError(f"{where}: hyper_parameters.class_names is not a list of names")
    if not 2 <= len(names) <= MAX_CLASSES:
        raise LeafnetError(
            f"{where}: {len(names)} classes; leafnet checkpoints have 2 to {MAX_CLASSES}"
        )
    if len(set(names)) != len(names):
        raise LeafnetError(f"{where}: its class names repeat; each class needs its own name")
    prep = hparams.get("preprocessing") or {}
    if not isinstance(prep, Mapping):
        raise LeafnetError(f"{where}: hyper_parameters.preprocessing is not a mapping")
    if "image_size" in prep and "image_size" in model and prep["image_size"] != model["image_size"]:
        raise LeafnetError(
            f"{where}: its preprocessing makes {prep['image_size']} px images but its model takes "
            f"{model['image_size']} px; not a checkpoint leafnet wrote"
        )
    micro = hparams.get("micro_batch_size")
    if micro is not None and not positive_int(micro):
        raise LeafnetError(f"{where}: micro_batch_size={micro!r} is not a positive integer")
