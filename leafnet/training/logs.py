"""A run's log lines: to the console and to `<run dir>/train.log`, in Hydra's format.

leafnet sets up these two handlers itself instead of Hydra's job logging, which configures
logging with `logging.config.dictConfig` and so closes every handler already in the process (a
notebook's, a test runner's) before adding its own.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


class _Console(logging.StreamHandler):
    """The console handler `to_console` adds (a class of its own, so it is added once)."""


def to_console() -> None:
    """Log INFO and above to standard output, once per process (the command's entry point and
    each sweep job call it; a job may run in a worker process of its own)."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not any(isinstance(h, _Console) for h in root.handlers):
        handler = _Console(sys.stdout)
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)


@contextlib.contextmanager
def to_file(path: Path) -> Iterator[None]:
    """Log INFO and above to `path` (appended: a resumed run continues its train.log) while the
    block runs."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
