"""Fixtures that train a tiny run once per session (owned by the training tests).

`tiny_run` is a finished run directory made by `python -m leafnet.train` on 3 classes of 32x32
JPEGs, 4 epochs (a few seconds): predict, evaluate, export, explain and compare tests use it.
`train_cli` runs the training command in a subprocess the same way, for tests that need a process
of their own (to signal or kill it); `train_main` runs the same command in this process, which
saves the 10-15 s a new process spends importing torch and Lightning on a 2-core host.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import lightning.pytorch as pl
import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
TINY_CLASSES = ("Broad_beans", "Ridge_gourd", "Tomato")


def write_tiny_images(root: Path, per_class: int = 12, size: int = 40, seed: int = 0) -> Path:
    """Three easy classes of small noisy JPEGs (red, green, blue leaves) in image-folder layout."""
    rng = np.random.default_rng(seed)
    colours = np.array([(190, 60, 50), (60, 170, 60), (60, 70, 190)])
    for name, colour in zip(TINY_CLASSES, colours, strict=True):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.normal(colour, 35, (size, size, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i:02d}.jpg", quality=90)
    return root


def tiny_args(images: Path, out: Path, *extra: str) -> list[str]:
    """Overrides for a quick CPU run on `images`, writing under `out`."""
    return [
        "data=folder",
        f"data.dir={images}",
        f"data.cache_dir={out / 'cache'}",
        "data.image_size=32",
        "data.num_workers=0",
        "data.duplicates=exact",  # the tiny blobs are near duplicates of each other at 48x40 px
        f"paths.output_dir={out}",
        "trainer=cpu",
        "epochs=4",
        "batch_size=8",
        "lr=1e-2",
        "seed=7",
        *extra,
    ]


def train_cli(
    *args: str, timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """`python -m leafnet.train ARGS` on the CPU; stdout and stderr captured."""
    # tests/ too: a test may add one of its own callbacks (e.g. `KillAt`) by `_target_`.
    path = os.pathsep.join([str(REPO), str(REPO / "tests")])
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "leafnet.train", *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_main(*args: str) -> subprocess.CompletedProcess:
    """`python -m leafnet.train ARGS` as it runs, Hydra and exit code included, but in this
    process: its exit code, stdout and stderr (Hydra's console log included)."""
    from hydra.core.hydra_config import HydraConfig

    from leafnet.train import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with (
        mock.patch.object(sys, "argv", ["leafnet.train", *args]),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code
        finally:
            # What a new process starts without: Hydra's config of this run and its log files.
            HydraConfig.instance().cfg = None
            for handler in set(root.handlers) - set(handlers):
                handler.close()
            root.handlers[:], root.level = handlers, level
    returncode = code if isinstance(code, int) else (0 if code is None else 1)
    return subprocess.CompletedProcess(args, returncode, out.getvalue(), err.getvalue())


class KillAt(pl.Callback):
    """SIGKILL this process after batch `batch` of epoch `epoch` (both from 0): a power cut, or
    the out-of-memory killer, with no chance to save anything."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class ShardLog(pl.Callback):
    """Write the training images this process reads in each epoch to
    `<out>/<epoch>_<rank>.json`, read from the loader's own sampler after Lightning set its
    epoch (a sampler Lightning had wrapped in its own would show here by its type)."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sampler = trainer.train_dataloader.sampler
        assert type(sampler).__name__ == "EpochIndices", type(sampler)
        self.out.mkdir(parents=True, exist_ok=True)
        seen = [int(i) for _, i in sampler]
        name = f"{trainer.current_epoch}_{trainer.global_rank}.json"
        (self.out / name).write_text(json.dumps(seen))


def _made_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]
) -> Path:
    """`make(folder)` once per test session, even when pytest-xdist runs it in several worker
    processes (each has its own session): the first worker makes it, the others wait and reuse
    it (the recipe in pytest-xdist's documentation)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this run
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed half-way
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_train_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 12 JPEGs of 40x40, written once per session."""
    return _made_once(tmp_path_factory, "tiny_images", write_tiny_images)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_train_images: Path) -> Path:
    """A finished tiny run directory (checkpoints, metrics.csv, summary.json, TensorBoard...)."""

    def make(out: Path) -> None:
        result = train_cli(*tiny_args(tiny_train_images, out), f"hydra.run.dir={out / 'run'}")
        assert result.returncode == 0, result.stderr[-3000:]

    return _made_once(tmp_path_factory, "tiny_run", make) / "run"
