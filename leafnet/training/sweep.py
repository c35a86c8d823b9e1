"""Hydra callbacks of a sweep (`python -m leafnet.train -m ...`, experiment=lr_study).

- `SharedSplit`, for studies: before the first job it writes one `split.csv` into the sweep
  directory, which every job reads through `data.split_file`, so all runs train and validate on
  the same images.
- `SweepTable`, for every sweep (conf/hydra/default.yaml): when the last job ends it prints one
  line per run (optimizer, lr, status, best val accuracy, final val loss, epochs, time) and saves
  it as `<sweep dir>/sweep_table.txt`. (The study's figures are `leafnet.lab.compare`'s.)
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from leafnet.errors import LeafnetError
from leafnet.files import write_text
from leafnet.records import load_runs, run_table

log = logging.getLogger(__name__)

SPLIT_FILE = "split.csv"
SWEEP_TABLE = "sweep_table.txt"


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


class SweepTable(Callback):
    """At the end of a multirun: print and save the sweep table."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            runs = load_runs([sweep_dir])
        except LeafnetError as err:  # e.g. every job failed before Hydra wrote its config
            log.warning("sweep table: %s", err)
            return
        table = run_table(runs)
        write_text(sweep_dir / SWEEP_TABLE, table + "\n")
        print(f"\nleafnet sweep: {len(runs)} runs in {sweep_dir}\n{table}", flush=True)
        for run in runs:
            if run.status != "completed" and run.summary.get("error"):
                print(f"  {run.path.name}: {run.status}: {run.summary['error']}", flush=True)
