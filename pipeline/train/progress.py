"""What a training run prints: a progress bar only on a terminal, one summary line per epoch otherwise.

A bar redrawn into a file or a cluster job's log becomes one long line of carriage returns and
colour codes per refresh, so bars are drawn only when the driver's stderr is a terminal. Ray
Train workers never have a terminal of their own: the driver decides (:func:`bars_wanted`) and
passes its answer to the workers through :data:`BARS_ENV`.
"""
from __future__ import annotations

import os
import sys

BARS_ENV = "IMBALANCE_PROGRESS_BARS"   # "1": draw bars (the driver is on a terminal), "0": don't


def bars_wanted() -> bool:
    """True when bars should be drawn: :data:`BARS_ENV` if set (on a worker), else stderr is a tty."""
    env = os.environ.get(BARS_ENV)
    if env is not None:
        return env == "1"
    return sys.stderr.isatty()


class NoBar:
    """The tqdm calls the loop makes, doing nothing: the epoch's summary line says it all."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass
