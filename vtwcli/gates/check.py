"""`vtw check`: the internal consistency of one profile, as :class:`CheckResult` objects."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from vtwcli.errors import VtwError
from vtwcli.gates.benchmarks import benchmark_checks
from vtwcli.gates.results import EPS, CheckResult, failed, num, passed
from vtwcli.gates.stability import check_accuracy_intervals, check_layer_under_rule, noise_note
from vtwcli.profile import (FLOPS_COMPONENTS, LATENCY_FIGURES, VARIANTS, Calibration, Flops, Latency, Memory, Profile,
                            Verification, first_layer_under, read_profile_dict, typed_profile)

__all__ = ["REL_TOL_FLOPS", "REL_TOL_LATENCY", "FileCheck", "check_profile_dict", "check_typed_profile",
           "check_profile", "check_files", "check_failure_message", "kinds_text", "accuracy_drop_detail"]

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
REL_TOL_FLOPS = 1e-6
REL_TOL_LATENCY = 1e-3


def kinds_text(kinds) -> str:
    """Which vision tokens a profile withdraws, comparable and printable; absent means all of them."""
    return ",".join(kinds) if kinds else "all vision"


def accuracy_drop_detail(base: float, new: float, limit: float, *, label: str, new_label: str = "",
                         samples: int | None = None) -> tuple[bool, str]:
    """(within the limit, detail line) of an accuracy drop ``base`` -> ``new`` in percentage points; with the
    ``samples`` ``new`` was measured on, whether the drop is within their Wilson interval."""
    drop = (base - new) * 100
    ok = drop <= limit + EPS
    return ok, (f"{label} {base * 100:.2f}% -> {new * 100:.2f}%{new_label}: drop {drop:.2f} points "
                f"{'<=' if ok else '>'} limit {num(limit)}" + noise_note(base, new, samples, limit))


def _layers_text(layers: list) -> str:
    return "[" + ", ".join(map(str, layers[:12])) + (", ...]" if len(layers) > 12 else "]")


def _check_layer_choice(name: str, stated, curve, threshold: float, src: str) -> CheckResult:
    """A dataset's ``stated`` own K must be the first layer of its ``curve`` at or under ``threshold`` (null
    when none is); the pooled K is checked under the recorded rule (gates.stability)."""
    expected = first_layer_under(curve, threshold)
    if stated == expected:
        return passed(name, f"{num(expected)} is its own first layer under the threshold", src)
    why = (f"its first layer with kl_mean <= {num(threshold)} is {expected}" if expected is not None
           else f"none of its layers has kl_mean <= {num(threshold)}, so it must be null")
    return failed(name, f"profile says {num(stated)} but {why}", src)


def _check_bounds(cal: Calibration, src: str) -> list[CheckResult]:
    bad_ci, bad_max = [], []
    for entry in cal.per_layer:
        mean, low, high, top = entry.kl_mean, entry.kl_ci_low, entry.kl_ci_high, entry.kl_max
        if low is not None and not low <= mean + EPS * max(1.0, abs(mean)):
            bad_ci.append(f"layer {entry.layer}: kl_ci_low {num(low)} > kl_mean {num(mean)}")
        if high is not None and not mean <= high + EPS * max(1.0, abs(high)):
            bad_ci.append(f"layer {entry.layer}: kl_mean {num(mean)} > kl_ci_high {num(high)}")
        if top is not None and not mean <= top + EPS * max(1.0, abs(top)):
            bad_max.append(f"layer {entry.layer}: kl_mean {num(mean)} > kl_max {num(top)}")
    return [failed("calibration.per_layer.ci", "; ".join(bad_ci[:3]), src) if bad_ci else
            passed("calibration.per_layer.ci", "kl_ci_low <= kl_mean <= kl_ci_high", src),
            failed("calibration.per_layer.kl_max", "; ".join(bad_max[:3]), src) if bad_max else
            passed("calibration.per_layer.kl_max", "kl_mean <= kl_max", src)]


def _check_calibration(cal: Calibration, num_layers: int, src: str) -> list[CheckResult]:
    results = []
    layers = [entry.layer for entry in cal.per_layer]
    # K = L withdraws nothing (KL 0 by definition), so the candidates stop at L - 1, or at max_layer where
    # withdrawal after it cannot be exact (KV sharing).
    last = num_layers - 1 if cal.max_layer is None else cal.max_layer
    if layers == list(range(cal.min_layer, last + 1)) and last <= num_layers - 1:
        results.append(passed("calibration.per_layer.layers", f"layers {cal.min_layer}..{last}, ascending", src))
    else:
        bound = "model.num_layers - 1" if cal.max_layer is None else "max_layer"
        results.append(failed("calibration.per_layer.layers",
                              f"expected layers {cal.min_layer}..{last} ascending and contiguous (min_layer..{bound}), "
                              f"got {_layers_text(layers)}", src))
    results += check_layer_under_rule(cal, src)
    results += _check_bounds(cal, src)
    for curve in cal.per_dataset or ():
        results.append(_check_layer_choice(f"calibration.per_dataset[{curve.name}].layer", curve.layer,
                                           curve.per_layer, cal.threshold, src))
    if cal.per_sample:
        count = len(cal.per_layer)
        wrong = [f"{s.dataset}/{s.id} has {len(s.kl)}" for s in cal.per_sample if len(s.kl) != count]
        results.append(failed("calibration.per_sample", f"each kl list needs {count} values (one per per_layer "
                              "entry): " + "; ".join(wrong[:3]), src) if wrong else
                       passed("calibration.per_sample", f"{len(cal.per_sample)} samples x {count} layers", src))
    return results


def ratio_check(name: str, stated, numerator, denominator, rel_tol: float, what: str, src: str,
                minus_from_one: bool = False) -> CheckResult:
    """``stated`` must equal numerator / denominator (or 1 - that) within ``rel_tol``."""
    if numerator is None or denominator is None:
        if stated is None:
            return passed(name, "null (figures absent)", src)
        return failed(name, f"is {num(stated)} but the figures it is computed from ({what}) are missing", src)
    if denominator == 0:
        if stated is None or (minus_from_one and stated == 0):
            return passed(name, f"{what}: denominator is 0", src)
        return failed(name, f"is {num(stated)} but {what} has a zero denominator", src)
    expected = numerator / denominator
    if minus_from_one:
        expected = 1 - expected
    if stated is not None and math.isclose(stated, expected, rel_tol=rel_tol, abs_tol=1e-12):
        return passed(name, f"{num(stated)} = {what}", src)
    return failed(name, f"is {num(stated)} but {what} = {num(expected)} (rel tol {rel_tol:g})", src)


def _check_flops(flops: Flops, src: str) -> list[CheckResult]:
    results = []
    for variant in VARIANTS:
        block = getattr(flops, variant)
        total = sum(getattr(block, part) for part in FLOPS_COMPONENTS)
        name = f"flops.{variant}.total"
        if math.isclose(total, block.total, rel_tol=1e-9, abs_tol=0):
            results.append(passed(name, f"{' + '.join(FLOPS_COMPONENTS)} = total {block.total}", src))
        else:
            results.append(failed(name, f"components sum to {total} but total is {block.total} "
                                  f"(difference {block.total - total})", src))
    results.append(ratio_check("flops.reduction", flops.reduction, flops.withdrawn.total, flops.baseline.total,
                               REL_TOL_FLOPS, "1 - withdrawn.total / baseline.total", src, minus_from_one=True))
    return results


def _median(run, stats: str):
    timing = getattr(run, stats)
    return None if timing is None else timing.median


def _interval_check(stated, interval) -> tuple[bool, str]:
    """A median per-pair speedup lies within its pairs' p10..p90 and its 95% interval (pairs are not stored,
    so this is what can be re-derived)."""
    bounds = [("p10..p90", interval.p10, interval.p90)]
    if interval.low is not None and interval.high is not None:
        bounds.append(("95% interval", interval.low, interval.high))
    for what, low, high in bounds:
        if stated is None or not low - EPS <= stated <= high + EPS:
            return False, f"is {num(stated)} but lies outside its {what} {num(low)}..{num(high)}"
    return True, f"{num(stated)} within " + " and ".join(f"{what} {num(low)}..{num(high)}" for what, low, high in bounds)


def _check_latency(latency: Latency, flops: Flops | None, src: str) -> list[CheckResult]:
    results = []
    if latency.speedup_interval is not None:  # paired runs: the median of per-pair speedups
        for _, _, speedup in LATENCY_FIGURES:
            interval, name = getattr(latency.speedup_interval, speedup), f"latency.speedup.{speedup}"
            if interval is None:
                continue
            ok, detail = _interval_check(getattr(latency.speedup, speedup), interval)
            results.append(passed(name, detail, src) if ok else failed(name, detail, src))
        results += _check_flops_ratio(latency, flops, src)
        return results
    for _, stats, speedup in LATENCY_FIGURES:
        base, new = _median(latency.baseline, stats), _median(latency.withdrawn, stats)
        results.append(ratio_check(f"latency.speedup.{speedup}", getattr(latency.speedup, speedup), base, new,
                                   REL_TOL_LATENCY,
                                   f"baseline median / withdrawn median ({num(base)} / {num(new)} ms)", src))
    return results + _check_flops_ratio(latency, flops, src)


def _check_flops_ratio(latency: Latency, flops: Flops | None, src: str) -> list[CheckResult]:
    if latency.flops_ratio is None or flops is None:
        return []
    return [ratio_check("latency.flops_ratio", latency.flops_ratio, flops.baseline.total, flops.withdrawn.total,
                        REL_TOL_LATENCY, "flops.baseline.total / flops.withdrawn.total", src)]


def _check_memory(memory: Memory, src: str) -> list[CheckResult]:
    return [ratio_check("memory.kv_cache_reduction", memory.kv_cache_reduction, memory.withdrawn.kv_cache_bytes,
                        memory.baseline.kv_cache_bytes, REL_TOL_FLOPS,
                        "1 - withdrawn.kv_cache_bytes / baseline.kv_cache_bytes", src, minus_from_one=True)]


def _accuracy_drop_check(profile: Profile, limit: float, src: str) -> CheckResult | None:
    name = "max-accuracy-drop"
    evaluation = profile.evaluation
    if evaluation is None:
        return failed(name, f"--max-accuracy-drop {num(limit)} needs an evaluation section and the profile has none",
                      src)
    if evaluation.withdrawn is None:
        return None  # benchmarks only: benchmark_checks gates them
    if evaluation.withdrawn.accuracy is None:
        return failed(name, "evaluation.withdrawn.accuracy is null (no withdrawal layer was chosen)", src)
    ok, detail = accuracy_drop_detail(evaluation.baseline.accuracy, evaluation.withdrawn.accuracy, limit,
                                      label="accuracy", new_label=" withdrawn", samples=evaluation.samples)
    return passed(name, detail, src) if ok else failed(name, detail, src)


def _check_header(profile: Profile, src: str) -> list[CheckResult]:
    sha = profile.model.config_sha256
    results = [passed("schema", f"schema_version {profile.schema_version}, valid", src),
               passed("model.config_sha256", "64 hex digits", src) if _HEX64.match(sha) else
               failed("model.config_sha256", f"expected 64 hex digits, got {sha!r}", src)]
    for index, item in enumerate(profile.data):
        label = f"data[{index}]"
        results.append(passed(f"{label}.sha256", f"{item.name}: 64 hex digits", src) if _HEX64.match(item.sha256)
                       else failed(f"{label}.sha256", f"{item.name}: expected 64 hex digits, got {item.sha256!r}",
                                   src))
        count = len(item.sample_ids)
        results.append(passed(f"{label}.samples", f"{item.name}: {count} sample_ids", src) if count == item.samples
                       else failed(f"{label}.samples", f"{item.name}: samples is {item.samples} but sample_ids "
                                   f"lists {count}", src))
    return results


def _check_evaluation(profile: Profile, src: str) -> list[CheckResult]:
    results, withdrawn, calibration = [], profile.evaluation.withdrawn, profile.calibration
    if calibration is not None:
        results.append(passed("evaluation.withdrawn.layer", f"= calibration.layer ({num(calibration.layer)})", src)
                       if withdrawn.layer == calibration.layer else
                       failed("evaluation.withdrawn.layer", f"is {num(withdrawn.layer)} but calibration.layer is "
                              f"{num(calibration.layer)}", src))
    if (withdrawn.layer is None) != (withdrawn.accuracy is None):
        results.append(failed("evaluation.withdrawn.accuracy", f"accuracy is {num(withdrawn.accuracy)} with layer "
                              f"{num(withdrawn.layer)}: both must be null or neither", src))
    return results + check_accuracy_intervals(profile.evaluation, src)


def _check_withdrawal(profile: Profile, src: str) -> list[CheckResult]:
    results, withdrawal, calibration = [], profile.withdrawal, profile.calibration
    num_layers = profile.model.num_layers
    cal_layer = calibration.layer if calibration is not None else None
    if withdrawal.layer > num_layers:
        results.append(failed("withdrawal.layer", f"is {withdrawal.layer} but the model has {num_layers} decoder "
                              f"layers (valid 1..{num_layers})", src))
    elif cal_layer is not None:
        results.append(passed("withdrawal.layer", f"= calibration.layer ({cal_layer})", src)
                       if withdrawal.layer == cal_layer else
                       failed("withdrawal.layer", f"is {withdrawal.layer} but calibration.layer is {cal_layer}", src))
    calibrated_kinds = calibration.withdraw if calibration is not None else None
    if calibrated_kinds is not None or withdrawal.kinds is not None:
        measured, calibrated = kinds_text(withdrawal.kinds), kinds_text(calibrated_kinds)
        same = measured == calibrated or calibration is None
        results.append(passed("withdrawal.kinds", f"= calibration.withdraw ({calibrated})", src) if same
                       else failed("withdrawal.kinds", f"withdraws {measured} tokens but the calibration withdrew "
                                   f"{calibrated}", src))
    return results


def check_typed_profile(profile: Profile, *, max_accuracy_drop: float | None = None) -> list[CheckResult]:
    """Internal-consistency checks of a typed profile (see :func:`check_profile`)."""
    src = profile.source
    results = _check_header(profile, src)
    if profile.calibration is not None:
        results += _check_calibration(profile.calibration, profile.model.num_layers, src)
    if profile.evaluation is not None and profile.evaluation.withdrawn is not None:
        results += _check_evaluation(profile, src)
    results += benchmark_checks(profile, src, max_accuracy_drop)
    if profile.withdrawal is not None:
        results += _check_withdrawal(profile, src)
    if profile.flops is not None:
        results += _check_flops(profile.flops, src)
    if profile.latency is not None:
        results += _check_latency(profile.latency, profile.flops, src)
    if profile.memory is not None:
        results += _check_memory(profile.memory, src)
    if profile.verification is not None:
        results += _check_verification(profile.verification, profile, src)
    if max_accuracy_drop is not None:
        results += [r for r in [_accuracy_drop_check(profile, max_accuracy_drop, src)] if r is not None]
    return results


def _installed(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _check_verification(ver: Verification, profile: Profile, src: str) -> list[CheckResult]:
    """`vtw verify`'s record: a recorded failure fails; so does a verification of another model config."""
    failures = [check for check in ver.checks if not check.passed]
    layers = ", ".join(str(k) for k in ver.layers)
    if failures or not ver.passed:
        first = f"first {failures[0].name}: {failures[0].detail}" if failures else "passed is false"
        inconsistent = " (yet passed is true)" if ver.passed else ""
        results = [failed("verification", f"withdrawal was NOT exact{inconsistent}: {len(failures)} failed "
                          f"check(s), {first}", src)]
    else:
        installed = _installed("transformers")
        note = ("" if installed in (None, ver.transformers) else
                f"; transformers {installed} is installed now: re-run vtw verify after an upgrade")
        results = [passed("verification", f"exact at K = {layers} ({len(ver.checks)} checks, {ver.dtype}, "
                          f"transformers {ver.transformers}, vtwcli {ver.vtwcli}){note}", src)]
    model = profile.model
    if ver.config_sha256 != model.config_sha256:
        results.append(failed("verification.config_sha256", f"{ver.config_sha256[:12]}... verified another model "
                              f"config than model.config_sha256 {model.config_sha256[:12]}...", src))
    out_of_range = [k for k in ver.layers if k >= model.num_layers]
    if out_of_range:
        results.append(failed("verification.layers", f"{out_of_range} not in 1..{model.num_layers - 1} for "
                              f"{model.num_layers} decoder layers", src))
    return results


