"""`leafnet <command> [key=value ...]`: one console script for every command.

`leafnet train optimizer=sgd` is `python -m leafnet.train optimizer=sgd`, and so on for each
command below; `leafnet --help` lists them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from leafnet.config import command_help

COMMANDS = {
    "demo": (
        "leafnet.demo",
        "a one-minute look: train briefly, predict, explain, say what is where",
    ),
    "train": ("leafnet.train", "train a model (Hydra: key=value, -m for sweeps)"),
    "predict": ("leafnet.predict", "classify photos: ckpt=RUN input=PHOTOS [out=preds.csv]"),
    "evaluate": ("leafnet.evaluate", "measure on a labelled folder: ckpt=RUN data.dir=FOLDER"),
    "export": ("leafnet.export", "ONNX, TorchScript or Keras weights: ckpt=RUN format=onnx"),
    "explain": ("leafnet.explain", "filters, feature maps, Grad-CAM: ckpt=RUN input=PHOTO"),
    "summary": ("leafnet.summary", "a model's Keras-style table: model=..."),
    "compare": ("leafnet.lab.compare", "the report of a sweep: runs=SWEEP_DIR"),
    "import-keras": (
        "leafnet.import_keras",
        "a Keras model as a checkpoint: input=KERAS_FILE out=OUT.ckpt",
    ),
    "app": ("leafnet.app", "the web page: ckpt=RUN [port=8000]"),
    "synthetic": ("leafnet.data.synthetic", "write the synthetic leaf set: [style=lab|field]"),
    "bench": ("leafnet.lab.bench", "time the training step against other implementations"),
    "calibration": ("leafnet.lab.calibration", "runs against the colour baseline: runs=FOLDER"),
    "cache": ("leafnet.data.cache", "the cache of resized photos: [dir=data/.cache] [clear=true]"),
    "scale": ("leafnet.lab.scale", "training memory and start-up time as a folder grows"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: leafnet <command> [arguments]", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "`leafnet <command> --help` lists a command's keys, with what each one does."]
    return "\n".join(lines)


_HELP = ("-h", "--help")


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in (*_HELP, "help"):
        print(usage())
        return
    name = args[0].replace("_", "-")
    if name not in COMMANDS:
        print(f"leafnet: error: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    if any(a in _HELP for a in args[1:]):
        module, what = COMMANDS[name]
        print(command_help(name, module.rsplit(".", 1)[-1], what))
        return
    module = importlib.import_module(COMMANDS[name][0])
    # Each command reads its arguments from sys.argv, as under `python -m leafnet.<command>`.
    sys.argv = [f"leafnet {name}", *args[1:]]
    module.main()  # every command's main returns None; a failure exits non-zero itself


if __name__ == "__main__":
    main()
