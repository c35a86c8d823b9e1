"""Keras parity: the seed's Keras model (Keras 3, torch backend) and LeafNet agree through every
weight file format, both ways; bad files are refused with one line; the summary tables match."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import h5py
import keras
import numpy as np
import pytest
import torch
from fixtures_keras import seed_model

from leafnet.errors import LeafnetError
from leafnet.keras_io import load_keras_weights, read_keras_layers, save_keras_weights
from leafnet.model import LeafNet
from leafnet.summary import format_summary

pytestmark = [
    pytest.mark.keras,
    # the seed passes input_shape= to its first Conv2D; Keras 3 accepts it with a warning
    pytest.mark.filterwarnings("ignore:Do not pass an `input_shape`:UserWarning"),
]

TOLERANCE = 1e-5  # max abs difference of softmax outputs


def random_seed_model(seed: int, **kwargs: int) -> keras.Model:
    """`seed_model(**kwargs)` with Glorot kernels and random (not zero) biases."""
    keras.utils.set_random_seed(seed)
    model = seed_model(**kwargs)
    rng = np.random.default_rng(seed)
    # Keras initialises biases to zero; random ones make a swapped or dropped bias visible.
    model.set_weights(
        [
            w if w.ndim > 1 else rng.normal(0, 0.1, w.shape).astype(np.float32)
            for w in model.get_weights()
        ]
    )
    return model


def keras_probs(model: keras.Model, images_nhwc: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(images_nhwc, training=False))


def leafnet_probs(model: LeafNet, images_nhwc: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)  # NHWC -> NCHW
    with torch.no_grad():
        return model.eval()(x).softmax(-1).numpy()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """4 random 640x640 RGB images in [0, 1], channels-last as Keras takes them."""
    return np.random.default_rng(0).random((4, 640, 640, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory, images: np.ndarray) -> dict:
    """The seed model built once, with non-zero biases (so bias mapping is tested), saved in
    every format, and its softmax outputs on `images`."""
    model = random_seed_model(1)
    out = tmp_path_factory.mktemp("keras")
    files = {
        "keras": out / "seed.keras",
        "weights.h5": out / "seed.weights.h5",
        "h5": out / "seed.h5",
    }
    model.save(files["keras"])
    model.save_weights(files["weights.h5"])
    model.save(files["h5"])  # Keras 3's legacy HDF5 path
    return {"model": model, "files": files, "probs": keras_probs(model, images), "dir": out}


def write_keras2_h5(path: Path, weights: list[np.ndarray], names: list[str]) -> None:
    """A tf.keras 2.x `model.save("x.h5")` layout: `model_weights/<layer>/<layer>/kernel:0`,
    listed by `layer_names` and `weight_names` attributes (byte strings, as TF 2 writes them)."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.13.1"
        f.attrs["backend"] = b"tensorflow"
        root = f.create_group("model_weights")
        root.attrs["layer_names"] = np.array([n.encode() for n in names])
        arrays = iter(weights)
        for name in names:
            group = root.create_group(name)
            if name.startswith(("conv2d", "dense")):
                wnames = [f"{name}/kernel:0", f"{name}/bias:0"]
                for wname in wnames:
                    group.create_dataset(wname, data=next(arrays))
                group.attrs["weight_names"] = np.array([w.encode() for w in wnames])
            else:
                group.attrs["weight_names"] = np.array([], dtype="S1")


# The names of the seed's own summary: Keras numbers layers per process.
SEED_NAMES = [
    "conv2d_12",
    "max_pooling2d_12",
    "conv2d_13",
    "max_pooling2d_13",
    "flatten_6",
    "dense_12",
    "dense_13",
]


@pytest.mark.parametrize("kind", ["keras", "weights.h5", "h5"])
def test_keras_file_into_leafnet_matches_keras(seed: dict, images: np.ndarray, kind: str) -> None:
    model = load_keras_weights(LeafNet(), seed["files"][kind])
    diff = np.abs(leafnet_probs(model, images) - seed["probs"]).max()
    assert diff <= TOLERANCE, f"{kind}: max abs diff {diff:.2e}"


def test_channels_first_flatten_would_fail_parity(seed: dict, images: np.ndarray) -> None:
    """The control: the same weights behind a torch-order (C, H, W) flatten do not match."""
    model = load_keras_weights(LeafNet(), seed["files"]["weights.h5"])
    model.flatten = torch.nn.Flatten()
    assert np.abs(leafnet_probs(model, images) - seed["probs"]).max() > 100 * TOLERANCE