def check_profile_dict(data: dict, source: str = "<profile>", *,
                       max_accuracy_drop: float | None = None) -> list[CheckResult]:
    """Internal-consistency checks of a VALIDATED profile dict (see :func:`check_profile`)."""
    return check_typed_profile(typed_profile(data, source), max_accuracy_drop=max_accuracy_drop)


def check_profile(path: Path | str, *, max_accuracy_drop: float | None = None) -> list[CheckResult]:
    """Read + validate ``path`` (VtwError, exit 2, when it cannot) and run the consistency checks."""
    return check_profile_dict(read_profile_dict(path), str(path), max_accuracy_drop=max_accuracy_drop)


@dataclass
class FileCheck:
    """The checks of one file, or ``error`` (one line) when it could not be read or validated."""

    source: str
    results: list[CheckResult] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(r.passed for r in self.results)

    def to_dict(self) -> dict:
        return {"file": self.source, "ok": self.passed, "error": self.error,
                "checks": [r.to_dict() for r in self.results]}


def check_files(paths, *, max_accuracy_drop: float | None = None) -> list[FileCheck]:
    """Check every file; unreadable / invalid ones carry their one-line error instead of results."""
    out = []
    for path in paths:
        try:
            out.append(FileCheck(str(path), check_profile(path, max_accuracy_drop=max_accuracy_drop)))
        except VtwError as error:
            out.append(FileCheck(str(path), error=str(error)))
    return out


def check_failure_message(files: list[FileCheck]) -> str | None:
    """One line naming the failed checks (file, check, figures), or None when everything passed."""
    failures = [r for f in files for r in f.results if not r.passed]
    if not failures:
        return None
    shown = "; ".join(f"{r.source}: {r.name}: {r.detail}" for r in failures[:3])
    more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
    return f"{len(failures)} check(s) failed: {shown}{more}"
