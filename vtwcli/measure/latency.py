"""Latency of prefill, decode and end-to-end generation, baseline and withdrawn, in ONE run, alternating.

What is timed (batch 1, greedy):

* ``prefill_ms``: the first forward of a greedy ``generate()`` of ``new_tokens`` tokens: the whole prompt
  (image + text) with the cache and ``logits_to_keep=1`` (the time to the first token's logits);
* ``decode_ms_per_token``: the other ``new_tokens - 1`` forwards of that ``generate()``, each one token
  against the cache with the positions generate() gives it; the run's figure is the mean step time;
* ``end_to_end_ms``: ``model.generate(min_new_tokens = max_new_tokens = new_tokens)``, greedy, timed as
  a whole (prefill + decoding + generate()'s own bookkeeping), as a user calls it.

A "run" of a variant is those three timings. After ``warmup`` untimed runs of each variant, runs come
in PAIRS (baseline then withdrawn, the next pair withdrawn then baseline, so neither always goes first),
and each pair gives one speedup per figure: a burst of outside load hits both runs of a pair alike, so
the ratio cancels most of it where the medians of each variant do not. The reported speedup is the
median of the per-pair speedups, with a distribution-free 95% confidence interval of that median
(:func:`median_ci`). Pairs repeat until there are ``min_runs`` of them and ``min_time_s`` have passed,
then until every figure's interval is within ``ci_target`` of its median (relative half-width) or the
``max_time_s`` budget is spent; figures still wider than the target, or a prefill speedup above what the
FLOPs saving allows, are flagged in ``latency.noise`` (:func:`noise_reasons`). The machine's load
average before and after is recorded beside them.

CUDA is timed with events and synchronised; CPU with ``time.perf_counter``. The withdrawal hooks are
attached before and removed after each withdrawn run, outside the timed regions.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from vtwcli.defaults import DEFAULT_CI_TARGET, DEFAULT_MAX_TIME_S, DEFAULT_MIN_PAIRS
from vtwcli.errors import VtwError
from vtwcli.loading import torch_threads
from vtwcli.measure.runs import VARIANTS, generate_exactly, variants
from vtwcli.profile.header import device_name
from vtwcli.profile.model import LATENCY_FIGURES, LatencyNoise, SpeedupInterval, TimingStats

__all__ = ["timing_stats", "summarize", "LatencyTracker", "measure_latency", "device_name", "median_ci",
           "pair_speedups", "speedup_interval", "relative_half_width", "noise_reasons", "overhead_notes", "LatencyPlan",
           "CONFIDENCE", "MIN_PAIRS_FOR_CI", "FLOPS_MARGIN"]

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



CONFIDENCE = 0.95
MAX_MIN_PAIRS = 10_000  # --min-runs is a floor that --max-time does not cut
FLOPS_MARGIN = 0.15   # a prefill speedup above the FLOPs ratio by more than this share is noise, not saving


def check_timing_options(*, new_tokens: int, plan: "LatencyPlan", threads: int | None) -> None:
    """The timing options, checked before the model loads (and again by measure_latency)."""
    if new_tokens < 2:
        raise VtwError(f"--new-tokens {new_tokens}: decode timing needs at least 2 new tokens")
    plan.check()
    from vtwcli.defaults import check_threads

    check_threads(threads)


def _order_rank(n: int, confidence: float = CONFIDENCE) -> int:
    """The largest k with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2; 0 when even k = 1 is too wide."""
    tail, k = 0.0, 0
    while k < n:
        tail += math.comb(n, k) / 2 ** n   # now P(B <= k) = P(B < k + 1)
        if tail > (1 - confidence) / 2:
            break
        k += 1
    return k


# the fewest pairs whose order statistics give a 95% interval of the median at all (P(B = 0) = 1/64 at n = 6)
MIN_PAIRS_FOR_CI = next(n for n in range(1, 64) if _order_rank(n) >= 1)


def median_ci(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """A distribution-free confidence interval of the median: the order statistics x_(k), x_(n-k+1) with the
    largest k whose binomial tail stays within (1 - confidence) / 2 (no assumption of normal timings; one
    wild pair moves it by one rank at most). None with too few values for any interval."""
    ordered = sorted(float(v) for v in values)
    k = _order_rank(len(ordered), confidence)
    if k < 1:
        return None
    return ordered[k - 1], ordered[len(ordered) - k]


def pair_speedups(baseline_ms: list[float], withdrawn_ms: list[float]) -> list[float]:
    """Baseline / withdrawn time of each pair (pairs with a zero withdrawn time are skipped)."""
    if len(baseline_ms) != len(withdrawn_ms):
        raise ValueError("baseline and withdrawn runs must come in pairs")
    return [b / w for b, w in zip(baseline_ms, withdrawn_ms) if w > 0]


def speedup_interval(ratios: list[float], confidence: float = CONFIDENCE) -> tuple[float, SpeedupInterval]:
    """(the median per-pair speedup, its interval: 95% CI of the median and p10..p90 of the pairs)."""
    spread = timing_stats(ratios)
    ci = median_ci(ratios, confidence)
    low, high = (None, None) if ci is None else (round(ci[0], 4), round(ci[1], 4))
    return round(statistics.median(ratios), 4), SpeedupInterval(low=low, high=high, p10=spread.p10, p90=spread.p90)


def relative_half_width(median: float, interval: SpeedupInterval) -> float:
    """Half the interval's width over the median (inf without an interval)."""
    if interval.low is None or interval.high is None or median <= 0:
        return math.inf
    return (interval.high - interval.low) / 2 / median


