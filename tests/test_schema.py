"""Every training key's type and range is checked in one place, before any data is read: a wrong
value is one LeafnetError naming the key, the value and what it takes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from leafnet.config import compose, to_primitive
from leafnet.errors import LeafnetError
from leafnet.schema import COMMAND_KEYS, check_train_config

REPO = Path(__file__).resolve().parents[1]


def checked(*overrides: str) -> None:
    check_train_config(to_primitive(compose("train", list(overrides))))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("lr=true", "lr"),  # a bool is not a number (it would train at lr=1.0)
        ("lr=abc", "lr"),
        ("lr=-1", "lr"),
        ("batch_size=8.5", "batch_size"),
        ("batch_size=0", "batch_size"),
        ("micro_batch_size=some", "micro_batch_size"),
        ("max_memory_gb=abc", "max_memory_gb"),
        ("epochs=0", "epochs"),
        ("seed=1.5", "seed"),
        ("weight_decay=abc", "weight_decay"),
        ("tune.lr_find=yes", "tune.lr_find"),
        ("data.synthetic=no", "data.synthetic"),  # bool("no") would be True
        ("data.image_size=abc", "data.image_size"),
        ("data.image_size=8.7", "data.image_size"),  # not truncated to 8
        ("data.image_size=100000", "data.image_size"),
        ("data.pad_color=[0,0]", "data.pad_color"),
        ("data.pad_color=[0,0,300]", "data.pad_color"),
        ("data.std=[1,1,0]", "data.std"),
        ("data.val_fraction=abc", "data.val_fraction"),
        ("data.test_fraction=1.5", "data.test_fraction"),
        ("data.kfold=1", "data.kfold"),
        ("data.strict=1", "data.strict"),
        ("data.cache=off", "data.cache"),
        ("data.num_workers=-1", "data.num_workers"),
        ("data.limit_per_class=0", "data.limit_per_class"),
        ("data.augment=heavy", "data.augment"),
        ("data.num_workers=many", "data.num_workers"),
        ("data.synthetic_style=studio", "data.synthetic_style"),
        ("model.dense_units=8.5", "model.dense_units"),
        ("model.dropout=1", "model.dropout"),
        ("model.global_pool=maybe", "model.global_pool"),
        ("model.num_classes=1", "model.num_classes"),
        ("model.dense_units=0", "model.dense_units"),
        ("model.conv1_filters=true", "model.conv1_filters"),
        ("data.image_size=5", "data.image_size"),  # too small for the seed's two poolings
        ("weight_decay=-0.1", "weight_decay"),
    ],
)
def test_a_wrong_value_names_the_key_and_what_it_takes(override: str, key: str) -> None:
    with pytest.raises(LeafnetError) as err:
        checked(override)
    message = str(err.value)
    assert message.startswith(f"{key}=") and "use " in message and "\n" not in message


def test_torchvision_keys_are_checked_with_their_group() -> None:
    with pytest.raises(LeafnetError, match=r"^model\.pretrained='yes'"):
        checked("model=torchvision", "model.pretrained=yes")
    checked("model=torchvision", "model.name=resnet18", "model.pretrained=false")


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["data=folder", "data.dir=/tmp/leaves", "data.kfold=5", "data.fold=4", "data.split_seed=3"],
        ["micro_batch_size=16", "data.num_workers=2", "lr=1", "weight_decay=0"],
        ["model=leafnet_gap", "model.dropout=0.5", "data.limit_per_class=3"],
        ["experiment=lr_study"],
    ],
)
def test_valid_configs_pass(overrides: list[str]) -> None:
    cfg = compose("train", overrides)
    if "experiment=lr_study" in overrides:
        cfg.data.split_file = "split.csv"  # the sweep directory only exists inside a sweep
    check_train_config(to_primitive(cfg))


def _yaml_keys(node: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in node.items():
        keys |= _yaml_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return keys


@pytest.mark.parametrize("command", sorted(COMMAND_KEYS))
def test_each_commands_keys_are_its_configs_keys(command: str) -> None:
    """A command's rules live in one table: every key of conf/<command>.yaml has its rule there,
    and the table names no key the command does not read."""
    conf = yaml.safe_load((REPO / "conf" / f"{command}.yaml").read_text())
    assert {k.path for k in COMMAND_KEYS[command]} == _yaml_keys(conf)


def test_a_key_means_the_same_in_every_command() -> None:
    """The vocabulary: a key's rule is the same wherever it appears (out= is a file or a folder
    as the command writes one or several files)."""
    rules: dict[str, set[str]] = {}
    for keys in COMMAND_KEYS.values():
        for key in keys:
            rules.setdefault(key.path, set()).add(key.expect)
    assert {k: v for k, v in rules.items() if len(v) > 1 and k != "out"} == {}
