"""`vtw check` on how K was chosen and how far to trust it (docs/calibration.md): K recomputed under the
recorded rule, the K distribution recomputed from the per-sample KL, the accuracy intervals recomputed, and
the sampling-noise note of the accuracy-drop gates."""

from __future__ import annotations

import math

from vtwcli.errors import VtwError
from vtwcli.gates.results import CheckResult, failed, not_applicable, num, passed
from vtwcli.profile import Calibration, Evaluation
from vtwcli.selection import (ACCURACY_CONFIDENCE, accuracy_interval, k_bootstrap, layer_choice, parse_rule,
                              stability_line)

__all__ = ["check_layer_under_rule", "check_accuracy_intervals", "noise_note"]

_MAX_BOOTSTRAP_WORK = 2e9  # samples x resamples x layers that `vtw check` recomputes (seconds of numpy)


def check_layer_under_rule(cal: Calibration, src: str) -> list[CheckResult]:
    """calibration.layer recomputed under the recorded rule (mean when there is no selection block), and the
    recorded K distribution recomputed from the per-sample KL with the recorded bootstrap seed."""
    selection = cal.selection
    try:
        rule = parse_rule(selection.rule if selection is not None else None)
    except VtwError:
        return [failed("calibration.selection.rule", f"{selection.rule!r} is not mean, upper or stable=P with "
                       "P in (0, 1]", src)]
    results = []
    stored = selection.k_bootstrap if selection is not None else None
    if stored == {}:
        results.append(not_applicable("calibration.selection.k_bootstrap",
                                      "empty: calibrated without bootstrap resamples", src))
    elif stored is not None:
        total = sum(stored.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            results.append(failed("calibration.selection.k_bootstrap", f"fractions sum to {num(total)}, not 1", src))
        else:
            results.append(_recomputed_k_bootstrap(cal, stored, src))
    if rule.name == "stable" and not stored:
        results.append(failed("calibration.layer", f"rule {rule} needs calibration.selection.k_bootstrap", src))
        return results
    expected = layer_choice(rule, cal.per_layer, cal.threshold, stored)
    said = f"{rule.describe(cal.threshold)} (rule {rule})"
    if cal.layer == expected:
        detail = f"layer {expected} is {said}" if expected is not None else f"null: no layer is {said}"
        results.append(passed("calibration.layer", detail, src))
    else:
        why = f"layer {expected} is {said}" if expected is not None else f"no layer is {said}, so it must be null"
        results.append(failed("calibration.layer", f"profile says {num(cal.layer)} but {why}", src))
    return results


def _recomputed_k_bootstrap(cal: Calibration, stored: dict, src: str) -> CheckResult:
    name = "calibration.selection.k_bootstrap"
    samples, bootstrap = cal.per_sample, cal.bootstrap
    if not samples or bootstrap is None:
        return not_applicable(name, "not recomputed: the profile has no per_sample KL or no bootstrap seed", src)
    if any(len(s.kl) != len(cal.per_layer) for s in samples):
        return not_applicable(name, "not recomputed: per_sample kl lists do not match per_layer (see "
                              "calibration.per_sample)", src)
    if len(samples) * bootstrap.resamples * len(cal.per_layer) > _MAX_BOOTSTRAP_WORK:
        return not_applicable(name, f"not recomputed: {len(samples)} samples x {bootstrap.resamples} resamples is "
                              "too much work for a check", src)
    again = k_bootstrap([s.kl for s in samples], [s.dataset for s in samples], [e.layer for e in cal.per_layer],
                        cal.threshold, resamples=bootstrap.resamples, seed=bootstrap.seed)
    wrong = [f"K={k}: stored {num(stored.get(k, 0.0))}, recomputed {num(again.get(k, 0.0))}"
             for k in sorted(set(again) | set(stored)) if not math.isclose(stored.get(k, 0.0), again.get(k, 0.0),
                                                                            abs_tol=1e-9)]
    if wrong:
        return failed(name, f"differs from the stratified bootstrap of per_sample (seed {bootstrap.seed}, "
                      f"{bootstrap.resamples} resamples): " + "; ".join(wrong[:3]), src)
    return passed(name, f"{stability_line(stored)}: recomputed from per_sample (seed {bootstrap.seed})", src)


def check_accuracy_intervals(evaluation: Evaluation, src: str) -> list[CheckResult]:
    """Each stored accuracy_ci is the Wilson interval of its accuracy on evaluation.samples."""
    results = []
    confidence = evaluation.interval.confidence if evaluation.interval is not None else ACCURACY_CONFIDENCE
    for side in ("baseline", "withdrawn"):
        stated, accuracy = getattr(evaluation, side).accuracy_ci, getattr(evaluation, side).accuracy
        name = f"evaluation.{side}.accuracy_ci"
        if stated is None:
            continue  # written before accuracy intervals, or no accuracy
        if accuracy is None:
            results.append(failed(name, "is set but the accuracy is null", src))
            continue
        low, high = accuracy_interval(accuracy, evaluation.samples, confidence)
        what = f"the Wilson {confidence:.0%} interval of {num(accuracy)} on {evaluation.samples} samples"
        if all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(stated, (low, high))):
            results.append(passed(name, what, src))
        else:
            results.append(failed(name, f"is {list(stated)} but {what} is [{num(low)}, {num(high)}]", src))
    return results


def noise_note(base: float, new: float, samples: int | None, limit: float) -> str:
    """Whether an accuracy drop is within the Wilson interval of the sample size, and whether the limit is."""
    if not samples:
        return ""
    low, high = accuracy_interval(new, samples)
    within = low <= base <= high
    note = (f"; {'within' if within else 'outside'} the 95% interval of {samples} samples ({low * 100:.1f}%.."
            f"{high * 100:.1f}%)" + (": not distinguishable from sampling noise" if within else ""))
    half = (high - low) / 2 * 100
    if limit < half:
        note += (f"; the limit ({num(limit)} points) is below the interval's half-width ({half:.1f} points), so "
                 "noise alone can fail this gate: evaluate on more samples")
    return note
