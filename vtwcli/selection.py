"""How far to trust K: selection rules, the bootstrap distribution of K, warnings, accuracy intervals and
the stopping rule of ``--samples auto``.

Torch-free (numpy and the standard library only): ``vtw calibrate`` uses it on the KL it measured, and
``vtw check`` recomputes the same figures from a stored profile.

The K distribution. The samples are resampled with replacement *within each dataset* (a stratified
bootstrap: every resample keeps each dataset's sample count, so a mix of datasets stays the mix it was
calibrated on), the pooled mean KL per layer is recomputed, and the resample's K is the first layer whose
mean is <= the threshold (the ``mean`` rule). ``k_bootstrap`` maps each K (as text; ``"none"`` when no
layer qualifies) to the fraction of resamples that choose it. Seed semantics, fixed so that anyone can
recompute it: ``rng = numpy.random.default_rng(seed)``; for each resample in turn, for each dataset in the
order of its first appearance in the samples, ``rng.integers(0, n_d, size=n_d)`` picks its rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from vtwcli.errors import VtwError
from vtwcli.profile.model import first_layer_under

DEFAULT_RULE = "mean"
NO_LAYER = "none"  # k_bootstrap key of the resamples in which no layer meets the threshold
STABLE_SHARE = 0.9  # below this bootstrap share the chosen K is flagged as unstable
DEFAULT_AUTO_TARGET = 0.9
DEFAULT_AUTO_STEP = 5
ACCURACY_CONFIDENCE = 0.95
_TOL = 1e-9  # shares are count / resamples: compare sums of them with this slack

__all__ = ["Rule", "parse_rule", "layer_choice", "bootstrap_choices", "k_bootstrap", "stability_line", "modal",
           "chosen_share", "percent", "straddles", "selection_warnings", "wilson_interval", "accuracy_interval",
           "AutoOptions", "RoundFigures", "AutoRound", "AutoResult", "auto_stop_reason", "samples_auto"]


# ------------------------------------------------------------------------------------------------ rules

@dataclass(frozen=True)
class Rule:
    """How K is read off the calibration: ``mean`` (first layer whose mean KL is <= the threshold),
    ``upper`` (first layer whose bootstrap upper bound is <= it), ``stable`` with ``share`` P (the smallest
    K that at least a fraction P of the bootstrap resamples choose, or choose an earlier layer than)."""

    name: str
    share: float | None = None

    def __str__(self) -> str:
        return self.name if self.share is None else f"stable={self.share:g}"

    @property
    def conservative(self) -> bool:
        return self.name != "mean"

    def describe(self, threshold: float) -> str:
        """What the chosen K is, in words (for the screen and for `vtw check`)."""
        if self.name == "mean":
            return f"the first layer with mean KL <= {threshold:g}"
        if self.name == "upper":
            return f"the first layer whose bootstrap upper bound of the mean KL is <= {threshold:g}"
        return (f"the smallest layer that at least {self.share:.0%} of the bootstrap resamples choose or beat, "
                f"at mean KL <= {threshold:g}")


_STABLE = re.compile(r"^stable=([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)$")


def parse_rule(text: str | None) -> Rule:
    """``mean``, ``upper`` or ``stable=P`` (0 < P <= 1); anything else is a one-line VtwError."""
    value = DEFAULT_RULE if text is None else str(text).strip().lower()
    if value in ("mean", "upper"):
        return Rule(value)
    match = _STABLE.match(value)
    if match is not None:
        share = float(match.group(1))
        if 0 < share <= 1:
            return Rule("stable", share)
    raise VtwError(f"--select {text!r} is not a selection rule; use mean, upper or stable=P with P in (0, 1] "
                   "(e.g. stable=0.95)")


def _first_under(layers: Sequence[int], values: Sequence[float | None], threshold: float) -> int | None:
    for layer, value in zip(layers, values):
        if value is not None and value <= threshold:
            return int(layer)
    return None


def _field(entry, key: str):
    """A per-layer entry's figure, from a dict or a typed record (vtwcli.profile.LayerKL); None if absent."""
    return entry.get(key) if isinstance(entry, Mapping) else getattr(entry, key, None)


