"""Option checks shared by the commands, run before any model loads."""

from __future__ import annotations

import math

from vtwcli.errors import VtwError

SEED_LIMIT = 2 ** 32  # numpy's and torch's generators both take 0 .. 2**32 - 1 everywhere


def check_seed(seed: int, option: str = "--seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise VtwError(f"{option} {seed}: use an integer in 0..{SEED_LIMIT - 1}")
    return seed


def check_finite(value: float, option: str, *, minimum: float = 0.0) -> float:
    """A finite number >= ``minimum`` (NaN and inf are refused, not silently ignored)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < minimum:
        raise VtwError(f"{option} must be a finite number >= {minimum:g}, got {value}")
    return value
