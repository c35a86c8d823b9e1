"""`python -m leafnet.export ckpt=<checkpoint | run dir> format=onnx|torchscript|keras [out=...]`.

ONNX and TorchScript export the same graph, `ExportedLeafNet`:

- input `image`: **uint8** RGB, NCHW `[batch, 3, S, S]`, already resized to S x S the way the
  checkpoint's preprocessing says (letterbox / stretch / center_crop, pad colour); the batch axis
  is dynamic;
- the scaling (`x / 255`, and `(x - mean) / std` when the checkpoint standardizes) happens inside
  the graph, so a consumer cannot get it wrong and feeds 4x fewer bytes than float32;
- outputs `logits` and `probabilities` (softmax), `[batch, num_classes]`.

The ONNX file's metadata (`leafnet.*` keys) holds the class names, the preprocessing and this input
contract; TorchScript carries the same JSON as the extra file `leafnet.json`. `format=keras` writes
the seed's Keras 3 `.weights.h5` (through `keras_io`) plus a `.leafnet.json` beside it, since a
weights file cannot hold class names; the Keras model takes float NHWC input scaled as in training.
"""

from __future__ import annotations

import copy
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from leafnet.config import command_config
from leafnet.errors import LeafnetError, cli_errors
from leafnet.files import atomic_path, refuse_existing, write_text
from leafnet.inference import load_model
from leafnet.module import LeafClassifier

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "keras": ".weights.h5"}
INPUT_CONTRACT = (
    "image: uint8 RGB NCHW [batch, 3, S, S], resized to S x S per leafnet.preprocessing "
    "(resize mode, pad_color); scaling (x/255, then (x-mean)/std if normalize=standardize) "
    "happens inside the graph"
)
OUTPUT_CONTRACT = "logits and probabilities (softmax): float32 [batch, num_classes], classes in leafnet.class_names order"


class ExportedLeafNet(nn.Module):
    """uint8 image batch -> (logits, probabilities), with the checkpoint's scaling inside."""

    def __init__(self, classifier: LeafClassifier) -> None:
        super().__init__()
        # A plain-layout copy: channels_last is a CPU-training speed choice, not part of the model.
        self.net = copy.deepcopy(classifier.net).to("cpu", memory_format=torch.contiguous_format)
        prep = classifier.prep
        self.standardize = prep.normalize == "standardize"
        # The same operations, in the same order, as data.images.to_float: identical numbers.
        self.register_buffer("mean", torch.tensor(prep.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(prep.std).view(1, 3, 1, 1))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        x = image.float() * (1.0 / 255.0)
        if self.standardize:
            x = (x - self.mean) / self.std
        logits = self.net(x)
        return logits, logits.softmax(dim=-1)


def metadata(classifier: LeafClassifier) -> dict[str, str]:
    """What a consumer needs besides the graph: classes, preprocessing, the input contract."""
    import leafnet

    return {
        "leafnet.class_names": json.dumps(list(classifier.hparams.class_names)),
        "leafnet.preprocessing": json.dumps(dict(classifier.hparams.preprocessing)),
        "leafnet.input": INPUT_CONTRACT,
        "leafnet.outputs": OUTPUT_CONTRACT,
        "leafnet.version": getattr(leafnet, "__version__", "0"),
    }


def example_batch(classifier: LeafClassifier, n: int = 2, seed: int = 0) -> Tensor:
    """A random uint8 batch [n, 3, S, S] of the checkpoint's input size."""
    side = classifier.prep.image_size
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=gen)


def export_onnx(classifier: LeafClassifier, path: Path, replace: bool = True) -> Path:
    """ONNX (torch.export-based exporter) with a dynamic batch axis and leafnet metadata."""
    import onnx

    model = ExportedLeafNet(classifier).eval()
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress chatter and deprecations
        program = torch.onnx.export(
            model,
            (example_batch(classifier),),
            input_names=["image"],
            output_names=["logits", "probabilities"],
            dynamic_shapes={"image": {0: batch}},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata(classifier))
    proto.doc_string = (
        f"leafnet LeafNet classifier. Input {INPUT_CONTRACT}. Outputs {OUTPUT_CONTRACT}."
    )
    onnx.checker.check_model(proto)
    with atomic_path(path, replace) as tmp:
        onnx.save_model(proto, str(tmp))
    return path