def _tight(figures: dict[str, tuple[float, SpeedupInterval]], target: float) -> bool:
    return all(relative_half_width(median, interval) <= target for median, interval in figures.values())


def noise_reasons(figures: dict[str, tuple[float, SpeedupInterval]], target: float, pairs: int,
                  flops_ratio: float | None) -> list[str]:
    """Why the figures are too noisy to use (empty: usable). ``figures``: ``{speedup key: (median, interval)}``."""
    reasons, labels = [], {speed: label for label, _, speed in LATENCY_FIGURES}
    for key, (median, interval) in figures.items():
        key = labels.get(key, key)
        width = relative_half_width(median, interval)
        if math.isinf(width):
            reasons.append(f"{key} speedup: {pairs} pair(s) are too few for a 95% interval (need "
                           f"{MIN_PAIRS_FOR_CI})")
        elif width > target:
            reasons.append(f"{key} speedup {median:.2f}x: 95% interval {interval.low:.2f}..{interval.high:.2f} "
                           f"(+-{width:.1%}) is wider than the target +-{target:.1%}")
    prefill = figures.get("prefill")
    if flops_ratio and prefill is not None and prefill[1].low is not None and \
            prefill[1].low > flops_ratio * (1 + FLOPS_MARGIN):
        reasons.append(f"prefill speedup {prefill[0]:.2f}x exceeds the FLOPs ratio {flops_ratio:.2f}x by more than "
                       f"{FLOPS_MARGIN:.0%}: more than the saved work explains")
    return reasons


def overhead_notes(figures: dict[str, tuple[float, SpeedupInterval]], baseline_ms: float, withdrawn_ms: float,
                   flops_ratio: float | None) -> list[str]:
    """Why withdrawal saves less time than work, or reads as a slowdown (a figure whose whole interval, p10..p90
    without one, lies below 1). For the prefill, what the FLOPs alone predict for the withdrawn run is
    baseline / FLOPs ratio (``baseline_ms``, ``withdrawn_ms``: prefill medians); the rest of the withdrawn time
    is a fixed cost per forward (hooks, gathers). It is named when the whole interval is below the FLOPs ratio
    and that cost is at least half the compute saved."""
    notes, labels = [], {speed: label for label, _, speed in LATENCY_FIGURES}
    for key, (speedup, interval) in figures.items():
        high = interval.high if interval.high is not None else interval.p90
        if key == "prefill" and flops_ratio and flops_ratio > 1:
            predicted = baseline_ms / flops_ratio
            fixed, saved = withdrawn_ms - predicted, baseline_ms - predicted
            if high >= flops_ratio or (high >= 1 and fixed < saved / 2):
                continue
            verdict = (f"withdrawn prefill is slower ({speedup:.2f}x) although it computes {flops_ratio:.2f}x fewer "
                       "FLOPs" if high < 1 else
                       f"prefill speedup {speedup:.2f}x stays below the FLOPs ratio {flops_ratio:.2f}x")
            notes.append(f"{verdict}: it takes {withdrawn_ms:.2f} ms where the FLOPs predict {predicted:.2f} ms, so "
                         f"about {fixed:.2f} ms a forward is not compute but the hooks' fixed cost (plus noise where "
                         f"the figures are flagged noisy), against {saved:.2f} ms of compute saved on this model; "
                         "on a model whose prefill takes longer the saving dominates")
        elif high < 1:
            notes.append(f"withdrawn {labels.get(key, key)} is slower ({speedup:.2f}x): on this model the hooks' "
                         "fixed cost per forward exceeds the compute withdrawal saves; on a model whose forwards "
                         "take longer the saving dominates")
    return notes


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # not on every OS
        return None


