"""`python -m leafnet.explain ckpt=<checkpoint | run dir> input=<image> [out=DIR]`: what the network learned.

Writes four PNGs into `out` (drawn by `leafnet.figures`):

- `filters.png`: the first conv layer's RGB kernels, each scaled to its own range;
- `feature_maps_<layer>.png`: the outputs (after ReLU, as Keras' `activation="relu"` gives them)
  of the network's `feature_layers` for this image: LeafNet's `conv2d` and `conv2d_1`, a
  torchvision model's first conv layer and its last stage;
- `gradcam.png`: Grad-CAM for the predicted class over the image as the network sees it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig

from leafnet.config import command_config
from leafnet.errors import LeafnetError, cli_errors
from leafnet.figures import explain_figures, pyplot
from leafnet.files import atomic_path, refuse_existing
from leafnet.inference import expand_inputs, load_model


def explain(cfg: DictConfig) -> dict[str, Path]:
    """Run the command on a composed `conf/explain.yaml`; returns the written PNGs by name."""
    from leafnet.data.images import load_for_model, to_display, to_float

    classifier, device = load_model(cfg)
    files = expand_inputs(cfg.input)
    if len(files) != 1:
        raise LeafnetError(f"input={cfg.input} matches {len(files)} files; explain takes one image")
    image = load_for_model(files[0], classifier.prep)  # the network's view
    x = to_float(image.to(device), classifier.prep)
    names = list(classifier.hparams.class_names)
    figures = explain_figures(classifier.net, x, names, display=to_display(image, classifier.prep))
    out = Path(str(cfg.out)) if cfg.get("out") else Path(f"explain_{files[0].stem}")
    for name in figures:
        refuse_existing(out / f"{name}.png", cfg.get("overwrite", False), "out")
    plt = pyplot()
    written = {}
    for name, fig in figures.items():
        written[name] = out / f"{name}.png"
        with atomic_path(written[name], replace=cfg.get("overwrite", False)) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
    with torch.no_grad():
        probs = classifier.predict_proba(image.unsqueeze(0).to(device))[0].cpu()
    best = int(probs.argmax())
    print(f"{files[0]}: {names[best]} (p={float(probs[best]):.4f})")
    print(f"wrote {', '.join(p.name for p in written.values())} to {out}")
    return written


@cli_errors
def main(argv: Sequence[str] | None = None) -> None:
    cfg = command_config(
        "explain", sys.argv[1:] if argv is None else argv, required=("ckpt", "input")
    )
    explain(cfg)


if __name__ == "__main__":
    main()
