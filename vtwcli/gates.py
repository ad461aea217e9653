"""Consistency checks of one profile (`vtw check`) and CI gates between two (`vtw compare`).

Everything here returns result objects; the CLI only renders them and turns failures into exit codes
(0 all passed, 1 a check / gate failed, 2 unreadable or invalid input, raised as VtwError by the reader).

Gate policy (docs/profile-schema.md, "CI gates"): a requested gate whose section is absent from BOTH
profiles is reported "n/a" (not applicable, stated in the output, does not fail); a gate whose figures
are present in one profile but missing or null in the other FAILS, so a pipeline that silently stops
measuring something never passes a gate.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from vtwcli.benchmarks import benchmark_checks, benchmark_gates, benchmark_rows
from vtwcli.errors import VtwError
from vtwcli.profile import read_profile_dict

__all__ = ["CheckResult", "FileCheck", "GateLimits", "MetricRow", "Comparison", "check_profile_dict",
           "check_profile", "check_files", "check_failure_message", "compare_profiles", "compare_files",
           "format_value", "format_delta"]

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
REL_TOL_FLOPS = 1e-6
REL_TOL_LATENCY = 1e-3
_EPS = 1e-9


@dataclass(frozen=True)
class CheckResult:
    """One check or gate: ``passed`` False = failed; ``skipped`` True = not applicable (counts as passed)."""

    name: str
    passed: bool
    detail: str
    source: str = ""
    skipped: bool = False

    @property
    def status(self) -> str:
        return "n/a" if self.skipped else ("pass" if self.passed else "FAIL")

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "passed": self.passed, "detail": self.detail}


def _ok(name, detail, source=""):
    return CheckResult(name, True, detail, source)


def _fail(name, detail, source=""):
    return CheckResult(name, False, detail, source)


def _na(name, detail, source=""):
    return CheckResult(name, True, detail, source, skipped=True)


def _get(data, *path):
    """data[path[0]][path[1]]... or None when any step is missing / null."""
    for key in path:
        if isinstance(data, dict):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            data = data[key]
        else:
            return None
        if data is None:
            return None
    return data


def _num(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# ------------------------------------------------------------------------------------------ `vtw check`

def _first_under(per_layer: list, threshold: float):
    for entry in sorted(per_layer, key=lambda e: e["layer"]):
        if entry["kl_mean"] <= threshold:
            return entry["layer"]
    return None


def _layers_text(layers: list) -> str:
    return "[" + ", ".join(map(str, layers[:12])) + (", ...]" if len(layers) > 12 else "]")


def _check_calibration(cal: dict, num_layers: int, src: str) -> list[CheckResult]:
    results = []
    per_layer = cal["per_layer"]
    threshold = cal["threshold"]
    min_layer = cal["min_layer"]
    layers = [entry["layer"] for entry in per_layer]
    # K = L withdraws nothing (KL 0 by definition), so the candidates stop at L - 1.
    expected_layers = list(range(min_layer, num_layers))
    if layers == expected_layers:
        results.append(_ok("calibration.per_layer.layers", f"layers {min_layer}..{num_layers - 1}, ascending", src))
    else:
        results.append(_fail("calibration.per_layer.layers",
                             f"expected layers {min_layer}..{num_layers - 1} ascending and contiguous (min_layer.."
                             f"model.num_layers - 1), got {_layers_text(layers)}", src))

    expected = _first_under(per_layer, threshold)
    if cal["layer"] == expected:
        detail = (f"layer {expected} is the first with kl_mean <= {_num(threshold)}" if expected is not None
                  else f"null: no layer has kl_mean <= {_num(threshold)}")
        results.append(_ok("calibration.layer", detail, src))
    else:
        why = (f"layer {expected} is the first with kl_mean <= threshold {_num(threshold)}" if expected is not None
               else f"no layer has kl_mean <= threshold {_num(threshold)}, so it must be null")
        results.append(_fail("calibration.layer", f"profile says {_num(cal['layer'])} but {why}", src))

    bad_ci, bad_max = [], []
    for entry in per_layer:
        mean, low, high, top = entry["kl_mean"], entry.get("kl_ci_low"), entry.get("kl_ci_high"), entry.get("kl_max")
        if low is not None and not low <= mean + _EPS * max(1.0, abs(mean)):
            bad_ci.append(f"layer {entry['layer']}: kl_ci_low {_num(low)} > kl_mean {_num(mean)}")
        if high is not None and not mean <= high + _EPS * max(1.0, abs(high)):
            bad_ci.append(f"layer {entry['layer']}: kl_mean {_num(mean)} > kl_ci_high {_num(high)}")
        if top is not None and not mean <= top + _EPS * max(1.0, abs(top)):
            bad_max.append(f"layer {entry['layer']}: kl_mean {_num(mean)} > kl_max {_num(top)}")
    results.append(_fail("calibration.per_layer.ci", "; ".join(bad_ci[:3]), src) if bad_ci else
                   _ok("calibration.per_layer.ci", "kl_ci_low <= kl_mean <= kl_ci_high", src))
    results.append(_fail("calibration.per_layer.kl_max", "; ".join(bad_max[:3]), src) if bad_max else
                   _ok("calibration.per_layer.kl_max", "kl_mean <= kl_max", src))

    for curve in cal.get("per_dataset") or []:
        name = f"calibration.per_dataset[{curve['name']}].layer"
        own = _first_under(curve["per_layer"], threshold)
        if curve["layer"] == own:
            results.append(_ok(name, f"{_num(own)} is its own first layer under the threshold", src))
        else:
            why = (f"its first layer with kl_mean <= {_num(threshold)} is {own}" if own is not None
                   else f"none of its layers has kl_mean <= {_num(threshold)}, so it must be null")
            results.append(_fail(name, f"profile says {_num(curve['layer'])} but {why}", src))

    samples = cal.get("per_sample")
    if samples:
        wrong = [f"{s['dataset']}/{s['id']} has {len(s['kl'])}" for s in samples if len(s["kl"]) != len(per_layer)]
        results.append(_fail("calibration.per_sample", f"each kl list needs {len(per_layer)} values (one per "
                             f"per_layer entry): " + "; ".join(wrong[:3]), src) if wrong else
                       _ok("calibration.per_sample", f"{len(samples)} samples x {len(per_layer)} layers", src))
    return results


def _ratio_check(name: str, stated, numerator, denominator, rel_tol: float, what: str, src: str,
                 minus_from_one: bool = False) -> CheckResult:
    if numerator is None or denominator is None:
        if stated is None:
            return _ok(name, "null (figures absent)", src)
        return _fail(name, f"is {_num(stated)} but the figures it is computed from ({what}) are missing", src)
    if denominator == 0:
        if stated is None or (minus_from_one and stated == 0):
            return _ok(name, f"{what}: denominator is 0", src)
        return _fail(name, f"is {_num(stated)} but {what} has a zero denominator", src)
    expected = numerator / denominator
    if minus_from_one:
        expected = 1 - expected
    if stated is not None and math.isclose(stated, expected, rel_tol=rel_tol, abs_tol=1e-12):
        return _ok(name, f"{_num(stated)} = {what}", src)
    return _fail(name, f"is {_num(stated)} but {what} = {_num(expected)} (rel tol {rel_tol:g})", src)


def _check_flops(flops: dict, src: str) -> list[CheckResult]:
    results = []
    parts = ("vision_tower", "projector", "language_model", "lm_head")
    for variant in ("baseline", "withdrawn"):
        block = flops[variant]
        total = sum(block[p] for p in parts)
        name = f"flops.{variant}.total"
        if math.isclose(total, block["total"], rel_tol=1e-9, abs_tol=0):
            results.append(_ok(name, f"{' + '.join(parts)} = total {block['total']}", src))
        else:
            results.append(_fail(name, f"components sum to {total} but total is {block['total']} "
                                 f"(difference {block['total'] - total})", src))
    results.append(_ratio_check("flops.reduction", flops["reduction"], flops["withdrawn"]["total"],
                                flops["baseline"]["total"], REL_TOL_FLOPS, "1 - withdrawn.total / baseline.total",
                                src, minus_from_one=True))
    return results


def _check_latency(latency: dict, flops: dict | None, src: str) -> list[CheckResult]:
    results = []
    keys = {"prefill": "prefill_ms", "decode_per_token": "decode_ms_per_token", "end_to_end": "end_to_end_ms"}
    for speedup, stats in keys.items():
        base = _get(latency, "baseline", stats, "median")
        new = _get(latency, "withdrawn", stats, "median")
        stated = _get(latency, "speedup", speedup)
        results.append(_ratio_check(f"latency.speedup.{speedup}", stated, base, new, REL_TOL_LATENCY,
                                    f"baseline median / withdrawn median ({_num(base)} / {_num(new)} ms)", src))
    if latency.get("flops_ratio") is not None and flops is not None:
        results.append(_ratio_check("latency.flops_ratio", latency["flops_ratio"], flops["baseline"]["total"],
                                    flops["withdrawn"]["total"], REL_TOL_LATENCY,
                                    "flops.baseline.total / flops.withdrawn.total", src))
    return results


def _check_memory(memory: dict, src: str) -> list[CheckResult]:
    return [_ratio_check("memory.kv_cache_reduction", memory.get("kv_cache_reduction"),
                         memory["withdrawn"]["kv_cache_bytes"], memory["baseline"]["kv_cache_bytes"], REL_TOL_FLOPS,
                         "1 - withdrawn.kv_cache_bytes / baseline.kv_cache_bytes", src, minus_from_one=True)]


def _accuracy_drop_check(data: dict, limit: float, src: str) -> CheckResult:
    name = "max-accuracy-drop"
    evaluation = data.get("evaluation")
    if evaluation is None:
        return _fail(name, f"--max-accuracy-drop {_num(limit)} needs an evaluation section and the profile has none",
                     src)
    if "baseline" not in evaluation:
        return None  # benchmarks only: benchmark_checks gates them
    base, new = evaluation["baseline"]["accuracy"], evaluation["withdrawn"]["accuracy"]
    if new is None:
        return _fail(name, "evaluation.withdrawn.accuracy is null (no withdrawal layer was chosen)", src)
    drop = (base - new) * 100
    detail = (f"accuracy {base * 100:.2f}% -> {new * 100:.2f}% withdrawn: drop {drop:.2f} points "
              f"{'<=' if drop <= limit + _EPS else '>'} limit {_num(limit)}")
    return _ok(name, detail, src) if drop <= limit + _EPS else _fail(name, detail, src)


def check_profile_dict(data: dict, source: str = "<profile>", *,
                       max_accuracy_drop: float | None = None) -> list[CheckResult]:
    """Internal-consistency checks of a VALIDATED profile dict (see :func:`check_profile`)."""
    src = source
    results = [_ok("schema", f"schema_version {data['schema_version']}, valid", src)]
    sha = data["model"]["config_sha256"]
    results.append(_ok("model.config_sha256", "64 hex digits", src) if _HEX64.match(sha) else
                   _fail("model.config_sha256", f"expected 64 hex digits, got {sha!r}", src))
    for index, item in enumerate(data.get("data") or []):
        label = f"data[{index}]"
        results.append(_ok(f"{label}.sha256", f"{item['name']}: 64 hex digits", src) if _HEX64.match(item["sha256"])
                       else _fail(f"{label}.sha256", f"{item['name']}: expected 64 hex digits, got "
                                  f"{item['sha256']!r}", src))
        count = len(item["sample_ids"])
        results.append(_ok(f"{label}.samples", f"{item['name']}: {count} sample_ids", src)
                       if count == item["samples"] else
                       _fail(f"{label}.samples", f"{item['name']}: samples is {item['samples']} but sample_ids "
                             f"lists {count}", src))

    calibration = data.get("calibration")
    cal_layer = calibration["layer"] if calibration else None
    if calibration is not None:
        results += _check_calibration(calibration, data["model"]["num_layers"], src)
    evaluation = data.get("evaluation")
    if evaluation is not None and "withdrawn" in evaluation:
        withdrawn = evaluation["withdrawn"]
        if calibration is not None:
            results.append(_ok("evaluation.withdrawn.layer", f"= calibration.layer ({_num(cal_layer)})", src)
                           if withdrawn["layer"] == cal_layer else
                           _fail("evaluation.withdrawn.layer", f"is {_num(withdrawn['layer'])} but calibration.layer "
                                 f"is {_num(cal_layer)}", src))
        if (withdrawn["layer"] is None) != (withdrawn["accuracy"] is None):
            results.append(_fail("evaluation.withdrawn.accuracy", f"accuracy is {_num(withdrawn['accuracy'])} with "
                                 f"layer {_num(withdrawn['layer'])}: both must be null or neither", src))
    withdrawal = data.get("withdrawal")
    if withdrawal is not None:
        num_layers = data["model"]["num_layers"]
        if withdrawal["layer"] > num_layers:
            results.append(_fail("withdrawal.layer", f"is {withdrawal['layer']} but the model has {num_layers} "
                                 f"decoder layers (valid 1..{num_layers})", src))
        elif cal_layer is not None:
            results.append(_ok("withdrawal.layer", f"= calibration.layer ({cal_layer})", src)
                           if withdrawal["layer"] == cal_layer else
                           _fail("withdrawal.layer", f"is {withdrawal['layer']} but calibration.layer is "
                                 f"{cal_layer}", src))
        calibrated_kinds = (data.get("calibration") or {}).get("withdraw")
        if calibrated_kinds is not None or withdrawal.get("kinds") is not None:
            measured, calibrated = _kinds_text(withdrawal.get("kinds")), _kinds_text(calibrated_kinds)
            same = measured == calibrated or data.get("calibration") is None
            results.append(_ok("withdrawal.kinds", f"= calibration.withdraw ({calibrated})", src) if same
                           else _fail("withdrawal.kinds", f"withdraws {measured} tokens but the calibration withdrew "
                                      f"{calibrated}", src))
    if data.get("flops") is not None:
        results += _check_flops(data["flops"], src)
    if data.get("latency") is not None:
        results += _check_latency(data["latency"], data.get("flops"), src)
    if data.get("memory") is not None:
        results += _check_memory(data["memory"], src)
    results += benchmark_checks(data, src, max_accuracy_drop)
    if max_accuracy_drop is not None:
        results += [r for r in [_accuracy_drop_check(data, max_accuracy_drop, src)] if r is not None]
    return results


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
    failed = [r for f in files for r in f.results if not r.passed]
    if not failed:
        return None
    shown = "; ".join(f"{r.source}: {r.name}: {r.detail}" for r in failed[:3])
    more = f" (and {len(failed) - 3} more)" if len(failed) > 3 else ""
    return f"{len(failed)} check(s) failed: {shown}{more}"


# ---------------------------------------------------------------------------------------- `vtw compare`

@dataclass(frozen=True)
class GateLimits:
    """Limits for :func:`compare_profiles`; None = gate not requested."""

    max_flops_increase: float | None = None      # percent, withdrawn total FLOPs NEW vs BASE
    max_latency_increase: float | None = None    # percent, each withdrawn median NEW vs BASE
    max_memory_increase: float | None = None     # percent, withdrawn peak RSS and KV cache NEW vs BASE
    max_kl: float | None = None                  # NEW's kl_mean at its chosen layer
    max_accuracy_drop: float | None = None       # points, NEW withdrawn accuracy vs BASE withdrawn accuracy
    same_layer: bool = False                     # K must be equal


@dataclass(frozen=True)
class MetricRow:
    metric: str
    key: str       # stable machine name
    unit: str      # layer | kl | fraction | flops | ms | bytes
    base: float | int | None
    new: float | int | None

    @property
    def delta(self):
        if self.base is None or self.new is None:
            return None
        return self.new - self.base

    @property
    def delta_pct(self):
        if self.delta is None or self.unit in ("layer", "fraction") or self.base == 0:
            return None
        return self.delta / abs(self.base) * 100

    def to_dict(self) -> dict:
        return {"metric": self.key, "label": self.metric, "unit": self.unit, "base": self.base, "new": self.new,
                "delta": self.delta, "delta_pct": self.delta_pct}


@dataclass
class Comparison:
    base_source: str
    new_source: str
    rows: list[MetricRow]
    gates: list[CheckResult]
    notes: list[str]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_dict(self) -> dict:
        return {"base": self.base_source, "new": self.new_source, "ok": self.passed,
                "rows": [r.to_dict() for r in self.rows], "gates": [g.to_dict() for g in self.gates],
                "notes": list(self.notes)}

    def failure_message(self) -> str | None:
        failed = [g for g in self.gates if not g.passed]
        if not failed:
            return None
        return (f"{len(failed)} gate(s) failed ({self.base_source} -> {self.new_source}): "
                + "; ".join(f"{g.name}: {g.detail}" for g in failed))


def _chosen_layer(data: dict):
    layer = _get(data, "calibration", "layer")
    return layer if layer is not None else _get(data, "withdrawal", "layer")


def _kl_at(data: dict, layer):
    if layer is None:
        return None
    for entry in _get(data, "calibration", "per_layer") or []:
        if entry["layer"] == layer:
            return entry["kl_mean"]
    return None


_LATENCY = (("prefill", "prefill_ms", "prefill"), ("decode per token", "decode_ms_per_token", "decode_per_token"),
            ("end to end", "end_to_end_ms", "end_to_end"))


def _rows(base: dict, new: dict) -> list[MetricRow]:
    rows = [
        MetricRow("K (withdrawal layer)", "layer", "layer", _chosen_layer(base), _chosen_layer(new)),
        MetricRow("KL at K (kl_mean)", "kl_at_layer", "kl", _kl_at(base, _chosen_layer(base)),
                  _kl_at(new, _chosen_layer(new))),
        MetricRow("accuracy, baseline", "accuracy.baseline", "fraction",
                  _get(base, "evaluation", "baseline", "accuracy"), _get(new, "evaluation", "baseline", "accuracy")),
        MetricRow("accuracy, withdrawn", "accuracy.withdrawn", "fraction",
                  _get(base, "evaluation", "withdrawn", "accuracy"), _get(new, "evaluation", "withdrawn", "accuracy")),
        MetricRow("FLOPs, baseline", "flops.baseline", "flops", _get(base, "flops", "baseline", "total"),
                  _get(new, "flops", "baseline", "total")),
        MetricRow("FLOPs, withdrawn", "flops.withdrawn", "flops", _get(base, "flops", "withdrawn", "total"),
                  _get(new, "flops", "withdrawn", "total")),
        MetricRow("FLOPs reduction", "flops.reduction", "fraction", _get(base, "flops", "reduction"),
                  _get(new, "flops", "reduction")),
    ]
    for label, stats, key in _LATENCY:
        for variant in ("baseline", "withdrawn"):
            rows.append(MetricRow(f"{label} median, {variant}", f"latency.{key}.{variant}", "ms",
                                  _get(base, "latency", variant, stats, "median"),
                                  _get(new, "latency", variant, stats, "median")))
    for label, key in (("peak RSS", "peak_rss_bytes"), ("KV cache", "kv_cache_bytes")):
        for variant in ("baseline", "withdrawn"):
            rows.append(MetricRow(f"{label}, {variant}", f"memory.{key.removesuffix('_bytes')}.{variant}", "bytes",
                                  _get(base, "memory", variant, key), _get(new, "memory", variant, key)))
    return rows


def _missing(name: str, section: str, base: dict, new: dict) -> CheckResult | None:
    """n/a when ``section`` is in neither profile (the caller fails missing figures on one side)."""
    base_has, new_has = isinstance(base.get(section), dict), isinstance(new.get(section), dict)
    if not base_has and not new_has:
        return _na(name, f"not applicable: no {section} section in either profile")
    return None


def _increase_gate(name: str, section: str, what: str, unit: str, base: dict, new: dict, path: tuple,
                   limit: float, sources: tuple[str, str], suffix: str = "") -> CheckResult:
    skipped = _missing(name, section, base, new)
    if skipped is not None:
        return skipped
    b, n = _get(base, section, *path), _get(new, section, *path)
    key = ".".join((section, *path))
    absent = [side for side, value in (("BASE", b), ("NEW", n)) if value is None]
    if absent:
        where = " and ".join(f"{side} ({sources[0] if side == 'BASE' else sources[1]})" for side in absent)
        return _fail(name, f"{key} is missing or null in {where}; cannot compare {what}")
    if b == 0:
        increase = 0.0 if n == 0 else math.inf
    else:
        increase = (n - b) / abs(b) * 100
    ok = increase <= limit + _EPS
    detail = (f"{what} {format_value(b, unit)} -> {format_value(n, unit)} ({increase:+.2f}%) "
              f"{'<=' if ok else '>'} limit +{_num(limit)}%{suffix}")
    return _ok(name, detail) if ok else _fail(name, detail)


def _device_note(base: dict, new: dict, sources) -> str | None:
    def ident(data):
        return (_get(data, "latency", "device"), _get(data, "latency", "device_name"),
                _get(data, "environment", "device_name"))

    if base.get("latency") is None or new.get("latency") is None:
        return None
    b, n = ident(base), ident(new)
    if b == n:
        return None
    describe = lambda ident_: f"{ident_[0]} '{ident_[1]}'" + (  # noqa: E731
        f" (environment: {ident_[2]})" if ident_[2] != ident_[1] else "")
    return (f"latency was measured on different devices: BASE {describe(b)} vs NEW {describe(n)}; latency deltas "
            "compare different hardware")


def compare_profiles(base: dict, new: dict, limits: GateLimits = GateLimits(), *,
                     base_source: str = "BASE", new_source: str = "NEW") -> Comparison:
    """Side-by-side figures of two validated profile dicts and the requested gates."""
    sources = (base_source, new_source)
    notes = []
    if base["model"].get("config_sha256") != new["model"].get("config_sha256") or \
            base["model"].get("architecture") != new["model"].get("architecture"):
        notes.append(f"the profiles describe different models: BASE {base['model']['name_or_path']} "
                     f"({base['model']['architecture']}, {base['model']['num_layers']} layers) vs NEW "
                     f"{new['model']['name_or_path']} ({new['model']['architecture']}, "
                     f"{new['model']['num_layers']} layers)")
    device_note = _device_note(base, new, sources)
    if device_note:
        notes.append(device_note)
    gates = []
    if limits.max_flops_increase is not None:
        gates.append(_increase_gate("max-flops-increase", "flops", "withdrawn total FLOPs", "flops", base, new,
                                    ("withdrawn", "total"), limits.max_flops_increase, sources))
    if limits.max_latency_increase is not None:
        suffix = " (different devices)" if device_note else ""
        for label, stats, key in _LATENCY:
            gates.append(_increase_gate(f"max-latency-increase ({key})", "latency", f"withdrawn {label} median",
                                        "ms", base, new, ("withdrawn", stats, "median"),
                                        limits.max_latency_increase, sources, suffix))
    if limits.max_memory_increase is not None:
        for label, key in (("peak RSS", "peak_rss_bytes"), ("KV cache", "kv_cache_bytes")):
            gates.append(_increase_gate(f"max-memory-increase ({key.removesuffix('_bytes')})", "memory",
                                        f"withdrawn {label}", "bytes", base, new, ("withdrawn", key),
                                        limits.max_memory_increase, sources))
    if limits.max_kl is not None:
        gates.append(_kl_gate(base, new, limits.max_kl, sources))
    if limits.max_accuracy_drop is not None:
        bench = benchmark_gates(base, new, limits.max_accuracy_drop, sources)
        if not bench or any(_get(d, "evaluation", "baseline") is not None for d in (base, new)):
            gates.append(_accuracy_gate(base, new, limits.max_accuracy_drop, sources))
        gates += bench
    if limits.same_layer:
        gates.append(_same_layer_gate(base, new, sources))
    return Comparison(base_source, new_source, _rows(base, new) + benchmark_rows(base, new), gates, notes)


def _kl_gate(base: dict, new: dict, limit: float, sources) -> CheckResult:
    name = "max-kl"
    skipped = _missing(name, "calibration", base, new)
    if skipped is not None:
        return skipped
    if new.get("calibration") is None:
        return _fail(name, f"NEW ({sources[1]}) has no calibration section; cannot check its KL")
    layer = _chosen_layer(new)
    if layer is None:
        return _fail(name, f"NEW ({sources[1]}) has no chosen layer (calibration.layer is null: no layer met its "
                     "threshold)")
    kl = _kl_at(new, layer)
    if kl is None:
        return _fail(name, f"NEW ({sources[1]}) has no calibration.per_layer entry for its layer {layer}")
    ok = kl <= limit
    detail = f"NEW kl_mean at K={layer} is {_num(kl)} {'<=' if ok else '>'} limit {_num(limit)}"
    return _ok(name, detail) if ok else _fail(name, detail)


def _accuracy_gate(base: dict, new: dict, limit: float, sources) -> CheckResult:
    name = "max-accuracy-drop"
    skipped = _missing(name, "evaluation", base, new)
    if skipped is not None:
        return skipped
    b = _get(base, "evaluation", "withdrawn", "accuracy")
    n = _get(new, "evaluation", "withdrawn", "accuracy")
    absent = [f"{side} ({src})" for side, value, src in (("BASE", b, sources[0]), ("NEW", n, sources[1]))
              if value is None]
    if absent:
        return _fail(name, f"evaluation.withdrawn.accuracy is missing or null in {' and '.join(absent)}")
    drop = (b - n) * 100
    ok = drop <= limit + _EPS
    detail = (f"withdrawn accuracy {b * 100:.2f}% -> {n * 100:.2f}%: drop {drop:.2f} points "
              f"{'<=' if ok else '>'} limit {_num(limit)}")
    return _ok(name, detail) if ok else _fail(name, detail)


def _same_layer_gate(base: dict, new: dict, sources) -> CheckResult:
    name = "same-layer"
    has = lambda d: d.get("calibration") is not None or d.get("withdrawal") is not None  # noqa: E731
    if not has(base) and not has(new):
        return _na(name, "not applicable: neither profile has a calibration or withdrawal section")
    if not has(base) or not has(new):
        side = "BASE" if not has(base) else "NEW"
        return _fail(name, f"{side} ({sources[0] if side == 'BASE' else sources[1]}) has no calibration or "
                     "withdrawal section; cannot compare K")
    b, n = _chosen_layer(base), _chosen_layer(new)
    if b != n:
        return _fail(name, f"K differs: BASE {_num(b)} vs NEW {_num(n)}")
    kinds_b, kinds_n = _chosen_kinds(base), _chosen_kinds(new)
    if kinds_b != kinds_n:  # the same K withdrawing other tokens is another configuration
        return _fail(name, f"K = {_num(b)} in both, but the withdrawn tokens differ: BASE {kinds_b} vs NEW {kinds_n}")
    return _ok(name, f"K = {_num(b)} in both" + (f", withdrawing {kinds_b}" if kinds_b != "all vision" else ""))


def _chosen_kinds(data: dict) -> str:
    return _kinds_text(sorted(_get(data, "calibration", "withdraw") or _get(data, "withdrawal", "kinds") or []))


def _kinds_text(kinds) -> str:
    """Which vision tokens a profile withdraws, comparable and printable; absent means all of them."""
    return ",".join(kinds) if kinds else "all vision"


def compare_files(base_path: Path | str, new_path: Path | str, limits: GateLimits = GateLimits()) -> Comparison:
    """Read + validate both files (VtwError, exit 2, when one cannot be) and compare them."""
    base = read_profile_dict(base_path)
    new = read_profile_dict(new_path)
    return compare_profiles(base, new, limits, base_source=str(base_path), new_source=str(new_path))


# ------------------------------------------------------------------------------------------ formatting

def _si(value: float, suffix: str) -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3f} {prefix}{suffix}"
    return f"{value:g} {suffix}"


def _binary(value: float) -> str:
    for factor, prefix in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(value) >= factor:
            return f"{value / factor:.1f} {prefix}"
    return f"{value:g} B"


def format_value(value, unit: str) -> str:
    """Human text for a figure of ``unit`` (layer, kl, fraction, flops, ms, bytes)."""
    if value is None:
        return "—"
    if unit == "layer":
        return str(value)
    if unit == "kl":
        return f"{value:.4g}"
    if unit == "fraction":
        return f"{value * 100:.2f}%"
    if unit == "flops":
        return _si(value, "FLOPs")
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "bytes":
        return _binary(value)
    return _num(value)


def format_delta(row: MetricRow) -> tuple[str, str]:
    """(absolute delta, percent delta) as text; '—' where not defined."""
    delta = row.delta
    if delta is None:
        return "—", "—"
    if row.unit == "fraction":
        absolute = f"{delta * 100:+.2f} pt"
    elif row.unit == "layer":
        absolute = f"{delta:+d}"
    else:
        absolute = ("+" if delta >= 0 else "-") + format_value(abs(delta), row.unit)
    pct = row.delta_pct
    return absolute, ("—" if pct is None else f"{pct:+.2f}%")
