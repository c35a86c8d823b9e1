"""leafnet as users install it: a wheel installed away from the source tree trains, predicts and
answers the `leafnet` console script, with only the base dependencies' code paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fixtures_runs import REPO

from leafnet import kernels


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout, installed into a bare target folder."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a clean copy of the sources: a build/ left in the checkout could carry stale files.
    source = root / "source"
    top = {".venv", ".git", "outputs", "data", "build", "docs", ".pytest_cache", ".ruff_cache"}

    def skipped(folder: str, names: list[str]) -> list[str]:
        here = Path(folder) == REPO
        return [n for n in names if (here and n in top) or n == "__pycache__" or "egg-info" in n]

    shutil.copytree(REPO, source, ignore=skipped)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(root / "dist"), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (root / "dist").glob("leafnet-*.whl")
    (root / "wheel.txt").write_text("\n".join(zipfile.ZipFile(wheel).namelist()))
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return target


def run(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_wheel_holds_every_module_and_config_and_its_script_answers(
    installed: Path, tmp_path: Path
) -> None:
    files = set((installed.parent / "wheel.txt").read_text().splitlines())
    sources = {
        str(p.relative_to(REPO))
        for pattern in ("*.py", "*.c", "*.h")
        for p in (REPO / "leafnet").rglob(pattern)
        if "__pycache__" not in p.parts
    }
    configs = {
        f"leafnet/conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*.yaml")
    }
    assert sources | configs <= files, sorted((sources | configs) - files)
    assert not [f for f in files if f.startswith(("tests/", "data/", "outputs/"))]
    where = run(installed, tmp_path, "-c", "import leafnet.config as c; print(c.CONFIG_DIR)")
    assert where.stdout.strip() == str(installed / "leafnet" / "conf"), where.stderr
    if kernels.compiler() is not None and os.name != "nt":  # the installed sources build
        built = "from leafnet import kernels; print(kernels.conv_pool() and kernels.pool_relu())"
        assert "PoolReLU" in run(installed, tmp_path, "-c", built).stdout
    helped = run(installed, tmp_path, str(installed / "bin" / "leafnet"), "--help")
    assert helped.returncode == 0 and "import-keras" in helped.stdout, helped.stderr


@pytest.mark.slow  # trains and runs six commands from the installed wheel, ~40 s
def test_the_wheel_trains_and_predicts_elsewhere(
    installed: Path, tmp_path: Path, tiny_train_images: Path
) -> None:
    # The console script, as a user types it (its predict runs in the process below).
    trained = run(
        installed, tmp_path, str(installed / "bin" / "leafnet"), "train", "data=folder",
        f"data.dir={tiny_train_images}", "data.image_size=32", "epochs=1", "batch_size=8",
        "trainer=cpu", "hydra.run.dir=run",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()  # relative to the cwd

    # The other commands, from the installed package, in one process (each as its CLI runs it).
    others = f"""
import leafnet, sys
assert leafnet.__file__.startswith({str(installed)!r}), leafnet.__file__
from leafnet import evaluate, explain, export, predict, summary
from leafnet.lab import compare
predict.main(["ckpt=run", "input={tiny_train_images}", "out=preds.csv"])
evaluate.main(["ckpt=run", "data.dir={tiny_train_images}", "out=evaluation"])
export.main(["ckpt=run", "format=torchscript", "out=model.pt"])
explain.main(["ckpt=run", "input={next(tiny_train_images.rglob("*.jpg"))}", "out=explained"])
summary.main(["model=leafnet_gap"])
compare.main(["runs=run", "out=report"])
"""
    done = run(installed, tmp_path, "-c", others)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len((tmp_path / "preds.csv").read_text().splitlines()) == 37
    for name in (
        "evaluation/metrics.json",
        "model.pt",
        "explained/gradcam.png",
        "report/comparison.md",
    ):
        assert (tmp_path / name).is_file(), name
    assert "Total params: 5,683" in done.stdout


def test_a_base_install_trains_and_predicts_without_the_extras(
    tmp_path: Path, tiny_train_images: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """captum (explain), onnx and the trackers are extras: without them training still logs to
    TensorBoard, saying once what the missing figures need, and predict works."""
    from fixtures_runs import tiny_args

    from leafnet.config import command_config, compose
    from leafnet.evaluate import evaluate
    from leafnet.predict import predict
    from leafnet.train import train

    for extra in ("captum", "onnx", "onnxruntime", "mlflow", "fastapi", "timm"):
        monkeypatch.setitem(sys.modules, extra, None)  # import fails, find_spec says None
    run_dir = tmp_path / "run"
    with caplog.at_level("WARNING"):
        train(compose("train", tiny_args(tiny_train_images, tmp_path, "epochs=1")), run_dir)
    assert "pip install 'leafnet[explain]'" in caplog.text
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (
        len(predict(command_config("predict", [f"ckpt={run_dir}", f"input={tiny_train_images}"])))
        == 36
    )
    out = tmp_path / "evaluation"
    args = [f"ckpt={run_dir}", f"data.dir={tiny_train_images}", f"out={out}"]
    metrics = evaluate(command_config("evaluate", args))
    assert metrics["accuracy"] >= 0.5 and (out / "metrics.json").is_file()


def test_the_console_script_names_an_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    from leafnet.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["trian"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and "train" in err and "Traceback" not in err
