"""The bench's Keras contenders: the seed's model as its users train it, and its prediction.

- `keras-tf-fit`: `model.fit` on `image_dataset_from_directory` over the bench's JPEG files;
- `keras-tf-fit-numpy`: `model.fit` on numpy arrays already in memory;
- `keras-tf` / `keras-torch`: `train_on_batch` on one fixed batch (Keras' step alone), on
  TensorFlow or Keras' torch backend;
- `predict-keras`: `model.predict` on the files through `tf.data`, decode included.
Keras and TensorFlow are imported inside the functions: the backend is chosen by the worker's
environment before the first import.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from leafnet.lab.worker import WorkerArgs, jpegs, timed


def seed_model(size: int) -> Any:
    """The seed's Sequential model, compiled as the seed does (Adam 1e-4, categorical CE)."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            keras.layers.Conv2D(32, (3, 3), padding="same", activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(3, 3)),
            keras.layers.Conv2D(16, (3, 3), padding="same", activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")
    return model


def _fit_times(model: Any, name: str, a: WorkerArgs) -> list[float]:
    """Per-step times of one `model.fit` epoch of warm-up + timed steps."""
    import keras
    import numpy as np

    s, batch, steps = a.image_size, a.batch, a.warmup + a.steps
    stamps: list[float] = []

    class Stamps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch_index: int, logs: Any = None) -> None:
            stamps.append(time.perf_counter())

    if name == "keras-tf-fit":
        # As the seed's users load a folder: decode + resize in the input pipeline, 1/255.
        data = keras.utils.image_dataset_from_directory(
            a.data_dir, image_size=(s, s), batch_size=batch, label_mode="categorical",
            shuffle=True, seed=0, verbose=False,
        ).map(lambda x, y: (x / 255.0, y))  # fmt: skip
        fit_args: dict[str, Any] = {"x": data}
    else:
        rng = np.random.default_rng(0)
        fit_args = {
            "x": rng.random((steps * batch, s, s, 3), dtype=np.float32),
            "y": np.eye(3, dtype=np.float32)[rng.integers(0, 3, steps * batch)],
            "batch_size": batch,
        }
    start = time.perf_counter()
    model.fit(**fit_args, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[Stamps()])
    return [b - e for e, b in itertools.pairwise([start, *stamps])][a.warmup :]


def _predict(a: WorkerArgs) -> dict[str, Any]:
    """Keras' `model.predict` on the bench's files through `tf.data`: read, decode, bilinear
    resize and 1/255 in the pipeline, as `image_dataset_from_directory` does."""
    import tensorflow as tf

    s = a.image_size
    files = [str(p) for p in jpegs(a)]
    model = seed_model(s)

    def load(path: Any) -> Any:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.image.resize(image, (s, s)) / 255.0

    def dataset(paths: list[str]) -> Any:
        return tf.data.Dataset.from_tensor_slices(paths).map(load).batch(a.predict_batch)

    model.predict(dataset(files[: a.predict_batch]), verbose=0)  # warm-up
    t = time.perf_counter()
    model.predict(dataset(files), verbose=0)
    return {
        "predict_images": len(files),
        "predict_images_per_s": len(files) / (time.perf_counter() - t),
    }


def work(name: str, a: WorkerArgs) -> dict[str, Any]:
    """Run Keras contender `name` (see the module docstring)."""
    if name == "predict-keras":
        return _predict(a)
    import keras
    import numpy as np

    model = seed_model(a.image_size)
    if name in ("keras-tf", "keras-torch"):
        rng = np.random.default_rng(0)
        x = rng.random((a.batch, a.image_size, a.image_size, 3), dtype=np.float32)
        y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, a.batch)]
        times = timed(lambda: model.train_on_batch(x, y), a)
    else:
        times = _fit_times(model, name, a)
    return {"times": times, "keras": keras.__version__, "backend": keras.backend.backend()}
