"""SIGINT and SIGTERM stop long work cleanly (checkpoint kept) and the error says which one it was."""

from __future__ import annotations

import contextlib
import signal
import sys

_received: list[str] = []


def signal_name() -> str:
    """'SIGTERM' or 'Ctrl-C (SIGINT)': the last signal that stopped the command."""
    return _received[-1] if _received else "Ctrl-C (SIGINT)"


def interrupted_message() -> str:
    return (f"interrupted by {signal_name()} before the command finished; no output was written half-way (files are "
            "written whole or not at all)")


@contextlib.contextmanager
def stop_while_starting():
    """Inside (the CLI importing its modules, a third of a second): Ctrl-C or SIGTERM ends the process with the
    line `vtw` prints for an interrupt later on (exit 130), not an import traceback."""
    def stop(signum, frame):
        _received.append("SIGTERM" if signum == signal.SIGTERM else "Ctrl-C (SIGINT)")
        sys.stderr.write(f"error: {interrupted_message()}\n")
        raise SystemExit(130)

    with _handled(stop):
        yield


@contextlib.contextmanager
def _handled(handler):
    """SIGTERM and SIGINT go to ``handler`` inside, where they are not ignored (a background job that ignores
    Ctrl-C keeps ignoring it) and this is the main thread (else signals are left alone); restored after."""
    try:
        previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
        for number, old in previous.items():
            if old is not signal.SIG_IGN:
                signal.signal(number, handler)
    except ValueError:  # not the main thread (an embedding caller): leave signals alone
        yield
        return
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


@contextlib.contextmanager
def stop_on_signals():
    """Inside: SIGTERM (a CI runner's kill) raises KeyboardInterrupt like Ctrl-C does; both are recorded."""
    def interrupt(signum, frame):
        _received.append("SIGTERM" if signum == signal.SIGTERM else "Ctrl-C (SIGINT)")
        raise KeyboardInterrupt

    with _handled(interrupt):
        yield
