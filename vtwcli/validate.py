"""Option checks shared by the commands, run before any model loads."""

from __future__ import annotations

import math

from vtwcli.errors import VtwError

SEED_LIMIT = 2 ** 32  # numpy's and torch's generators both take 0 .. 2**32 - 1 everywhere


def check_seed(seed: int, option: str = "--seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise VtwError(f"{option} {seed}: use an integer in 0..{SEED_LIMIT - 1}")
    return seed


def check_frames(frames: int | None, videos: int) -> int:
    """``--videos`` (0 or more) and ``--frames`` (None: the default): 1..MAX_VIDEO_FRAMES frames per video, and only
    with ``--videos``."""
    from vtwcli.defaults import DEFAULT_VIDEO_FRAMES, MAX_VIDEO_FRAMES

    if videos < 0:
        raise VtwError(f"--videos {videos}: use 0 or more videos")
    if frames is None:
        return DEFAULT_VIDEO_FRAMES
    if not videos:
        raise VtwError(f"--frames {frames}: the synthetic prompt has no video; add --videos N or drop --frames")
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_VIDEO_FRAMES:
        raise VtwError(f"--frames {frames}: use 1..{MAX_VIDEO_FRAMES} frames per video (each synthetic frame is "
                       "held in memory)")
    return frames


def check_finite(value: float, option: str, *, minimum: float = 0.0) -> float:
    """A finite number >= ``minimum`` (NaN and inf are refused, not silently ignored)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < minimum:
        raise VtwError(f"{option} must be a finite number >= {minimum:g}, got {value}")
    return value


def check_calibration_options(options) -> None:
    """The values of a :class:`vtwcli.calibration.CalibrationOptions` that need no model to check."""
    from vtwcli.adapters import validate_kinds
    from vtwcli.calibration import CRITERIA, DIRECTIONS
    from vtwcli.selection import parse_rule

    check_finite(options.threshold, "--threshold")
    if options.min_layer < 1:
        raise VtwError(f"--min-layer {options.min_layer}: the first candidate layer is 1 or more")
    if options.criterion not in CRITERIA:
        raise VtwError(f"--criterion {options.criterion!r} is unknown; use {' or '.join(CRITERIA)}")
    if options.direction not in DIRECTIONS:
        raise VtwError(f"--direction {options.direction!r} is unknown; use {' or '.join(DIRECTIONS)}")
    if options.batch_size < 1:
        raise VtwError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.evaluate and options.max_new_tokens < 1:
        raise VtwError(f"--max-new-tokens must be at least 1, got {options.max_new_tokens} (or pass --no-eval)")
    check_seed(options.seed)
    if options.kinds is not None:
        validate_kinds(options.kinds)
    parse_rule(options.select)
    if options.auto is not None:
        options.auto.validate()
