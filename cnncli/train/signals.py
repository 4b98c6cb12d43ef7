"""SIGINT/SIGTERM while training: record the signal, let the loop save and stop.

The handler only sets a flag (nothing else is safe inside a handler); the loop checks it
after every batch. A second signal means "now": the process exits at once with 128 + n.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager


class StopFlag:
    """The first stop signal received (``signum``), or None."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        self.signum = signum


@contextmanager
def stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM)):
    """Install flag-setting handlers for ``signals``; restore the previous ones on exit.

    Outside the main thread (where handlers cannot be installed) the flag never fires.
    """
    flag = StopFlag()

    def handler(signum, _frame):
        if flag.signum is not None:
            os._exit(128 + signum)
        flag.request(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for s in signals:
            previous[s] = signal.getsignal(s)
            signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
