"""leafnet.lab.compare on run directories fabricated per the contract (docs/architecture.md).

The end-to-end path (a real multirun, then compare on its output) is in tests/test_sweep.py.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from fixtures_cli import run_error

from leafnet.errors import LeafnetError
from leafnet.lab.compare import compare, main
from leafnet.lab.curves import wide_range
from leafnet.records import group_settings, load_runs
from leafnet.runs import find_run_dirs

COLUMNS = "epoch,step,train_loss,train_acc,val_loss,val_acc,lr,epoch_time_s,images_per_s"


def fake_run(
    root: Path,
    name: str,
    optimizer: str,
    lr: float,
    losses: list[float],
    seed: int = 42,
    status: str | None = "completed",
    extra_overrides: tuple[str, ...] = (),
    cut_last_line: bool = False,
) -> Path:
    """A run directory as train.py writes it: .hydra/, metrics.csv and (unless status None) summary.json."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    overrides = [f"optimizer={optimizer}", f"lr={lr}", f"seed={seed}", *extra_overrides]
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run / ".hydra" / "config.yaml").write_text(
        f"lr: {lr}\nseed: {seed}\noptimizer:\n  name: {optimizer}\n"
    )
    lines = [COLUMNS]
    for i, loss in enumerate(losses, start=1):
        acc = 0.0 if math.isnan(loss) else max(0.0, 1.0 - loss / 2)
        lines.append(f"{i},{i * 3},{loss * 1.1},{acc},{loss},{acc},{lr},2.0,50.0")
    text = "\n".join(lines) + "\n"
    if cut_last_line:  # a row still being written when compare reads the file
        text = text[: text.rindex(",")]
    (run / "metrics.csv").write_text(text)
    if status is not None:
        finite = [v for v in losses if math.isfinite(v)]
        summary = {
            "status": status,
            "optimizer": optimizer,
            "lr": lr,
            "batch_size": 256,
            "image_size": 96,
            "epochs_completed": len(losses),
            "best_val_acc": max(1.0 - v / 2 for v in finite) if finite else None,
            "best_epoch": 1,
            "final_val_loss": losses[-1] if math.isfinite(losses[-1]) else None,
            "final_train_loss": None,
            "test_acc": None,
            "test_f1_macro": None,
            "wall_time_s": 2.0 * len(losses),
            "images_per_s": 50.0,
            "peak_rss_gb": 1.0,
            "diverged_at": {"epoch": len(losses), "step": 3 * len(losses)}
            if status == "diverged"
            else None,
            "overrides": overrides,
        }
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def study_sweep(root: Path) -> Path:
    """12 runs like the lr study: SGD at 0.1 diverges, Adam at 0.001 is still running."""
    sweep = root / "multiruns" / "2025-01-01_00-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    num = 0
    for opt in ("sgd", "rmsprop", "adagrad", "adam"):
        for k, lr in enumerate((0.1, 0.01, 0.001)):
            start = 1.1 + 0.1 * k
            losses = [start / (1 + 0.3 * e * (k + 1)) for e in range(6)]
            status: str | None = "completed"
            cut = False
            if opt == "sgd" and lr == 0.1:
                losses, status = [1.1, 40.0, 9.0e5, math.nan], "diverged"
            if opt == "adam" and lr == 0.001:
                losses, status, cut = losses[:4], None, True
            fake_run(
                sweep,
                f"{num}_lr={lr},optimizer={opt}",
                opt,
                lr,
                losses,
                status=status,
                cut_last_line=cut,
            )
            num += 1
    return sweep


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_compare_writes_figures_and_tables_for_a_study(tmp_path: Path) -> None:
    sweep = study_sweep(tmp_path)
    files = compare([sweep])
    for kind in ("loss", "accuracy", "markdown", "csv"):
        assert files[kind].parent == sweep and files[kind].stat().st_size > 0
    assert files["loss"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_csv(files["csv"])
    assert len(rows) == 12
    # The seed's order: SGD, RMSprop, Adagrad, Adam, each lr 0.1 -> 0.001.
    assert [r["optimizer"] for r in rows[::3]] == ["sgd", "rmsprop", "adagrad", "adam"]
    assert [r["lr"] for r in rows[:3]] == ["0.1", "0.01", "0.001"]
    by_key = {(r["optimizer"], r["lr"]): r for r in rows}
    assert by_key["sgd", "0.1"]["status"] == "diverged"
    running = by_key["adam", "0.001"]
    # No summary.json: the rows written so far (the half-written 4th row dropped).
    assert running["status"] == "running" and running["epochs"] == "3"
    # Best per optimizer: exactly one each, the highest best val acc (lower loss -> higher acc).
    for opt in ("sgd", "rmsprop", "adagrad", "adam"):
        mine = [r for r in rows if r["optimizer"] == opt]
        best = [r for r in mine if r["best_for_optimizer"] == "yes"]
        assert len(best) == 1
        assert float(best[0]["best_val_acc"]) == max(float(r["best_val_acc"]) for r in mine)
    md = files["markdown"].read_text()
    assert md.count("★") == 4 + 1  # one per optimizer, plus the legend line
    assert "| sgd | 0.1 | diverged |" in md


def test_seeds_are_grouped_into_one_setting_with_mean_and_std(tmp_path: Path) -> None:
    root = tmp_path / "seeds"
    for seed, shift in ((0, 0.0), (1, 0.2), (2, 0.4)):
        fake_run(root, f"{seed}_seed={seed}", "adam", 0.01, [1.0 + shift, 0.5 + shift], seed=seed)
    fake_run(root, "3_seed=0,lr=0.1", "adam", 0.1, [1.0, 0.9], seed=0)
    settings = group_settings(load_runs([root]))
    assert [len(s.runs) for s in settings] == [1, 3]  # lr 0.1 first, then 0.01 over 3 seeds
    three = settings[1]
    assert three.mean("best_val_acc") == pytest.approx(1.0 - 0.7 / 2)
    assert three.std("best_val_acc") == pytest.approx(0.1)
    files = compare([root], tmp_path / "report")
    row = next(r for r in read_csv(files["csv"]) if r["lr"] == "0.01")
    assert row["runs"] == "3" and float(row["best_val_acc_std"]) == pytest.approx(0.1, abs=1e-4)
    assert "± 0.1000" in files["markdown"].read_text()


def test_several_run_dirs_and_a_varying_override(tmp_path: Path) -> None:
    a = fake_run(
        tmp_path / "x", "run_a", "sgd", 0.01, [1.0, 0.8], extra_overrides=("batch_size=32",)
    )
    b = fake_run(
        tmp_path / "y", "run_b", "sgd", 0.01, [1.0, 0.7], extra_overrides=("batch_size=64",)
    )
    settings = group_settings(load_runs([a, b]))
    # Same optimizer and lr but a different batch size: two settings, labelled by what differs.
    assert sorted(s.label for s in settings) == ["lr=0.01,batch_size=32", "lr=0.01,batch_size=64"]
    files = compare([a, b])
    assert files["csv"].parent == tmp_path  # the common parent


def test_wide_range_picks_log_scale() -> None:
    assert wide_range([0.5, 1.1, 9.0e5])
    assert not wide_range([0.5, 1.1, 0.9])
    assert not wide_range([])


def test_missing_directory_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(LeafnetError, match="is not a directory"):
        find_run_dirs([tmp_path / "nope"])
    with pytest.raises(LeafnetError, match="no runs under"):
        compare([tmp_path])
    assert "is not a directory" in run_error(capsys, [f"runs={tmp_path / 'nope'}"], main)


def test_cli_writes_into_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = study_sweep(tmp_path)
    main([f"runs={sweep}", f"out={tmp_path / 'report'}"])
    out = capsys.readouterr().out
    assert "| optimizer | lr |" in out and "wrote" in out
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "accuracy.png",
        "comparison.csv",
        "comparison.md",
        "comparison.png",
    ]


