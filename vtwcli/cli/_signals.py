"""SIGINT and SIGTERM stop long work cleanly (checkpoint kept) and the error says which one it was."""

from __future__ import annotations

import contextlib
import signal

_received: list[str] = []


def signal_name() -> str:
    """'SIGTERM' or 'Ctrl-C (SIGINT)': the last signal that stopped the command."""
    return _received[-1] if _received else "Ctrl-C (SIGINT)"


@contextlib.contextmanager
def stop_on_signals():
    """Inside: SIGTERM (a CI runner's kill) raises KeyboardInterrupt like Ctrl-C does; both are recorded."""
    def interrupt(signum, frame):
        _received.append("SIGTERM" if signum == signal.SIGTERM else "Ctrl-C (SIGINT)")
        raise KeyboardInterrupt

    try:
        previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
        for number, handler in previous.items():
            if handler is not signal.SIG_IGN:  # a background job that ignores Ctrl-C keeps ignoring it
                signal.signal(number, interrupt)
    except ValueError:  # not the main thread (an embedding caller): leave signals alone
        yield
        return
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
