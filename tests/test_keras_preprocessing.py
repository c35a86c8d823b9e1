"""data.resize=keras*: a Keras model imported into leafnet answers on photo files what Keras'
own pipeline (image_dataset_from_directory: TensorFlow's decode and resize, x / 255) answers.

The resize is checked against values TensorFlow's `tf.image.resize` gave for a fixed pattern (no
TensorFlow needed); the whole pipeline against Keras + TensorFlow themselves when they are
installed (`pip install 'leafnet[bench]'`), on real camera photos shipped with matplotlib and
scikit-learn and on the embedded set.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from leafnet.data.images import Preprocessing, keras_resize, load_for_model, read_image

# tf.image.resize(img, size, method="bilinear") of img[i, j] = 49 i + 7 j (5 x 7), TensorFlow 2.21.
DOWN_4X4 = [
    [8.75, 21.0, 33.25, 45.5],
    [70.0, 82.25, 94.5, 106.75],
    [131.25, 143.5, 155.75, 168.0],
    [192.5, 204.75, 217.0, 229.25],
]
UP_9X9_ROW_0 = [0.0, 4.6667, 10.1111, 15.5556, 21.0, 26.4444, 31.8889, 37.3333, 42.0]
UP_9X9_ROW_4 = [98.0, 102.6667, 108.1111, 113.5556, 119.0, 124.4444, 129.8889, 135.3333, 140.0]
UP_9X9_COL_8 = [42.0, 58.3333, 85.5556, 112.7778, 140.0, 167.2222, 194.4444, 221.6667, 238.0]


def pattern_image() -> Image.Image:
    rows, cols = np.mgrid[0:5, 0:7]
    return Image.fromarray(np.repeat((49 * rows + 7 * cols)[..., None], 3, 2).astype(np.uint8))


def resized(size: int) -> np.ndarray:
    x = keras_resize(pattern_image(), Preprocessing(image_size=size, resize="keras"))
    return (x[0] * 255).numpy()  # undo x / 255; one channel (all three are equal)


def test_the_resize_is_tensorflows_bilinear_unrounded() -> None:
    np.testing.assert_allclose(resized(4), DOWN_4X4, atol=1e-3)  # no antialiasing when shrinking
    up = resized(9)
    np.testing.assert_allclose(up[0], UP_9X9_ROW_0, atol=1e-3)
    np.testing.assert_allclose(up[4], UP_9X9_ROW_4, atol=1e-3)
    np.testing.assert_allclose(up[:, 8], UP_9X9_COL_8, atol=1e-3)
    assert not np.allclose(up, np.round(up))  # kept in float, as Keras keeps it


def camera_photos() -> list[Path]:
    import matplotlib

    return [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]


def test_jpegs_are_decoded_as_tensorflow_decodes_them() -> None:
    # TensorFlow's fast integer IDCT differs from PIL's accurate one by several levels on a photo.
    pytest.importorskip("simplejpeg")
    from leafnet.data.images import read_as_tensorflow

    (photo,) = camera_photos()
    fast = np.asarray(read_as_tensorflow(photo), dtype=np.int32)
    accurate = np.asarray(read_image(photo), dtype=np.int32)
    assert fast.shape == accurate.shape and 0 < np.abs(fast - accurate).max() <= 30


@pytest.mark.parametrize("mode", ["keras", "keras_crop", "keras_pad"])
def test_import_keras_records_the_mode_and_predict_uses_it(tmp_path: Path, mode: str) -> None:
    keras = pytest.importorskip("keras")
    from fixtures_keras import seed_model

    from leafnet.import_keras import import_keras
    from leafnet.runs import load_classifier

    keras.utils.set_random_seed(0)
    model = seed_model(48)
    model.save(tmp_path / "seed.keras")
    ckpt = import_keras(
        tmp_path / "seed.keras",
        tmp_path / "seed.ckpt",
        [f"data.resize={mode}", "data.image_size=48"],
    )
    classifier = load_classifier(ckpt)
    assert classifier.prep.resize == mode
    (photo,) = camera_photos()
    x = load_for_model(photo, classifier.prep)
    assert x.dtype == torch.float32 and tuple(x.shape) == (3, 48, 48)
    assert float(x.min()) >= 0 and float(x.max()) <= 1 + 1e-6  # scaled, as the model takes it


KERAS_SIDE = """
import json, sys
import numpy as np, keras
photos, out, size, tests = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, tests)
from fixtures_keras import seed_model
keras.utils.set_random_seed(3)
model = seed_model(size)
model.save(f"{out}/seed.keras")
probs = {}
for mode, option in [("keras", {}), ("keras_crop", {"crop_to_aspect_ratio": True}),
                     ("keras_pad", {"pad_to_aspect_ratio": True})]:
    ds = keras.utils.image_dataset_from_directory(
        photos, labels=None, image_size=(size, size), shuffle=False, **option)
    x = np.concatenate([b.numpy() for b in ds]) / 255.0
    probs[mode] = model.predict(x, verbose=0).tolist()
json.dump(probs, open(f"{out}/keras.json", "w"))
"""


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None, reason="needs TensorFlow (the bench extra)"
)
def test_keras_own_pipeline_gives_the_same_probabilities(
    tmp_path: Path, tiny_train_images: Path
) -> None:
    """Keras 3 on TensorFlow, as the seed's users run it (its own process: TensorFlow and torch
    do not share one), against import_keras + predict on the same files."""
    from leafnet.config import command_config
    from leafnet.import_keras import import_keras
    from leafnet.predict import predict

    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in [*camera_photos(), *sorted(tiny_train_images.rglob("*.jpg"))[:2]]:
        shutil.copy(photo, photos)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(
        [sys.executable, "-c", KERAS_SIDE, str(photos), str(tmp_path), "160", str(Path(__file__).parent)],
        env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    expected = json.loads((tmp_path / "keras.json").read_text())
    for mode, probs in expected.items():
        ckpt = tmp_path / f"{mode}.ckpt"
        import_keras(tmp_path / "seed.keras", ckpt, [f"data.resize={mode}", "data.image_size=160"])
        rows = predict(command_config("predict", [f"ckpt={ckpt}", f"input={photos}"]))
        got = np.array([list(r["probabilities"].values()) for r in rows])
        assert np.abs(got - np.array(probs)).max() <= 1e-5, mode
