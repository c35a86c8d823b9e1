"""Sweeps end to end: `leafnet.train -m ...` (in this process) on tiny images (32 px,
1-2 epochs), the sweep table, experiment=lr_study, the joblib launcher and the Optuna sweeper."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from fixtures_runs import REPO, tiny_args, train_cli, train_main

from leafnet.config import CONFIG_DIR
from leafnet.lab.compare import main as compare_main
from leafnet.perf import job_threads, launcher_jobs


def sweep_args(images: Path, out: Path, *extra: str) -> list[str]:
    """A quick CPU sweep on `images` (tiny_args: 32 px, batch 8) for one epoch; lr is swept."""
    base = [a for a in tiny_args(images, out) if not a.startswith(("lr=", "epochs="))]
    return [*base, "trainer.enable_progress_bar=false", "~callbacks.val_images", "epochs=1", *extra]


def only_sweep_dir(out: Path) -> Path:
    dirs = list((out / "multiruns").iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def run_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()), key=lambda p: p.name)


def summaries(sweep: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / "summary.json").read_text()) for p in run_dirs(sweep)}


@pytest.mark.slow  # a second sweep; the study test below covers the default suite's needs
def test_two_by_two_sweep_prints_the_table_and_compare_reads_it(
    tiny_train_images: Path, tmp_path: Path
) -> None:
    result = train_cli(
        "-m", "optimizer=sgd,adam", "lr=0.01,0.001", *sweep_args(tiny_train_images, tmp_path)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = only_sweep_dir(tmp_path)
    names = [p.name for p in run_dirs(sweep)]
    assert len(names) == 4
    # Readable sub-directories: job number, then the overrides that made the run.
    assert names[0].startswith("0_") and "lr=0.01" in names[0] and "optimizer=sgd" in names[0]
    assert names[3].startswith("3_") and "lr=0.001" in names[3] and "optimizer=adam" in names[3]
    assert {s["status"] for s in summaries(sweep).values()} == {"completed"}

    table = (sweep / "sweep_table.txt").read_text()
    assert table in result.stdout + result.stderr  # printed at the end, and saved
    header, _, *rows = table.splitlines()
    for column in ("optimizer", "lr", "status", "best val acc", "final val loss", "epochs", "time"):
        assert column in header
    assert [r.split()[1:4] for r in rows] == [
        ["sgd", "0.01", "completed"],
        ["sgd", "0.001", "completed"],
        ["adam", "0.01", "completed"],
        ["adam", "0.001", "completed"],
    ]

    report = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "leafnet.lab.compare", f"runs={sweep}", f"out={report}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("comparison.png", "accuracy.png", "comparison.md", "comparison.csv"):
        assert (report / name).stat().st_size > 0
    with (report / "comparison.csv").open(newline="") as fh:
        rows_csv = list(csv.DictReader(fh))
    assert len(rows_csv) == 4
    assert sorted(r["optimizer"] for r in rows_csv if r["best_for_optimizer"] == "yes") == [
        "adam",
        "sgd",
    ]


def test_lr_study_with_a_diverging_run_shares_one_split_and_writes_the_report(
    tiny_train_images: Path, tmp_path: Path
) -> None:
    # experiment=lr_study is a sweep by itself; the command line narrows it to 3 runs: SGD at
    # lr=1e3 diverges, lr=-1 fails (a bad value), lr=0.01 completes: the sweep goes on past both.
    result = train_main(
        "experiment=lr_study",
        "optimizer=sgd",
        "lr=1e3,-1,0.01",
        *sweep_args(
            tiny_train_images, tmp_path, "epochs=2", "callbacks.divergence.check_every_n_steps=1"
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = only_sweep_dir(tmp_path)
    by_lr = {s["lr"]: s for s in summaries(sweep).values()}
    assert by_lr[1000.0]["diverged_at"] is not None
    assert by_lr[-1]["status"] == "failed" and "lr=-1" in by_lr[-1]["error"]
    assert by_lr[0.01]["status"] == "completed" and by_lr[0.01]["epochs_completed"] == 2
    # Sub-directories named by job number and the swept values only (data.dir is left out).
    names = [run.name for run in run_dirs(sweep)]
    assert [n.split("_")[0] for n in names] == ["0", "1", "2"]
    assert all("optimizer=sgd" in n and "data.dir" not in n for n in names)
    table = (sweep / "sweep_table.txt").read_text()
    assert table in result.stdout + result.stderr  # printed at the end, and saved
    header, _, *rows = table.splitlines()
    for column in ("optimizer", "lr", "status", "best val acc", "final val loss", "epochs", "time"):
        assert column in header
    assert [r.split()[1:4] for r in rows] == [
        ["sgd", "1000", "diverged"],
        ["sgd", "-1", "failed"],
        ["sgd", "0.01", "completed"],
    ]

    # One split for every run that read data, made before the first job and read by each.
    shared = (sweep / "split.csv").read_text()
    for run in (r for r in run_dirs(sweep) if "lr=-1" not in r.name):
        assert (run / "split.csv").read_text() == shared
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        assert config["epochs"] == 2 and config["seed"] == 7
    # The comparison report, made automatically at the end.
    for name in ("comparison.png", "accuracy.png", "comparison.md", "comparison.csv"):
        assert (sweep / name).stat().st_size > 0
    assert "| sgd | 1000 | diverged |" in (sweep / "comparison.md").read_text()
    # ... and again from the command, elsewhere.
    compare_main([f"runs={sweep}", f"out={tmp_path / 'report'}", "all_runs=true"])
    with (tmp_path / "report" / "comparison.csv").open(newline="") as fh:
        rows_csv = list(csv.DictReader(fh))
    by_status = {r["status"]: r for r in rows_csv}
    assert sorted(by_status) == ["completed", "diverged", "failed"]  # the failed one: asked for
    assert by_status["completed"]["best_for_optimizer"] == "yes"
    assert by_status["diverged"]["best_for_optimizer"] != "yes"

    # A study job resumes on its own split (its config's split file names the sweep directory).
    job = next(run for run in run_dirs(sweep) if "lr=0.01" in run.name)
    resumed = train_main(f"resume='{job}'", "epochs=3")  # quoted: the name holds = and ,
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((job / "summary.json").read_text())["epochs_completed"] == 3
    assert (job / "split.csv").read_text() == shared


@pytest.mark.slow  # two processes of parallel trials, ~25 s on 2 cores
def test_optuna_trials_run_in_parallel_on_the_joblib_launcher(
    tiny_train_images: Path, tmp_path: Path
) -> None:
    # One subprocess checks both plugins (each sweep pays ~10 s of imports per process): Optuna
    # asks 2 trials at once and joblib runs them as 2 parallel jobs, 1 torch thread each on 2 cores.
    assert version("optuna").startswith("2.")  # hydra-optuna-sweeper 1.3 needs optuna < 3
    result = train_cli(
        "hparams_search=optuna",
        "optimizer=sgd",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *sweep_args(tiny_train_images, tmp_path),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    assert "is launching 2 jobs" in result.stdout + result.stderr
    sweep = only_sweep_dir(tmp_path)
    done = summaries(sweep)
    assert len(done) == 2 and {s["status"] for s in done.values()} == {"completed"}
    for run in run_dirs(sweep):
        assert "parallel sweep: 2 jobs at once" in (run / "train.log").read_text()
    # Optuna searched lr on its log-scale interval and kept the best validation accuracy.
    found = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert found["name"] == "optuna"
    assert 1e-5 <= found["best_params"]["lr"] <= 1.0
    assert found["best_value"] == pytest.approx(max(s["best_val_acc"] for s in done.values()))
    assert sorted(s["lr"] for s in done.values()) == sorted(
        float(run.name.split("lr=")[1].split(",")[0]) for run in run_dirs(sweep)
    )


def test_threads_per_job() -> None:
    assert job_threads(2, 2) == 1
    assert job_threads(16, 4) == 4
    assert job_threads(2, 8) == 1  # never zero
    assert job_threads(2, None) is None
    assert launcher_jobs() is None  # outside a Hydra sweep: tune_process keeps its own choice


def _targets(node: object) -> list[str]:
    """Every `_target_` in a composed config, however deep."""
    if isinstance(node, dict):
        own = [str(node["_target_"])] if "_target_" in node else []
        return own + [t for v in node.values() for t in _targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


@pytest.mark.parametrize(
    "overrides", [["experiment=lr_study"], ["hydra/launcher=slurm"], ["hparams_search=optuna"]]
)
def test_every_class_a_sweep_config_names_exists(overrides: list[str]) -> None:
    """A renamed callback or launcher would fail a sweep only when it starts or ends."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides, return_hydra_config=True)
    targets = _targets(OmegaConf.to_container(cfg.hydra, resolve=False))
    assert any("sweep.SweepTable" in t for t in targets)
    for target in targets:
        assert isinstance(get_class(target), type), target
