"""SIGTERM handled like Ctrl-C, so a CI runner's kill stops long work cleanly (checkpoint kept)."""

from __future__ import annotations

import contextlib
import signal


@contextlib.contextmanager
def stop_on_signals():
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
