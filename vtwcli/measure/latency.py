"""Latency of prefill, decode and end-to-end generation, baseline and withdrawn, in ONE run, alternating.

What is timed (batch 1, greedy):

* ``prefill_ms``: the first forward of a greedy ``generate()`` of ``new_tokens`` tokens: the whole prompt
  (image + text) with the cache and ``logits_to_keep=1`` (the time to the first token's logits);
* ``decode_ms_per_token``: the other ``new_tokens - 1`` forwards of that ``generate()``, each one token
  against the cache with the positions generate() gives it; the run's figure is the mean step time;
* ``end_to_end_ms``: ``model.generate(min_new_tokens = max_new_tokens = new_tokens)``, greedy, timed as
  a whole (prefill + decoding + generate()'s own bookkeeping), as a user calls it.

A "run" of a variant is those three timings. Runs alternate baseline, withdrawn, baseline, ... after
``warmup`` untimed runs of each, until both variants have ``min_runs`` runs AND ``min_time_s`` seconds
have passed, so drifts of the machine (thermal, other jobs) hit both variants alike. CUDA is timed with
events and synchronised; CPU with ``time.perf_counter``. The withdrawal hooks are attached before and
removed after each withdrawn run, outside the timed regions.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

import torch
from torch import nn

from vtwcli.errors import VtwError
from vtwcli.measure.runs import VARIANTS, generate_exactly, variants
from vtwcli.profile.header import device_name
from vtwcli.profile.model import LATENCY_FIGURES, TimingStats

__all__ = ["timing_stats", "summarize", "LatencyTracker", "measure_latency", "device_name", "speedups"]

METRICS = tuple(key for _, key, _ in LATENCY_FIGURES)


def timing_stats(samples_ms: list[float]) -> TimingStats:
    """The profile's summary of a list of milliseconds (p10/p90: inclusive deciles; stdev: sample)."""
    values = [float(v) for v in samples_ms]
    if not values:
        raise ValueError("no samples to summarize")
    if len(values) == 1:
        p10 = p90 = values[0]
    else:
        deciles = statistics.quantiles(values, n=10, method="inclusive")
        p10, p90 = deciles[0], deciles[-1]
    return TimingStats(median=round(statistics.median(values), 4), p10=round(p10, 4), p90=round(p90, 4),
                       stdev=round(statistics.stdev(values), 4) if len(values) > 1 else 0.0, runs=len(values))


def summarize(samples_ms: list[float]) -> dict:
    """{median, p10, p90, stdev, runs} of a list of milliseconds, as the profile stores it."""
    return dataclasses.asdict(timing_stats(samples_ms))


class _Timer:
    """Milliseconds of a region: CUDA events on CUDA, perf_counter elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            self.ms = self._start.elapsed_time(self._end)
        else:
            self.ms = (time.perf_counter() - self._t0) * 1000.0


class LatencyTracker:
    """The timed runs of one variant (a tracker per quantity, as in optimum-benchmark): :meth:`track` times
    one run of ``inputs`` (prefill, decode steps, generate()); :meth:`result` summarises the recorded ones."""

    def __init__(self, model: nn.Module, inputs: dict, new_tokens: int, device: torch.device):
        self.model, self.inputs, self.new_tokens, self.device = model, inputs, new_tokens, device
        self.samples: dict[str, list[float]] = {metric: [] for metric in METRICS}

    @property
    def runs(self) -> int:
        return len(self.samples["prefill_ms"])

    def track(self, *, record: bool = True) -> None:
        timings = _one_run(self.model, self.inputs, self.new_tokens, self.device)
        if record:
            for metric, value in timings.items():
                self.samples[metric].append(value)

    def result(self) -> dict[str, TimingStats]:
        """``{metric: TimingStats}`` in the profile's key order."""
        return {metric: timing_stats(values) for metric, values in self.samples.items()}