@dataclasses.dataclass(frozen=True)
class LatencyPlan:
    """How long to time: at least ``min_runs`` pairs and ``min_time_s`` seconds, then until every speedup's
    95% interval is within ``ci_target`` (relative half-width) or ``max_time_s`` is spent."""

    warmup: int = 1
    min_runs: int = DEFAULT_MIN_PAIRS
    min_time_s: float = 2.0
    max_time_s: float = DEFAULT_MAX_TIME_S
    ci_target: float = DEFAULT_CI_TARGET

    def check(self) -> None:
        if self.min_runs < 1 or self.warmup < 0 or not math.isfinite(self.min_time_s) or self.min_time_s < 0:
            raise VtwError(f"--min-runs must be >= 1, --warmup and --min-time finite and >= 0 (got --min-runs "
                           f"{self.min_runs}, --warmup {self.warmup}, --min-time {self.min_time_s})")
        if self.min_runs > MAX_MIN_PAIRS:  # a floor --max-time does not cut: 1e20 pairs would never end
            raise VtwError(f"--min-runs {self.min_runs}: at most {MAX_MIN_PAIRS} pairs; --ci-target and --max-time "
                           "decide how many more")
        if not math.isfinite(self.max_time_s):
            raise VtwError(f"--max-time {self.max_time_s}: the time budget must be a finite number of seconds")
        if self.max_time_s < self.min_time_s:
            raise VtwError(f"--max-time {self.max_time_s:g} is below --min-time {self.min_time_s:g}; raise --max-time")
        if not 0 < self.ci_target < 1:
            raise VtwError(f"--ci-target {self.ci_target:g}: use a fraction between 0 and 1 (0.03 = +-3%)")

    def done(self, pairs: int, elapsed: float, tight: Callable[[], bool]) -> bool:
        """Whether to stop after ``pairs`` pairs and ``elapsed`` seconds (``tight()``: the intervals are)."""
        if pairs < self.min_runs or elapsed < self.min_time_s:
            return False
        return elapsed >= self.max_time_s or tight()


def _figures(trackers: dict) -> dict[str, tuple[float, SpeedupInterval]]:
    base, new = trackers["baseline"].samples, trackers["withdrawn"].samples
    return {speed: speedup_interval(pair_speedups(base[key], new[key])) for _, key, speed in LATENCY_FIGURES}


def measure_latency(model: nn.Module, inputs: dict, layer: int, *, new_tokens: int = 8,
                    plan: LatencyPlan = LatencyPlan(), threads: int | None = None, flops_ratio: float | None = None,
                    kinds: tuple[str, ...] | None = None, progress: Callable[[dict], None] | None = None) -> dict:
    """The profile's ``latency`` block: pairs of baseline / withdrawn runs of ``inputs`` (batch 1) as ``plan`` says.

    ``kinds`` selects the withdrawn vision tokens as in :func:`vtwcli.withdraw` (default: all). ``inputs`` is
    the batch-1 model inputs on the model's device. ``threads`` sets ``torch.set_num_threads`` (CPU) for the
    measurement (None: :func:`vtwcli.defaults.default_threads`); the count in use is recorded. ``progress`` gets ``{pairs, seconds, max_time_s,
    half_width, ci_target}`` after each timed pair.
    """
    check_timing_options(new_tokens=new_tokens, plan=plan, threads=threads)
    if inputs["input_ids"].shape[0] != 1:
        raise VtwError("latency is measured at batch size 1")
    device = next(model.parameters()).device
    trackers = {variant: LatencyTracker(model, inputs, new_tokens, device) for variant in VARIANTS}

    def run_pair(record: bool, reverse: bool) -> None:  # both variants back to back, so drift hits both alike
        pair = list(variants(model, layer, kinds))
        for variant, withdrawn in reversed(pair) if reverse else pair:
            with withdrawn:
                trackers[variant].track(record=record)

    load_start = _load_average()
    with torch_threads(threads) as used_threads:
        for i in range(plan.warmup):
            run_pair(False, reverse=i % 2 == 1)
        start = time.perf_counter()
        while True:
            pairs = trackers["withdrawn"].runs
            run_pair(True, reverse=pairs % 2 == 1)
            elapsed = time.perf_counter() - start
            figures = _figures(trackers)
            if progress is not None:
                progress({"pairs": pairs + 1, "seconds": elapsed, "max_time_s": plan.max_time_s,
                          "ci_target": plan.ci_target,
                          "half_width": max(relative_half_width(*f) for f in figures.values())})
            if plan.done(pairs + 1, elapsed, lambda: _tight(figures, plan.ci_target)):
                break
    pairs = trackers["withdrawn"].runs
    reasons = noise_reasons(figures, plan.ci_target, pairs, flops_ratio)
    section = {"device": str(device), "device_name": device_name(device), "threads": used_threads,
               "new_tokens": new_tokens}
    for variant, tracker in trackers.items():
        section[variant] = {metric: dataclasses.asdict(stats) for metric, stats in tracker.result().items()}
    section["speedup"] = {speed: median for speed, (median, _) in figures.items()}
    section["speedup_interval"] = {speed: dataclasses.asdict(interval) for speed, (_, interval) in figures.items()}
    section["pairs"] = pairs
    noise = LatencyNoise(noisy=bool(reasons), reasons=tuple(reasons), ci_target=plan.ci_target,
                         max_time_s=plan.max_time_s, seconds=round(elapsed, 2), load_start=load_start,
                         load_end=_load_average(), cpus=os.cpu_count())
    section["noise"] = {**dataclasses.asdict(noise), "reasons": list(reasons)}
    section["flops_ratio"] = None if flops_ratio is None else float(flops_ratio)
    section["notes"] = overhead_notes(figures, section["baseline"]["prefill_ms"]["median"],
                                      section["withdrawn"]["prefill_ms"]["median"], flops_ratio)
    return section
