"""Defaults shared by the library and the CLI's option declarations (importing this loads no torch)."""

DEFAULT_THRESHOLD = 0.003  # the reference implementation's eta for LLaVA-1.5-7B
DEFAULT_TEXT_TOKENS = 64  # text tokens of `vtw profile`'s synthetic prompt (576 image tokens + 64 for LLaVA-1.5)
DEFAULT_VIDEO_FRAMES = 4  # frames of each synthetic video (`--frames`): two temporal patches for Qwen2-VL
# Frame rate of the synthetic videos' timestamps where the video processor names no sampling rate of its own
# (`fps`: 2 for Qwen3-VL, GLM-4V): the frames arrive as sampled at that rate (vtwcli.measure.config_video)
DEFAULT_VIDEO_FPS = 2
MAX_VIDEO_FRAMES = 2048   # the most any transformers video processor samples (GLM-5 Next's max_frames)


def default_threads() -> int:
    """torch threads when --threads is not given: half the CPU cores (at least 1). torch's own default (every
    core) makes each forward wait for OpenMP peers that other processes deschedule on a shared machine
    (a 7 s calibration took 37-67 s); half leaves room for them and for the rest of this process."""
    import os

    return max(1, (os.cpu_count() or 2) // 2)


MAX_THREADS = 1024  # torch would try to start that many OpenMP threads (and overflows past 2**63)


def check_threads(threads: int | None, option: str = "--threads") -> None:
    """Refuse a thread count torch cannot use: below 1, or above MAX_THREADS."""
    from vtwcli.errors import VtwError

    if threads is not None and threads < 1:
        raise VtwError(f"{option} {threads}: use 1 or more")
    if threads is not None and threads > MAX_THREADS:
        raise VtwError(f"{option} {threads}: at most {MAX_THREADS}; use the CPU cores or fewer")


# `vtw profile`'s latency plan (vtwcli.measure.latency.LatencyPlan)
DEFAULT_MIN_PAIRS = 6          # the fewest pairs with a 95% interval of the median: P(Binomial(6, 1/2) = 0) = 1/64
DEFAULT_MAX_TIME_S = 60.0      # the time budget of the timed pairs
DEFAULT_CI_TARGET = 0.03       # stop once every speedup's 95% interval is within +-3% of its median