def test_a_report_never_replaces_a_users_file_unless_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = study_sweep(tmp_path)
    report = tmp_path / "thesis"
    report.mkdir()
    (report / "comparison.md").write_text("my chapter\n")
    err = run_error(capsys, [f"runs={sweep}", f"out={report}"], main)
    assert "comparison.md exists; add overwrite=true" in err
    assert sorted(p.name for p in report.iterdir()) == ["comparison.md"]  # nothing else written
    assert (report / "comparison.md").read_text() == "my chapter\n"
    main([f"runs={sweep}", f"out={report}", "overwrite=true"])
    assert "| sgd |" in (report / "comparison.md").read_text()


def test_failed_and_empty_runs_are_left_out_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    fake_run(runs, "good", "adam", 0.001, [1.0, 0.8, 0.6])
    empty = fake_run(runs, "no_epoch", "adam", 0.01, [1.0], status="interrupted")
    (empty / "metrics.csv").write_text(COLUMNS + "\n")  # stopped before its first epoch ended
    fake_run(runs, "broke", "sgd", 0.1, [1.0], status="failed")
    main([f"runs={runs}", f"out={tmp_path / 'a'}"])
    captured = capsys.readouterr()
    assert "left out 2 failed or empty run(s) (all_runs=true shows them)" in captured.err
    assert "sgd" not in captured.out
    main([f"runs={runs}", f"out={tmp_path / 'b'}", "all_runs=true"])
    assert "| sgd |" in capsys.readouterr().out


def test_a_summary_holding_infinity_is_read_as_missing_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    odd = fake_run(runs, "odd", "adam", 0.001, [1.0, 0.5])
    fake_run(runs, "b", "sgd", 0.01, [1.0, 0.7])
    summary = json.loads((odd / "summary.json").read_text())
    summary.update(epochs_completed=float("inf"), best_val_acc=float("nan"))
    (odd / "summary.json").write_text(json.dumps(summary))  # Infinity, NaN: not JSON
    main([f"runs={runs}", f"out={tmp_path / 'out'}"])
    assert "| adam |" in capsys.readouterr().out
