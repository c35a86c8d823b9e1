"""`python -m leafnet.import_keras input=SRC out=OUT.ckpt [overrides]`: a Keras model as a checkpoint.

SRC is a Keras 3 `.keras` archive, a Keras 3 `.weights.h5` or a Keras 2 / tf.keras `.h5` file of
the seed's model (see `leafnet.keras_io`). The overrides are the training ones and describe the
network and its input: `data.image_size=320 model.dense_units=16`, and how images are prepared
(`data.resize=stretch` is what Keras' `image_dataset_from_directory` does). The class names come
from the data config: the seed's three diseases for the synthetic set, or the sorted sub-folders
of `data.dir`. The checkpoint then works with predict, evaluate, export and explain.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from leafnet.errors import LeafnetError, cli_errors
from leafnet.files import refuse_existing

USAGE = (
    "usage: leafnet import-keras input=<keras file> out=<file.ckpt> [overwrite=true] "
    "[training overrides, e.g. data.image_size=320 data.resize=keras]"
)
OWN_KEYS = ("input", "out", "overwrite")


def class_names_from_data(data: Any) -> list[str]:
    """The class names the data config stands for, in label order (sorted, as Keras sorts)."""
    if data.get("synthetic"):
        from leafnet.data.synthetic import CLASS_NAMES

        return list(CLASS_NAMES)
    from leafnet.data.folder import scan_folder

    return scan_folder(data.dir)[0]


def import_keras(
    keras_file: str | Path, out: str | Path, overrides: Sequence[str] = (), overwrite: bool = False
) -> Path:
    """Read a Keras file into a `LeafClassifier` built from the config, save it as `out` (an
    existing `out` only with `overwrite`)."""
    from leafnet.config import compose, to_primitive
    from leafnet.data.images import Preprocessing
    from leafnet.keras_io import load_keras_weights, read_keras_layers
    from leafnet.module import LeafClassifier
    from leafnet.runs import save_classifier

    refuse_existing(out, overwrite, "OUT")
    cfg = compose("train", overrides)
    if cfg.model.get("arch", "leafnet") != "leafnet":
        raise LeafnetError(
            f"import_keras reads the seed's Keras model into model=leafnet or leafnet_gap, not "
            f"model.arch={cfg.model.arch}"
        )
    layers = read_keras_layers(keras_file)  # refuses a missing or unreadable file before any work
    class_names = class_names_from_data(cfg.data)
    file_classes = layers[-1].kernel.shape[-1] if layers else None
    if file_classes != len(class_names):
        raise LeafnetError(
            f"{keras_file} has {file_classes} outputs but the data config has {len(class_names)} classes "
            f"({', '.join(class_names)}); set data.dir to the folder the Keras model was trained on"
        )
    classifier = LeafClassifier.from_config(
        to_primitive(cfg),
        class_names,
        Preprocessing.from_dict(to_primitive(cfg.data)).to_dict(),
    )
    load_keras_weights(classifier.net, keras_file)
    return save_classifier(classifier.eval(), out)


@cli_errors
def main(argv: Sequence[str] | None = None) -> None:
    """`input=<keras file> out=<file.ckpt> [overwrite=true] [training overrides]`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(f"{USAGE}\n\n{__doc__}")
        return
    own = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.split("=", 1)[0] in OWN_KEYS}
    overrides = [a for a in args if a.split("=", 1)[0] not in OWN_KEYS]
    if "input" not in own or "out" not in own:
        raise LeafnetError(f"input= and out= are required; {USAGE}")
    if own.get("overwrite", "false") not in ("true", "false"):
        raise LeafnetError(f"overwrite={own['overwrite']}: use true or false")
    if not own["out"].endswith(".ckpt"):
        raise LeafnetError(f"out= must end in .ckpt, got {own['out']}; {USAGE}")
    written = import_keras(
        own["input"], own["out"], overrides, overwrite=own.get("overwrite") == "true"
    )
    print(f"wrote {written} from {own['input']}")


if __name__ == "__main__":
    main()
