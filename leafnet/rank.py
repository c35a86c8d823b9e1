"""Which process of a run this is, from the variables its launcher set.

A run of several processes (`trainer=ddp`) starts them in one of three ways: Lightning starts
the others itself (they get LOCAL_RANK and NODE_RANK), `torchrun` starts all of them (RANK,
LOCAL_RANK, GROUP_RANK), or SLURM's `srun` does (SLURM_PROCID). Only the first process of the
run (every variable 0 or unset) claims the run directory and writes its config, log and summary.
"""

from __future__ import annotations

import os

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def is_rank0() -> bool:
    """Whether this process is the first of its run (a run of one process always is)."""
    return all(_number(name, 0) == 0 for name in RANK_VARIABLES)


def started_by_launcher() -> bool:
    """Whether `torchrun` or `srun` started this process as one of several (each process then
    composes its own config, so all must be given the same `hydra.run.dir`)."""
    return max(_number("WORLD_SIZE", 1), _number("SLURM_STEP_NUM_TASKS", 1)) > 1


def _number(name: str, default: int) -> int:
    """An integer variable; unset, empty or not a number (a launcher's, not the user's): default."""
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else default