def layer_choice(rule: Rule, per_layer: Sequence, threshold: float,
                 k_distribution: dict[str, float] | None = None) -> int | None:
    """K under ``rule`` from a curve (``per_layer`` entries, dicts or typed, with ``layer``, ``kl_mean``,
    ``kl_ci_high``) and, for ``stable``, the bootstrap K distribution. None: no layer qualifies."""
    entries = sorted(per_layer, key=lambda entry: _field(entry, "layer"))
    layers = [_field(entry, "layer") for entry in entries]
    if rule.name == "mean":
        return first_layer_under(entries, threshold)
    if rule.name == "upper":
        return _first_under(layers, [_field(entry, "kl_ci_high") for entry in entries], threshold)
    if not k_distribution:
        return None
    cumulative = 0.0
    for layer in layers:
        cumulative += k_distribution.get(str(layer), 0.0)
        if cumulative >= rule.share - _TOL:
            return int(layer)
    return None


# ------------------------------------------------------------------------------------- the K distribution

def _strata(datasets: Sequence[str]) -> list[np.ndarray]:
    names = list(dict.fromkeys(datasets))  # order of first appearance
    column = np.asarray(datasets, dtype=object)
    return [np.flatnonzero(column == name) for name in names]


def bootstrap_choices(kl: np.ndarray, datasets: Sequence[str], layers: Sequence[int], threshold: float, *,
                      resamples: int, seed: int) -> np.ndarray:
    """The mean-rule K of each stratified resample (-1 where no layer qualifies); see the module doc."""
    kl = np.asarray(kl, dtype=np.float64)
    if kl.ndim != 2 or kl.shape[0] != len(datasets) or kl.shape[1] != len(layers):
        raise ValueError(f"kl must be samples x layers ({len(datasets)} x {len(layers)}), got {kl.shape}")
    rng = np.random.default_rng(seed)
    groups = _strata(datasets)
    total = kl.shape[0]
    layer_ids = np.asarray(layers, dtype=np.int64)
    choices = np.full(resamples, -1, dtype=np.int64)
    for r in range(resamples):
        sums = np.zeros(kl.shape[1])
        for rows in groups:
            sums += kl[rows[rng.integers(0, len(rows), size=len(rows))]].sum(axis=0)
        under = np.flatnonzero(sums / total <= threshold)
        if under.size:
            choices[r] = layer_ids[under[0]]
    return choices


def _distribution(choices: np.ndarray) -> dict[str, float]:
    values, counts = np.unique(choices, return_counts=True)
    total = int(counts.sum())
    shares = {int(v): int(c) / total for v, c in zip(values, counts)}
    out = {str(k): shares[k] for k in sorted(k for k in shares if k >= 0)}
    if -1 in shares:
        out[NO_LAYER] = shares[-1]
    return out


def k_bootstrap(kl: np.ndarray, datasets: Sequence[str], layers: Sequence[int], threshold: float, *,
                resamples: int, seed: int) -> dict[str, float]:
    """``{K as text: fraction of resamples choosing it}`` (ascending, ``"none"`` last; sums to 1)."""
    if resamples < 1 or len(datasets) == 0:
        return {}
    return _distribution(bootstrap_choices(kl, datasets, layers, threshold, resamples=resamples, seed=seed))


def percent(share: float) -> str:
    if 0 < share < 0.005:
        return "<1%"
    if 0.995 <= share < 1:
        return ">99%"
    return f"{share:.0%}"


