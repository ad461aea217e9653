"""The one exception type users see.

Every error vtwcli raises on purpose is a :class:`VtwError`: a single line that says what went wrong,
where, and what to do. The CLI prints it without a traceback (unless ``--debug``) and exits with
``exit_code`` (2 = bad input, 1 = a check or gate failed).
"""

from __future__ import annotations

import sys


class VtwError(Exception):
    """A user-facing error: one line, what + where + what to do."""

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None):
        # Keep it one line whatever the caller formatted: CI logs grep for it.
        super().__init__(" ".join(str(message).split()))
        if exit_code is not None:
            self.exit_code = exit_code


class UnsupportedError(VtwError, ValueError):
    """The model or the call asks for something withdrawal cannot do exactly (refused, never approximated)."""


class CheckFailed(VtwError):
    """A consistency check or a CI gate failed (exit code 1, not bad input)."""

    exit_code = 1


def is_out_of_memory(error: BaseException) -> bool:
    """MemoryError, torch's CPU allocator failing, or torch's (CUDA/MPS) out-of-memory error; torch is only looked at
    if already imported."""
    if isinstance(error, MemoryError):
        return True
    if isinstance(error, RuntimeError) and "can't allocate memory" in str(error):  # torch's CPU allocator
        return True
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch is not None else None
    return isinstance(oom, type) and isinstance(error, oom)


def error_text(error: BaseException) -> str:
    """``Type: message`` of an exception, on one line (the message cut at 200 characters): the cause quoted in
    a one-line error."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__