def export_torchscript(classifier: LeafClassifier, path: Path, replace: bool = True) -> Path:
    """A traced TorchScript module (`torch.jit.load`), metadata as the extra file leafnet.json."""
    model = ExportedLeafNet(classifier).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        traced = torch.jit.trace(model, (example_batch(classifier),), check_trace=False)
        with atomic_path(path, replace) as tmp:
            torch.jit.save(
                traced, str(tmp), _extra_files={"leafnet.json": json.dumps(metadata(classifier))}
            )
    return path


def export_keras(classifier: LeafClassifier, path: Path, replace: bool = True) -> Path:
    """The seed's Keras 3 weights file, and the class names and preprocessing beside it."""
    from leafnet.keras_io import save_keras_weights
    from leafnet.model import LeafNet

    if not isinstance(classifier.net, LeafNet):
        raise LeafnetError(
            f"format=keras writes the seed's Keras model; this checkpoint holds "
            f"model.arch={classifier.hparams.model.get('arch')}: use format=onnx or torchscript"
        )
    net = copy.deepcopy(classifier.net).to("cpu", memory_format=torch.contiguous_format)
    save_keras_weights(net, path)
    meta: dict[str, Any] = {k.removeprefix("leafnet."): v for k, v in metadata(classifier).items()}
    for key in ("class_names", "preprocessing"):  # plain JSON here, not JSON inside a string
        meta[key] = json.loads(meta[key])
    meta["input"] = (
        "float32 NHWC [batch, S, S, 3], scaled as leafnet.preprocessing says (x/255 for rescale)"
    )
    sidecar = keras_sidecar(path)
    write_text(sidecar, json.dumps(meta, indent=1) + "\n", replace)  # atomic, never over a file
    return path


def keras_sidecar(path: Path) -> Path:
    """Where format=keras puts the class names and preprocessing beside the weights file."""
    return path.with_name(path.name.removesuffix(".weights.h5") + ".leafnet.json")


def default_output(ckpt: str, fmt: str) -> Path:
    """Beside the checkpoint: <run>/checkpoints/best.ckpt -> best.onnx, best.pt, best.weights.h5."""
    from leafnet.runs import find_checkpoint

    found = find_checkpoint(ckpt)
    return found.with_name(found.stem + FORMATS[fmt])


def export(cfg: DictConfig) -> Path:
    """Run the command on a composed `conf/export.yaml`; returns the written file."""
    fmt = str(cfg.format).lower()
    if fmt not in FORMATS:
        raise LeafnetError(f"format={cfg.format} is unknown; use one of {', '.join(FORMATS)}")
    output = Path(str(cfg.out)) if cfg.get("out") else None
    if output is not None and not output.name.endswith(FORMATS[fmt]):
        raise LeafnetError(f"out={output}: a {fmt} file must end in {FORMATS[fmt]}")
    # Exported graphs are device-neutral; tracing on the CPU is enough.
    classifier, _ = load_model(cfg, device="cpu")
    output = output or default_output(str(cfg.ckpt), fmt)
    overwrite = cfg.get("overwrite", False)
    refuse_existing(output, overwrite, "out")
    if fmt == "keras":
        refuse_existing(keras_sidecar(output), overwrite, "out")
    writer = {"onnx": export_onnx, "torchscript": export_torchscript, "keras": export_keras}[fmt]
    writer(classifier, output, overwrite)
    side = classifier.prep.image_size
    print(
        f"wrote {output} ({fmt}; input {'uint8 [batch, 3, ' if fmt != 'keras' else 'float [batch, '}"
        f"{side}, {side}{']' if fmt != 'keras' else ', 3]'}; classes {', '.join(classifier.hparams.class_names)})"
    )
    return output


@cli_errors
def main(argv: Sequence[str] | None = None) -> None:
    cfg = command_config("export", sys.argv[1:] if argv is None else argv, required=("ckpt",))
    export(cfg)


if __name__ == "__main__":
    main()