def stability_line(k_distribution: dict[str, float]) -> str:
    """``K = 4 in 97% of resamples, 3 in 3%`` (most frequent first)."""
    if not k_distribution:
        return "K distribution: not computed (no bootstrap resamples)"
    ranked = sorted(k_distribution.items(), key=lambda item: (-item[1], item[0] == NO_LAYER,
                                                              int(item[0]) if item[0] != NO_LAYER else 0))
    parts = []
    for index, (key, share) in enumerate(ranked):
        what = "no layer" if key == NO_LAYER else key
        if index == 0:
            parts.append(f"{'no layer meets the threshold' if key == NO_LAYER else 'K = ' + key} in "
                         f"{percent(share)} of resamples")
        else:
            parts.append(f"{what} in {percent(share)}")
    return ", ".join(parts)


def modal(k_distribution: dict[str, float]) -> tuple[str | None, float]:
    """(most frequent K as text, its share); ties go to the earlier layer."""
    if not k_distribution:
        return None, 0.0
    key = max(k_distribution, key=lambda k: (k_distribution[k], k != NO_LAYER, -int(k) if k != NO_LAYER else 0))
    return key, k_distribution[key]


def chosen_share(rule: Rule, layer: int | None, k_distribution: dict[str, float]) -> float | None:
    """Bootstrap support of the chosen K: the share of resamples choosing it (``mean``), or choosing it or
    an earlier layer (the conservative rules, which pick K later than the mean on purpose)."""
    if layer is None or not k_distribution:
        return None
    if not rule.conservative:
        return k_distribution.get(str(layer), 0.0)
    return sum(share for key, share in k_distribution.items() if key != NO_LAYER and int(key) <= layer)


# ------------------------------------------------------------------------------------------------ warnings

def _interval(per_layer: Sequence, layer: int | None) -> tuple[float | None, float | None]:
    entry = next((e for e in per_layer if _field(e, "layer") == layer), None)
    return (_field(entry, "kl_ci_low"), _field(entry, "kl_ci_high")) if entry is not None else (None, None)


def straddles(per_layer: Sequence, layer: int | None, threshold: float) -> bool:
    """Whether the bootstrap interval of the mean KL at ``layer`` has the threshold inside it."""
    low, high = _interval(per_layer, layer)
    return low is not None and high is not None and low <= threshold < high


def selection_warnings(rule: Rule, layer: int | None, per_layer: Sequence, threshold: float,
                       k_distribution: dict[str, float], per_dataset: Sequence = ()) -> list[dict]:
    """``[{code, message}]``: reasons not to trust K yet, each saying what to do. None when K is null."""
    if layer is None:
        return []
    out = []
    if straddles(per_layer, layer, threshold):
        low, high = _interval(per_layer, layer)
        out.append({"code": "interval_straddles_threshold",
                    "message": f"the 95% interval of the mean KL at K={layer} ({low:.3g} .. {high:.3g}) straddles "
                               f"the threshold {threshold:g}: another draw of samples may choose another K; "
                               "calibrate on more samples (--samples auto) or choose with --select upper"})
    share = chosen_share(rule, layer, k_distribution)
    if share is not None and share < STABLE_SHARE - _TOL:
        what = f"choose K={layer}" if not rule.conservative else f"choose K={layer} or an earlier layer"
        out.append({"code": "k_share_low",
                    "message": f"only {percent(share)} of bootstrap resamples {what} ({stability_line(k_distribution)})"
                               f": K is not stable at this sample size; calibrate on more samples (--samples auto)"
                               " or choose with --select stable=0.95"})
    for curve in per_dataset:
        own, name = _field(curve, "layer"), _field(curve, "name")
        if own is None or abs(own - layer) > 1:
            said = ("no layer meets the threshold" if own is None
                    else f"its own first layer under the threshold is {own}")
            out.append({"code": "dataset_disagrees",
                        "message": f"dataset {name}: {said}, pooled K={layer}: the pooled K does not fit "
                                   f"data like it; check K on it alone (--dataset {name}) before deploying "
                                   "on such data, or calibrate with more of it"})
    return out


# ------------------------------------------------------------------------------------------------ accuracy

