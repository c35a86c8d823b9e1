"""`python -m leafnet.predict ckpt=<checkpoint | run dir> input=<image | folder | glob> [output=preds.csv]`.

Each file goes through the checkpoint's own preprocessing (`data.images.load_for_model`: EXIF
orientation applied, any size, JPEGs decoded at reduced size when that is enough), in batches of
`batch_size`. Prints a table (file, predicted class, probability of each class) and writes it as
CSV or JSON when `output=` ends in `.csv` or `.json`. Files that cannot be read are skipped with a
message; the others are still predicted.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from leafnet.config import command_config
from leafnet.errors import LeafnetError, cli_errors
from leafnet.files import atomic_path, refuse_existing, write_text
from leafnet.inference import (
    display_names,
    expand_inputs,
    load_model,
    predict_files,
)
from leafnet.module import LeafClassifier

OUTPUT_FORMATS = (".csv", ".json")


def format_table(results: Sequence[dict[str, Any]], class_names: Sequence[str]) -> str:
    """One row per file: file, predicted class, then the probability of each class."""
    shown = display_names([Path(r["file"]) for r in results]) if results else []
    file_w = max([len("file"), *(len(s) for s in shown)])
    pred_w = max([len("predicted"), *(len(c) for c in class_names)])
    col_w = [max(len(c), 6) for c in class_names]
    header = [f"{'file':<{file_w}}", f"{'predicted':<{pred_w}}"]
    header += [f"{c:>{w}}" for c, w in zip(class_names, col_w, strict=True)]
    lines = ["  ".join(header)]
    for name, r in zip(shown, results, strict=True):
        row = [f"{name:<{file_w}}", f"{r['predicted']:<{pred_w}}"]
        row += [f"{r['probabilities'][c]:>{w}.4f}" for c, w in zip(class_names, col_w, strict=True)]
        lines.append("  ".join(row))
    return "\n".join(lines)


def write_output(
    path: Path,
    results: Sequence[dict[str, Any]],
    skipped: Sequence[dict[str, str]],
    classifier: LeafClassifier,
    ckpt: str,
) -> None:
    """CSV (file, predicted, one column per class) or JSON (with the skipped files and the
    checkpoint's classes and preprocessing)."""
    names = list(classifier.hparams.class_names)
    if path.suffix.lower() == ".csv":
        # surrogateescape: a file name that is not UTF-8 is written as the bytes it was.
        with (
            atomic_path(path) as tmp,
            tmp.open("w", newline="", encoding="utf-8", errors="surrogateescape") as f,
        ):
            writer = csv.writer(f)
            writer.writerow(["file", "predicted", *names])
            for r in results:
                writer.writerow(
                    [r["file"], r["predicted"], *(f"{r['probabilities'][n]:.6f}" for n in names)]
                )
    else:
        doc = {
            "checkpoint": ckpt,
            "class_names": names,
            "preprocessing": dict(classifier.hparams.preprocessing),
            "predictions": list(results),
            "skipped": list(skipped),
        }
        write_text(path, json.dumps(doc, indent=1) + "\n")  # JSON escapes odd file names


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    """Run the command on a composed `conf/predict.yaml`; returns the predictions."""
    output = Path(str(cfg.output)) if cfg.get("output") else None
    if output is not None and output.suffix.lower() not in OUTPUT_FORMATS:
        raise LeafnetError(f"output={output}: use a name ending in .csv or .json")
    if output is not None:
        refuse_existing(output, cfg.get("overwrite", False), "output")
    batch_size = cfg.batch_size
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LeafnetError(f"batch_size={batch_size} must be a positive integer")
    classifier, device = load_model(cfg)
    files = expand_inputs(cfg.input)
    results, skipped = predict_files(
        classifier, files, device, batch_size, cfg.workers, cfg.get("progress")
    )
    names = list(classifier.hparams.class_names)
    if results:
        print(format_table(results, names))
    if not results:
        if len(files) == 1:
            raise LeafnetError(f"input={files[0]}: {skipped[0]['reason']}")
        raise LeafnetError(f"input={cfg.input}: none of the {len(files)} files could be read")
    if skipped:
        print(f"leafnet: skipped {len(skipped)} of {len(files)} files", file=sys.stderr)
    if output is not None:
        write_output(output, results, skipped, classifier, str(cfg.ckpt))
        print(f"wrote {output}")
    return results


@cli_errors
def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    cfg = command_config(
        "predict", sys.argv[1:] if argv is None else argv, required=("ckpt", "input")
    )
    return predict(cfg)


if __name__ == "__main__":
    main()
