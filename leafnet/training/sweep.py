"""A sweep's shared split (`python -m leafnet.train -m ...`, experiment=lr_study).

`SharedSplit`, a Hydra callback for studies: before the first job it writes one `split.csv` into
the sweep directory, which every job reads through `data.split_file`, so all runs train and
validate on the same images. (The end-of-sweep table is `leafnet.lab.compare.SweepReport`.)
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)

SPLIT_FILE = "split.csv"


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