def wilson_interval(successes: float, n: int, confidence: float = ACCURACY_CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion (successes out of n); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_interval(accuracy: float, n: int, confidence: float = ACCURACY_CONFIDENCE) -> tuple[float, float]:
    """Wilson interval of an accuracy measured on n samples (the count is ``round(accuracy * n)``)."""
    return wilson_interval(round(accuracy * n), n, confidence)


# ------------------------------------------------------------------------------------------- --samples auto

@dataclass(frozen=True)
class AutoOptions:
    """``--samples auto``: draw ``step`` more samples per dataset per round until K is stable (the modal K's
    bootstrap share is >= ``target`` and the interval of the mean KL at the chosen K is clear of the
    threshold), every dataset is used up, or ``budget`` samples per dataset are drawn."""

    target: float = DEFAULT_AUTO_TARGET
    step: int = DEFAULT_AUTO_STEP
    budget: int | None = None

    def validate(self) -> None:
        if not isinstance(self.target, (int, float)) or math.isnan(self.target) or not 0 < self.target <= 1:
            raise VtwError(f"--auto-target {self.target} is not a share; use a number in (0, 1], e.g. 0.9")
        if self.step < 1:
            raise VtwError(f"--auto-step {self.step}: draw at least 1 sample per dataset per round")
        if self.budget is not None and self.budget < 1:
            raise VtwError(f"--auto-budget {self.budget}: allow at least 1 sample per dataset")


@dataclass(frozen=True)
class RoundFigures:
    """What one round of ``--samples auto`` measured: the K distribution of the samples drawn so far and
    whether the interval of the mean KL at the K they choose straddles the threshold."""

    distribution: dict[str, float]
    straddles: bool = False


@dataclass(frozen=True)
class AutoRound:
    samples: int  # samples drawn so far, all datasets together
    modal_k: str | None
    modal_share: float
    straddles: bool = False

    def to_dict(self) -> dict:
        return {"samples": self.samples, "modal_k": self.modal_k, "modal_share": self.modal_share,
                "straddles": self.straddles}


@dataclass
class AutoResult:
    counts: list[int]  # samples drawn per dataset
    stopped: str  # stable | data | budget
    rounds: list[AutoRound] = field(default_factory=list)
    distribution: dict[str, float] = field(default_factory=dict)


def auto_stop_reason(modal_share: float, straddles: bool, counts: Sequence[int], available: Sequence[int],
                     options: AutoOptions) -> str | None:
    """Why to stop drawing after a round (``stable``, ``data``, ``budget``), or None to draw another.

    Stable needs both: the modal K's share alone stops too early when a few samples carry most of the KL
    (a draw that missed them agrees with itself; docs/calibration.md measures it), and a clear interval
    alone says nothing about the layers before K."""
    if modal_share >= options.target - _TOL and not straddles:
        return "stable"
    if all(c >= a for c, a in zip(counts, available)):
        return "data"
    if options.budget is not None and all(c >= min(a, options.budget) for c, a in zip(counts, available)):
        return "budget"
    return None


def samples_auto(available: Sequence[int], measure: Callable[[list[int]], RoundFigures],
                 options: AutoOptions) -> AutoResult:
    """Draw rounds until :func:`auto_stop_reason` says stop. ``measure(counts)`` measures the first
    ``counts[d]`` samples of each dataset (in its seeded draw order) and returns their figures."""
    options.validate()
    counts = [0] * len(available)
    rounds: list[AutoRound] = []
    while True:
        cap = [a if options.budget is None else min(a, options.budget) for a in available]
        counts = [min(c + options.step, limit) for c, limit in zip(counts, cap)]
        figures = measure(list(counts))
        key, share = modal(figures.distribution)
        rounds.append(AutoRound(sum(counts), key, share, figures.straddles))
        reason = auto_stop_reason(share, figures.straddles, counts, available, options)
        if reason is not None:
            return AutoResult(counts=counts, stopped=reason, rounds=rounds, distribution=figures.distribution)
