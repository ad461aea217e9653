"""Progress for logs: when stderr is not a terminal (CI), a rich bar draws nothing until the end, so long
work prints a plain line every few seconds instead: what, how far, elapsed and ETA."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["PlainProgress", "EVERY_S", "duration"]

EVERY_S = 5.0  # seconds between two lines


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class PlainProgress:
    """Counts ``done`` of ``total`` for ``what``; :meth:`advance` writes a line when ``every`` seconds have
    passed since the last one (and always at the end). ``clock`` and ``write`` are injectable for tests."""

    def __init__(self, what: str, total: int | None, *, write: Callable[[str], None], every: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.write, self.every, self.clock = what, total, write, every, clock
        self.done = 0
        self.started = self.last = clock()

    def line(self, detail: str = "") -> str:
        elapsed = self.clock() - self.started
        if self.total:
            share = self.done / self.total
            eta = "" if self.done == 0 or self.done >= self.total else \
                f", ETA {duration(elapsed / self.done * (self.total - self.done))}"
            how_far = f"{self.done}/{self.total} ({share:.0%})"
        else:
            how_far, eta = f"{self.done}", ""
        return f"{self.what}: {how_far}{detail}, {duration(elapsed)} elapsed{eta}"

    def advance(self, n: int = 1, detail: str = "") -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.every or (self.total and self.done >= self.total):
            self.last = now
            self.write(self.line(detail))
