"""Bad input at every command: one line on stderr naming the thing and the fix, exit code 2, no
traceback, and no user file changed. Odd but valid input (file names that are not UTF-8, a glob
through a symlink loop) works.

Each case runs the command's `main(argv)` in this process, as `python -m leafnet.<command>` runs
it; the training config's cases run the check `python -m leafnet.train` makes before any data is
read (the CLI's own exit codes are covered in test_train.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fixtures_cli import run_error
from PIL import Image

from leafnet import evaluate, explain, export, import_keras, keras_io, predict
from leafnet.config import command_config, compose
from leafnet.errors import cli_errors
from leafnet.model import LeafNet
from leafnet.train import validate


def snapshot(*folders: Path) -> dict[Path, str]:
    return {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def user(tmp_path: Path, tiny_run: Path, tiny_train_images: Path) -> dict[str, Path]:
    """A user's files: the run, the photos, and outputs of earlier commands that must be kept."""
    home = tmp_path / "user"
    (home / "evaluation").mkdir(parents=True)
    (home / "preds.csv").write_text("earlier predictions\n")
    (home / "model.onnx").write_bytes(b"an earlier export")
    (home / "evaluation" / "metrics.json").write_text("{}\n")
    (home / "explained").mkdir()
    (home / "explained" / "gradcam.png").write_bytes(b"an earlier figure")
    (home / "imported.ckpt").write_bytes(b"an earlier checkpoint")
    (home / "a_file").write_text("")
    (home / "pickle.ckpt").write_bytes(b"\x80\x04cos\nsystem\n.")  # code, if unpickled
    (home / "secret.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes())
    loop = home / "loop" / "deeper"
    loop.mkdir(parents=True)
    (loop / "back").symlink_to(home / "loop", target_is_directory=True)
    model = LeafNet(num_classes=3, image_size=24)
    keras_io.save_keras_weights(model, home / "seed.weights.h5")
    with h5py.File(home / "external.weights.h5", "w") as f:  # weights stored in another file
        f.create_dataset(
            "layers/conv2d/vars/0", shape=(4, 4), dtype="f4",
            external=[(str(home / "secret.bin"), 0, 64)],
        )  # fmt: skip
    with h5py.File(home / "linked.weights.h5", "w") as f:  # a link into another file
        f["layers/conv2d"] = h5py.ExternalLink(str(home / "seed.weights.h5"), "/layers/conv2d")
    with h5py.File(home / "midpath.h5", "w") as f:  # a link in the middle of a weight's path
        f["model_weights/ext"] = h5py.ExternalLink(str(home / "seed.weights.h5"), "/layers")
        f["model_weights"].attrs["layer_names"] = ["ext/conv2d"]
    with h5py.File(home / "declared.weights.h5", "w") as f:  # a few KB declaring 3.6 GB
        for i in range(3):
            f.create_dataset(
                f"layers/dense_{i}/vars/0", shape=(3 * 10**8,), dtype="f4",
                compression="gzip", chunks=(2**20,),
            )  # fmt: skip
    with zipfile.ZipFile(home / "bomb.keras", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.weights.h5", bytes(3 * 2**20))  # 3 MB of zeros, a few KB packed
    return {"home": home, "run": tiny_run, "images": tiny_train_images}


def one_image(images: Path) -> Path:
    return sorted(images.rglob("*.jpg"))[0]


# (command, argv with {home}, {run}, {images}, {image} filled in, what the line must say)
CASES = [
    # predict
    (predict.main, ["input={images}"], "ckpt= is required"),
    (predict.main, ["ckpt={run}", "input={images}", "batch_size=abc"], "batch_size='abc'"),
    (predict.main, ["ckpt={run}", "input={images}", "workers=abc"], "workers='abc'"),
    (predict.main, ["ckpt={run}", "input={images}", "workers=-1"], "workers=-1"),
    (predict.main, ["ckpt={run}", "input={images}", "progress=maybe"], "progress='maybe'"),
    (predict.main, ["ckpt={run}", "input={images}", "out={home}/p.txt"], ".csv or .json"),
    (predict.main, ["ckpt={run}", "input={images}", "out={home}/preds.csv"], "overwrite=true"),
    (predict.main, ["ckpt={run}", "input={images}", "overwrite=yes"], "overwrite='yes'"),
    (predict.main, ["ckpt={run}", "input={home}/nothing"], "not found"),
    (predict.main, ["ckpt={run}", "input={home}/loop/**/*.jpg"], "matches no files"),
    (predict.main, ["ckpt={image}", "input={images}"], "not a checkpoint"),
    (predict.main, ["ckpt={home}/pickle.ckpt", "input={images}"], "checkpoint"),
    (predict.main, ["ckpt={run}", "input={images}", "out={home}/a_file/p.csv"], "cannot write"),
    (predict.main, ["ckpt={run}", "input={images}", "device=cuda:7"], "device=cuda:7"),
    # evaluate
    (evaluate.main, ["ckpt={run}", "data.dir={images}", "batch_size=0"], "batch_size=0"),
    (evaluate.main, ["ckpt={run}", "data.dir={images}", "out={home}/evaluation"], "overwrite"),
    (evaluate.main, ["ckpt={run}", "data.dir={home}/nothing"], "nothing"),
    (evaluate.main, ["ckpt={run}"], "data.dir= is required"),
    (evaluate.main, ["ckpt={run}", "data.dir={images}", "out={home}/a_file/ev"], "cannot write"),
    # export
    (export.main, ["ckpt={run}", "format=tflite"], "format='tflite'"),
    (export.main, ["ckpt={run}", "out={home}/model.onnx"], "overwrite=true"),
    (export.main, ["ckpt={run}", "format=onnx", "out={home}/m.pt"], "must end in .onnx"),
    (export.main, ["ckpt={home}/nothing.ckpt"], "not found"),
    # explain
    (explain.main, ["ckpt={run}", "input={images}"], "explain takes one image"),
    (explain.main, ["ckpt={run}", "input={image}", "out={home}/explained"], "overwrite=true"),
    (explain.main, ["ckpt={run}", "input={image}", "device=tpu"], "device=tpu"),
    (explain.main, ["ckpt={run}", "input={image}", "out={home}/a_file/ex"], "cannot write"),
    # import_keras
    (
        import_keras.main,
        ["input={home}/seed.weights.h5", "out={home}/imported.ckpt"],
        "overwrite=true",
    ),
    (import_keras.main, ["input={home}/nothing.h5", "out={home}/new.ckpt"], "no such file"),
    (import_keras.main, ["input={home}/seed.weights.h5", "out={home}/new.pt"], "must end in .ckpt"),
    (
        import_keras.main,
        ["input={home}/seed.weights.h5", "out={home}/n.ckpt", "overwrite=maybe"],
        "true",
    ),
    (
        import_keras.main,
        ["input={home}/external.weights.h5", "out={home}/n.ckpt"],
        "in another file",
    ),
    (
        import_keras.main,
        ["input={home}/linked.weights.h5", "out={home}/n.ckpt"],
        "link to elsewhere",
    ),
    (
        import_keras.main,
        ["input={home}/midpath.h5", "out={home}/n.ckpt"],
        "ext is a link to elsewhere",
    ),
    (
        import_keras.main,
        ["input={home}/declared.weights.h5", "out={home}/n.ckpt"],
        "declare 3,433 MB",
    ),
    (import_keras.main, ["input={home}/image.jpg", "out={home}/n.ckpt"], "neither HDF5 nor a zip"),
]


@pytest.mark.parametrize(("command", "argv", "says"), CASES)
def test_each_bad_input_gets_one_line_and_changes_nothing(
    user: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    command: Callable,
    argv: list[str],
    says: str,
) -> None:
    home, run, images = user["home"], user["run"], user["images"]
    shutil.copy(one_image(images), home / "image.jpg")
    fill = {"home": home, "run": run, "images": images, "image": one_image(images)}
    before = snapshot(home, images, run)
    err = run_error(capsys, [a.format(**fill) for a in argv], command)
    assert says in err, err
    assert snapshot(home, images, run) == before
    assert not list(home.rglob("*.tmp"))


def test_a_keras_archive_that_unpacks_too_far_is_refused(
    user: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keras_io, "MAX_WEIGHTS_BYTES", 2**20)  # the real cap is 2 GB
    home = user["home"]
    err = run_error(capsys, [f"input={home}/bomb.keras", f"out={home}/n.ckpt"], import_keras.main)
    assert "unpacks to more than" in err and not (home / "n.ckpt").exists()


def test_a_checkpoint_asking_for_a_huge_network_is_refused_before_building_it(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = torch.load(tiny_run / "checkpoints" / "best.ckpt", weights_only=True)
    for change, says in [
        ({"image_size": 10**6}, "image_size"),
        ({"dense_units": 65536, "conv2_filters": 4096, "image_size": 8192}, "parameters"),
    ]:
        crafted = {**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"]}}
        crafted["hyper_parameters"]["model"] = {**ckpt["hyper_parameters"]["model"], **change}
        torch.save(crafted, tmp_path / "crafted.ckpt")
        err = run_error(capsys, [f"ckpt={tmp_path}/crafted.ckpt", "input=x.jpg"], predict.main)
        assert says in err


def test_a_checkpoint_with_crafted_classes_or_sizes_is_refused_before_building_it(
    tiny_run: Path, tiny_train_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = torch.load(tiny_run / "checkpoints" / "best.ckpt", weights_only=True)
    hp = ckpt["hyper_parameters"]
    image = next(tiny_train_images.rglob("*.jpg"))
    for change, says in [
        ({"class_names": [f"c{i}" for i in range(12_000)]}, "12000 classes"),
        ({"class_names": ["a", "a", "b"]}, "class names repeat"),
        ({"preprocessing": {**hp["preprocessing"], "image_size": 64}}, "its model takes 32 px"),
        ({"micro_batch_size": "abc"}, "micro_batch_size='abc'"),
    ]:
        torch.save({**ckpt, "hyper_parameters": {**hp, **change}}, tmp_path / "crafted.ckpt")
        err = run_error(capsys, [f"ckpt={tmp_path}/crafted.ckpt", f"input={image}"], predict.main)
        assert says in err, err


TRAIN_CASES = [
    ("max_memory_gb=abc", "max_memory_gb='abc'"),
    ("weight_decay=abc", "weight_decay='abc'"),
    ("data.image_size=abc", "data.image_size='abc'"),
    ("data.image_size=8.7", "data.image_size=8.7"),
    ("data.val_fraction=abc", "data.val_fraction='abc'"),
    ("lr=true", "lr=True"),
    ("data.synthetic=no", "data.synthetic='no'"),
    ("data.cache=maybe", "data.cache='maybe'"),
    ("tune.num_training=0", "tune.num_training=0"),
    ("model.dense_units=100000", "model.dense_units=100000"),
    ("scheduler=step scheduler.step_size=0", "scheduler.step_size=0"),
    ("scheduler=cosine scheduler.T_max=abc", "scheduler.T_max='abc'"),
    ("optimizer.betas=[0.9]", "optimizer.betas=[0.9]"),
    ("optimizer.amsgrad=maybe", "optimizer.amsgrad='maybe'"),
    ("callbacks.divergence.max_loss_ratio=abc", "callbacks.divergence.max_loss_ratio='abc'"),
    ("class_weight=some", "class_weight='some'"),
    ("data=folder data.dir=nowhere", "data.dir=nowhere does not exist"),
]


@pytest.mark.parametrize(("override", "says"), TRAIN_CASES)
def test_each_wrong_training_value_gets_one_line(
    override: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = run_error(
        capsys, override.split(), cli_errors(lambda argv: validate(compose("train", argv)))
    )
    assert says in err


@pytest.mark.parametrize(
    "overrides",
    [["lr=abc"], ["data=folder", "data.dir=nowhere"], ["data.imagesize=64"], ["optimizer=adamw"]],
)
def test_a_start_that_fails_validation_creates_nothing(
    overrides: list[str], tmp_path: Path
) -> None:
    from fixtures_runs import train_main

    result = train_main(f"paths.output_dir={tmp_path / 'outputs'}", *overrides)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_a_misspelt_key_names_the_nearest_ones(tmp_path: Path) -> None:
    from fixtures_runs import train_main

    result = train_main(f"paths.output_dir={tmp_path}", "data.imagesize=64")
    assert result.stderr.strip() == (
        "leafnet: error: data.imagesize is not a leafnet setting; did you mean data.image_size "
        "or data.resize? (leafnet train --help lists them)"
    )


def test_fifos_and_unreadable_folders_are_skipped_with_a_reason(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A FIFO named like a photo would block the reader for ever; a folder tree deeper than
    Python's recursion limit must still be walked."""
    from fixtures_data import tiny_data_cfg, write_tiny_dir

    from leafnet.data.datamodule import LeafDataModule

    root = write_tiny_dir(tmp_path / "leaves", per_class=4)
    os.mkfifo(root / "Tomato_Leaf-Miner" / "pipe.jpg")
    top = deep = root / "Tomato_Leaf-Miner" / "d"
    levels = [deep]
    for _ in range(sys.getrecursionlimit() + 100):  # one level at a time: PATH_MAX is per call
        os.mkdir(deep)
        deep = deep / "d"
        levels.append(deep)
    os.mkdir(deep)
    # pytest's own clean-up of old temporary folders recurses; leave it a shallow tree.
    request.addfinalizer(lambda: [shutil.rmtree(d) for d in reversed(levels) if d.exists()])
    assert top.is_dir()
    shutil.copy(root / "Tomato_Leaf-Miner" / "00.jpg", deep / "deep.jpg")
    Image.new("RGB", (48, 40), (90, 160, 60)).save(root / "Tomato_Leaf-Miner" / "leaf.gif")
    dm = LeafDataModule(**tiny_data_cfg(root, val_fraction=0.25, test_fraction=0.25))
    dm.setup()
    names = {p.name for p in dm.paths_used}
    assert {"deep.jpg", "leaf.gif"} <= names and "pipe.jpg" not in names
    assert {
        "file": str(root / "Tomato_Leaf-Miner" / "pipe.jpg"),
        "reason": "not a regular file",
    } in dm.report["skipped"]


def test_non_utf8_file_names_are_predicted_and_split(
    tiny_run: Path, tiny_train_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "photos"
    shutil.copytree(tiny_train_images, photos)
    odd = Path(os.fsdecode(bytes(photos / "Tomato") + b"/leaf_\xff.jpg"))  # not UTF-8
    shutil.copy(sorted((tiny_train_images / "Tomato").glob("*.jpg"))[0], odd)  # same class

    out = tmp_path / "preds.csv"
    rows = predict.predict(
        command_config("predict", [f"ckpt={tiny_run}", f"input={photos}", f"out={out}"])
    )
    assert len(rows) == 37
    assert "leaf_\ufffd.jpg" in capsys.readouterr().out
    assert b"leaf_\xff.jpg" in out.read_bytes()  # the file's own name, byte for byte

    from leafnet.data.datamodule import LeafDataModule
    from leafnet.data.splits import read_split

    run_dir = tmp_path / "run"
    dm = LeafDataModule(
        dir=photos, image_size=32, cache_dir=tmp_path / "cache", run_dir=run_dir, num_workers=0
    )
    dm.setup("fit")  # the cache keys the odd name too
    assert "Tomato/leaf_\udcff.jpg" in read_split(run_dir / "split.csv")


def test_a_run_that_fails_after_starting_records_its_reason_in_the_run(tmp_path: Path) -> None:
    from fixtures_runs import train_main

    for name in ("a", "b"):
        (tmp_path / "broken" / name).mkdir(parents=True)
        (tmp_path / "broken" / name / "1.jpg").write_text("not a photo")
    run = tmp_path / "run"
    result = train_main("data=folder", f"data.dir={tmp_path / 'broken'}", f"hydra.run.dir={run}",
                        f"data.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    lines = [x for x in result.stderr.splitlines() if x.startswith("leafnet: error")]
    assert result.returncode == 2 and len(lines) == 1 and "no valid images left" in lines[0]
    reason = lines[0].removeprefix("leafnet: error: ")
    assert reason in (run / "train.log").read_text()
    assert json.loads((run / "summary.json").read_text())["error"] == reason