@torch.no_grad()
def _one_run(model: nn.Module, inputs: dict, new_tokens: int, device: torch.device) -> dict:
    # Each forward of generate() timed whole, hooks included (the timer starts before any other pre-hook).
    forwards, running = [], []

    def start(module, args, kwargs):
        running.append(_Timer(device).__enter__())

    def stop(module, args, output):
        timer = running.pop()
        timer.__exit__()
        forwards.append(timer.ms)

    hooks = [model.register_forward_pre_hook(start, with_kwargs=True, prepend=True), model.register_forward_hook(stop)]
    try:
        generate_exactly(model, inputs, new_tokens)
    finally:
        for hook in hooks:
            hook.remove()
    prefill, steps = forwards[0], forwards[1:]
    with _Timer(device) as end_to_end:
        generate_exactly(model, inputs, new_tokens)
    return {"prefill_ms": prefill, "decode_ms_per_token": sum(steps) / len(steps), "end_to_end_ms": end_to_end.ms}


def speedups(baseline: dict, withdrawn: dict) -> dict:
    """baseline median / withdrawn median per metric."""
    return {name: baseline[m]["median"] / withdrawn[m]["median"] if withdrawn[m]["median"] else None
            for _, m, name in LATENCY_FIGURES}


def check_timing_options(*, new_tokens: int, warmup: int, min_runs: int, min_time_s: float,
                         threads: int | None) -> None:
    """The timing options, checked before the model loads (and again by measure_latency)."""
    if new_tokens < 2:
        raise VtwError(f"--new-tokens {new_tokens}: decode timing needs at least 2 new tokens")
    if min_runs < 1 or warmup < 0 or not math.isfinite(min_time_s) or min_time_s < 0:
        raise VtwError(f"--min-runs must be >= 1, --warmup and --min-time finite and >= 0 (got --min-runs {min_runs}, "
                       f"--warmup {warmup}, --min-time {min_time_s})")
    if threads is not None and threads < 1:
        raise VtwError(f"--threads {threads}: use 1 or more")


def measure_latency(model: nn.Module, inputs: dict, layer: int, *, new_tokens: int = 8, warmup: int = 1,
                    min_runs: int = 5, min_time_s: float = 2.0, threads: int | None = None,
                    flops_ratio: float | None = None, kinds: tuple[str, ...] | None = None) -> dict:
    """The profile's ``latency`` block: alternating baseline/withdrawn runs of ``inputs`` (batch 1).

    ``kinds`` selects the withdrawn vision tokens as in :func:`vtwcli.withdraw` (default: all).

    ``inputs`` is the batch-1 model inputs on the model's device (``input_ids``, pixels and whatever else the
    family's processor returns). ``threads`` sets
    ``torch.set_num_threads`` (CPU) for the measurement; the count in use is recorded either way.
    """
    check_timing_options(new_tokens=new_tokens, warmup=warmup, min_runs=min_runs, min_time_s=min_time_s,
                         threads=threads)
    if inputs["input_ids"].shape[0] != 1:
        raise VtwError("latency is measured at batch size 1")
    device = next(model.parameters()).device
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    trackers = {variant: LatencyTracker(model, inputs, new_tokens, device) for variant in VARIANTS}

    def run_both(record: bool) -> None:  # alternating, so drift (thermal, other load) hits both alike
        for variant, withdrawn in variants(model, layer, kinds):
            with withdrawn:
                trackers[variant].track(record=record)

    try:
        for _ in range(warmup):
            run_both(False)
        start = time.perf_counter()
        while trackers["withdrawn"].runs < min_runs or time.perf_counter() - start < min_time_s:
            run_both(True)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    section = {"device": str(device), "device_name": device_name(device), "threads": used_threads,
               "new_tokens": new_tokens}
    for variant, tracker in trackers.items():
        section[variant] = {metric: dataclasses.asdict(stats) for metric, stats in tracker.result().items()}
    section["speedup"] = speedups(section["baseline"], section["withdrawn"])
    section["flops_ratio"] = None if flops_ratio is None else float(flops_ratio)
    return section