def test_keras2_h5_layout_matches_keras(seed: dict, images: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "tf2.h5"
    write_keras2_h5(path, seed["model"].get_weights(), SEED_NAMES)
    assert [layer.name for layer in read_keras_layers(path)] == [
        "conv2d_12",
        "conv2d_13",
        "dense_12",
        "dense_13",
    ]
    model = load_keras_weights(LeafNet(), path)
    assert np.abs(leafnet_probs(model, images) - seed["probs"]).max() <= TOLERANCE


def test_weights_map_exactly(seed: dict) -> None:
    """HWIO -> OIHW for kernels, [in, out] -> [out, in] for Dense, biases as they are."""
    model = load_keras_weights(LeafNet(), seed["files"]["weights.h5"])
    k = seed["model"].get_weights()
    np.testing.assert_array_equal(model.conv2d.weight.detach().numpy(), k[0].transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(model.conv2d_1.bias.detach().numpy(), k[3])
    np.testing.assert_array_equal(model.dense.weight.detach().numpy(), k[4].T)
    np.testing.assert_array_equal(model.dense_1.bias.detach().numpy(), k[7])


def test_leafnet_weights_into_keras(images: np.ndarray, tmp_path: Path) -> None:
    """LeafNet -> .weights.h5 -> Keras 3 load_weights -> the same softmax outputs."""
    torch.manual_seed(2)
    net = LeafNet()
    with torch.no_grad():
        for layer in (net.conv2d, net.conv2d_1, net.dense, net.dense_1):
            layer.bias.normal_(0, 0.1)
    path = save_keras_weights(net, tmp_path / "leafnet.weights.h5")
    model = seed_model()
    model.load_weights(path)
    diff = np.abs(keras_probs(model, images) - leafnet_probs(net, images)).max()
    assert diff <= TOLERANCE, f"max abs diff {diff:.2e}"


def test_mismatched_shapes_are_refused_naming_layer_and_shapes(seed: dict) -> None:
    model = LeafNet(image_size=320)
    before = model.conv2d.weight.detach().clone()
    with pytest.raises(LeafnetError) as err:
        load_keras_weights(model, seed["files"]["keras"])
    message = str(err.value)
    assert "\n" not in message
    assert "dense" in message and "(179776, 8)" in message and "(44944, 8)" in message
    # checked before copying: the conv layers, which would fit, are untouched
    assert torch.equal(model.conv2d.weight, before)


def test_wrong_layer_sequence_is_refused(seed: dict, tmp_path: Path) -> None:
    path = tmp_path / "short.h5"
    write_keras2_h5(path, seed["model"].get_weights()[:4], ["conv2d", "max_pooling2d", "conv2d_1"])
    with pytest.raises(LeafnetError, match=r"\['Conv2D', 'Conv2D'\] do not match"):
        load_keras_weights(LeafNet(), path)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: d / "missing.keras", "no such file"),
        (lambda d: (d / "notes.h5").write_text("not hdf5") and d / "notes.h5", "neither HDF5"),
        (lambda d: _zip_without_weights(d / "empty.keras"), "without model.weights.h5"),
        (lambda d: _truncated(d / "seed.keras", d / "cut.keras"), "cut.keras"),
    ],
    ids=["missing", "text", "zip-without-weights", "truncated-archive"],
)
def test_bad_files_are_one_line_errors(
    seed: dict, make: Callable[[Path], Path], needle: str
) -> None:
    with pytest.raises(LeafnetError, match=needle) as err:
        load_keras_weights(LeafNet(), make(seed["dir"]))
    assert "\n" not in str(err.value)


def _zip_without_weights(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{}")
    return path


def _truncated(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


def test_save_needs_weights_h5_suffix(tmp_path: Path) -> None:
    with pytest.raises(LeafnetError, match=r"\.weights\.h5"):
        save_keras_weights(LeafNet(image_size=32), tmp_path / "x.h5")


@pytest.mark.parametrize(
    "config",
    [(640, 32, 16, 8, 3), (320, 32, 16, 16, 5), (96, 64, 8, 128, 10)],
    ids=["seed", "320-d16-c5", "96-wide"],
)
@pytest.mark.parametrize("line_length", [76, 88, 101])
def test_summary_equals_keras_summary(
    monkeypatch: pytest.MonkeyPatch, config: tuple, line_length: int
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # so rich does not crop Keras' own table
    keras.backend.clear_session()  # the model is named "sequential", as in a fresh process
    size, c1, c2, dense, classes = config
    captured: list[str] = []
    seed_model(*config).summary(line_length=line_length, print_fn=lambda s, **_: captured.append(s))
    ours = format_summary(LeafNet(size, 3, c1, c2, dense, classes), line_length=line_length)
    assert ours.splitlines() == captured[0].splitlines()


def _small_keras_file(path: Path, classes: int = 3) -> keras.Model:
    model = random_seed_model(3, size=64, classes=classes)
    model.save(path)
    return model


def test_import_keras_makes_a_working_checkpoint(tmp_path: Path) -> None:
    from leafnet.data.synthetic import CLASS_NAMES
    from leafnet.import_keras import main
    from leafnet.runs import load_classifier

    model = _small_keras_file(tmp_path / "seed64.keras")
    out = tmp_path / "imported.ckpt"
    main([f"input={tmp_path / 'seed64.keras'}", f"out={out}", "data.image_size=64"])
    ckpt = torch.load(out, weights_only=True)  # only primitives in it
    assert ckpt["hyper_parameters"]["class_names"] == list(CLASS_NAMES)
    classifier = load_classifier(out)
    x = np.random.default_rng(4).random((4, 64, 64, 3), dtype=np.float32)
    with torch.no_grad():
        ours = classifier.predict_proba(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert np.abs(ours - keras_probs(model, x)).max() <= TOLERANCE


def test_import_keras_refuses_wrong_class_count(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from leafnet.import_keras import main

    _small_keras_file(tmp_path / "five.keras", classes=5)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [f"input={tmp_path / 'five.keras'}", f"out={tmp_path / 'x.ckpt'}", "data.image_size=64"]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "5 outputs" in err and "3 classes" in err
    assert not (tmp_path / "x.ckpt").exists()
