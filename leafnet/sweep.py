"""Sweeps (`python -m leafnet.train -m ...`): the end-of-sweep table, a shared split, thread splits.

- `SweepReport`, a Hydra callback (conf/hydra/default.yaml): when a multirun ends it reads every
  job's `summary.json` / `metrics.csv`, prints one line per run (optimizer, lr, status, best val
  accuracy, final val loss, epochs, time), writes it to `<sweep dir>/sweep_table.txt` and, with
  `compare: true` (experiment=lr_study), writes the comparison report there too
  (`leafnet.lab.compare`).
- `SharedSplit`, a Hydra callback for studies: before the first job it writes one `split.csv` into
  the sweep directory, which every job reads through `data.split_file`, so all runs train and
  validate on the same images.
- `split_threads()`: called by `train()`; in a parallel sweep (hydra/launcher=joblib) each job gets
  `cpus // n_jobs` torch threads, so n_jobs jobs do not fight over the same cores.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from leafnet.errors import LeafnetError
from leafnet.lab.compare import load_runs, run_table, write_report

log = logging.getLogger(__name__)

SWEEP_TABLE = "sweep_table.txt"
SPLIT_FILE = "split.csv"


class SweepReport(Callback):
    """At the end of a multirun: print and save the sweep table; optionally the comparison."""

    def __init__(self, compare: bool = False) -> None:
        self.compare = compare

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            runs = load_runs([sweep_dir])
        except LeafnetError as err:  # e.g. every job failed before Hydra wrote its config
            log.warning("sweep report: %s", err)
            return
        table = run_table(runs)
        (sweep_dir / SWEEP_TABLE).write_text(table + "\n")
        print(f"\nleafnet sweep: {len(runs)} runs in {sweep_dir}\n{table}", flush=True)
        for run in runs:
            if run.status != "completed" and run.summary.get("error"):
                print(f"  {run.path.name}: {run.status}: {run.summary['error']}", flush=True)
        if not self.compare:
            return
        # The runs are done and saved: a failing figure must not turn the sweep into an error.
        try:
            files = write_report(runs, [sweep_dir], sweep_dir)
        except Exception:
            log.exception(
                "comparison report failed; run: python -m leafnet.lab.compare dirs=%s", sweep_dir
            )
            return
        print("comparison: " + ", ".join(str(p) for p in files.values()), flush=True)


class SharedSplit(Callback):
    """Before a multirun's first job: write `<sweep dir>/split.csv` from the sweep's data config.

    The experiment points every job at it with `data.split_file: ${hydra:sweep.dir}/split.csv`.
    The split is made exactly as a run makes its own (the same scan, skips and seeded stratified
    split), so it is what each job would have drawn, written once and read by all.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from leafnet.data.datamodule import LeafDataModule

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if (sweep_dir / SPLIT_FILE).is_file():
            return
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # The file being made is not read; the other keys resolve as in a job (paths.*).
        cfg = copy.deepcopy(config)
        with read_write(cfg), open_dict(cfg):
            cfg.data.split_file = None
        data = OmegaConf.to_container(cfg.data, resolve=True)
        assert isinstance(data, dict)
        datamodule = LeafDataModule(
            **data, batch_size=config.batch_size, seed=config.seed, run_dir=sweep_dir
        )
        datamodule.prepare_data()
        datamodule.setup("fit")
        log.info("shared split for every job: %s", sweep_dir / SPLIT_FILE)
