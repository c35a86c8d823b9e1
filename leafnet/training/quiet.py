"""A quiet console: leafnet's own lines and the progress bar, not third-party banners and warnings
that a user can do nothing about.

`quiet_third_parties()` drops Lightning's advertising tips and a few warnings about its internals
(a deprecated pytree call, a logging interval longer than a short epoch); everything else, every
error and every warning about the user's own settings, still shows.
"""

from __future__ import annotations

import logging
import warnings

_DROPPED = ("💡 Tip:",)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_DROPPED)


def quiet_third_parties() -> None:
    """Install the filters (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    # Lightning's own call of a torch API it has not updated yet: nothing to do for a user.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # A small set has fewer batches per epoch than the logging interval; leafnet logs per epoch.
    warnings.filterwarnings("ignore", message=r"The number of training batches .* logging interval")
