"""`python -m leafnet.predict ckpt=<checkpoint | run dir> input=<image | folder | glob> [out=preds.csv]`.

Each file goes through the checkpoint's own preprocessing (`data.images.load_for_model`: EXIF
orientation applied, any size, JPEGs decoded at reduced size when that is enough), in batches of
`batch_size`. Prints a table (file, predicted class, probability of each class) and writes it as
CSV or JSON when `out=` ends in `.csv` or `.json`. A CSV is written as the batches go, to
`<out>.partial`, renamed when complete: an interrupted run leaves a valid partial CSV, and
`resume=true` predicts only the files it lacks. Files that cannot be read are skipped with a
message; the others are still predicted.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from leafnet.config import command_config
from leafnet.errors import LeafnetError, cli_errors
from leafnet.files import refuse_existing, write_text
from leafnet.inference import display_names, expand_inputs, iter_predictions, load_model
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


def write_json(
    path: Path,
    results: Sequence[dict[str, Any]],
    skipped: Sequence[dict[str, str]],
    classifier: LeafClassifier,
    ckpt: str,
    replace: bool = True,
) -> None:
    """The predictions as JSON, with the skipped files and the checkpoint's classes and
    preprocessing (written whole at the end; CSV outputs are written as they go)."""
    doc = {
        "checkpoint": ckpt,
        "class_names": list(classifier.hparams.class_names),
        "preprocessing": dict(classifier.hparams.preprocessing),
        "predictions": list(results),
        "skipped": list(skipped),
    }
    write_text(path, json.dumps(doc, indent=1) + "\n", replace)  # JSON escapes odd file names


def _partial(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def _rows_done(partial: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """The predictions an interrupted CSV run wrote (a last row cut short is dropped)."""
    with partial.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["file", "predicted", *names]:
        raise LeafnetError(
            f"{partial} is not a partial output of this checkpoint's predictions; remove it"
        )
    done = []
    for row in rows[1:]:
        if len(row) != 2 + len(names):
            break
        probs = {n: float(v) for n, v in zip(names, row[2:], strict=True)}
        done.append({"file": row[0], "predicted": row[1], "probabilities": probs})
    return done


def _stream_csv(
    output: Path, batches: Any, names: Sequence[str], done: list[dict[str, Any]], resume: bool
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Write rows to `<out>.partial` as each batch is predicted (flushed, so an interrupted
    run leaves a valid partial CSV that `resume=true` finishes). surrogateescape: a file name
    that is not UTF-8 is written as the bytes it was."""
    partial = _partial(output)
    results, skipped = list(done), []
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        f = partial.open(
            "a" if resume else "w", newline="", encoding="utf-8", errors="surrogateescape"
        )
    except OSError as err:
        raise LeafnetError(
            f"cannot write {output} ({err.strerror or err}); choose a writable location"
        ) from None
    with f:
        writer = csv.writer(f)
        if not resume:
            writer.writerow(["file", "predicted", *names])
        for batch, bad in batches:
            for r in batch:
                writer.writerow(
                    [r["file"], r["predicted"], *(f"{r['probabilities'][n]:.6f}" for n in names)]
                )
            f.flush()
            results += batch
            skipped += bad
    return results, skipped


def _commit(partial: Path, output: Path, overwrite: bool) -> None:
    """The finished output under its name: replacing a file only with `overwrite=true`, decided
    at the moment of the rename (a link fails when the name was taken meanwhile)."""
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    if overwrite:
        os.replace(partial, output)
        return
    try:
        os.link(partial, output)
    except FileExistsError:
        raise LeafnetError(
            f"out={output} appeared while predicting; the predictions are in {partial} "
            "(add overwrite=true to replace it)"
        ) from None
    partial.unlink()


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    """Run the command on a composed `conf/predict.yaml`; returns the predictions."""
    output = Path(str(cfg.out)) if cfg.get("out") else None
    if output is not None and output.suffix.lower() not in OUTPUT_FORMATS:
        raise LeafnetError(f"out={output}: use a name ending in .csv or .json")
    overwrite, resume = cfg.get("overwrite", False), cfg.get("resume", False)
    streaming = output is not None and output.suffix.lower() == ".csv"
    if output is not None:
        refuse_existing(output, overwrite, "out")
        if resume and not (streaming and _partial(output).is_file()):
            raise LeafnetError(f"resume=true: there is no {_partial(output)} to finish")
        if streaming and _partial(output).is_file() and not (resume or overwrite):
            raise LeafnetError(
                f"{_partial(output)} holds the rows of an interrupted run; add resume=true to "
                "finish it, or overwrite=true to start again"
            )
    batch_size = cfg.batch_size
    classifier, device = load_model(cfg)
    names = list(classifier.hparams.class_names)
    files = expand_inputs(cfg.input)
    done = _rows_done(_partial(output), names) if resume and output is not None else []
    finished = {r["file"] for r in done}
    todo = [f for f in files if str(f) not in finished]
    batches = iter_predictions(
        classifier, todo, device, batch_size, cfg.workers, cfg.get("progress")
    )
    if streaming:
        assert output is not None
        results, skipped = _stream_csv(output, batches, names, done, resume)
    else:
        results, skipped = [], []
        for batch, bad in batches:
            results += batch
            skipped += bad
    names = list(classifier.hparams.class_names)
    if results:
        print(format_table(results, names))
    if not results:
        if len(files) == 1:
            raise LeafnetError(f"input={files[0]}: {skipped[0]['reason']}")
        raise LeafnetError(f"input={cfg.input}: none of the {len(files)} files could be read")
    if skipped:
        print(f"leafnet: skipped {len(skipped)} of {len(files)} files", file=sys.stderr)
    if streaming:
        assert output is not None
        _commit(_partial(output), output, overwrite)
        print(f"wrote {output}")
    elif output is not None:
        write_json(output, results, skipped, classifier, str(cfg.ckpt), overwrite)
        print(f"wrote {output}")
    return results


@cli_errors
def main(argv: Sequence[str] | None = None) -> None:
    cfg = command_config(
        "predict", sys.argv[1:] if argv is None else argv, required=("ckpt", "input")
    )
    predict(cfg)


if __name__ == "__main__":
    main()
