"""`vtw compare`: the figures of two profiles side by side, and the CI gates requested between them.

Gate policy (docs/profile-rules.md, "CI gates"): a requested gate whose section is absent from BOTH
profiles is reported "n/a" (not applicable, stated in the output, does not fail); a gate whose figures
are present in one profile but missing or null in the other FAILS, so a pipeline that silently stops
measuring something never passes a gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from vtwcli.gates.benchmarks import benchmark_gates, benchmark_rows
from vtwcli.gates.check import accuracy_drop_detail, kinds_text
from vtwcli.gates.metrics import METRICS, MetricRow, MetricSpec, format_value, metric, value_of
from vtwcli.gates.results import EPS, CheckResult, failed, not_applicable, num, passed
from vtwcli.profile import Profile, choice_of, load_profile, typed_profile

__all__ = ["GateLimits", "Comparison", "compare_profiles", "compare_files"]


@dataclass(frozen=True)
class GateLimits:
    """Limits for :func:`compare_profiles`; None = gate not requested."""

    max_flops_increase: float | None = None      # percent, withdrawn total FLOPs NEW vs BASE
    max_latency_increase: float | None = None    # percent, each withdrawn median NEW vs BASE
    min_speedup: float | None = None             # NEW's prefill speedup (median per-pair ratio) at least this
    max_speedup_drop: float | None = None        # percent, NEW's prefill speedup below BASE's
    max_memory_increase: float | None = None     # percent, withdrawn peak RSS and KV cache NEW vs BASE
    max_kl: float | None = None                  # NEW's kl_mean at its chosen layer
    max_accuracy_drop: float | None = None       # points, NEW withdrawn accuracy vs BASE withdrawn accuracy
    same_layer: bool = False                     # K must be equal

    def __post_init__(self):
        """A NaN limit failed every gate as a "failed check" (exit 1); it is bad input (exit 2)."""
        from dataclasses import fields

        from vtwcli.errors import VtwError

        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and math.isnan(value):
                raise VtwError(f"--{field.name.replace('_', '-')} nan: give a number")


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
        failures = [g for g in self.gates if not g.passed]
        if not failures:
            return None
        return (f"{len(failures)} gate(s) failed ({self.base_source} -> {self.new_source}): "
                + "; ".join(f"{g.name}: {g.detail}" for g in failures))


def _missing(name: str, section: str, base: Profile, new: Profile) -> CheckResult | None:
    """n/a when ``section`` is in neither profile (the caller fails missing figures on one side)."""
    if getattr(base, section) is None and getattr(new, section) is None:
        return not_applicable(name, f"not applicable: no {section} section in either profile")
    return None


def _absent(values, sources) -> list[str]:
    """``SIDE (source)`` for each of (BASE, NEW) whose figure is missing or null."""
    return [f"{side} ({source})" for side, value, source in zip(("BASE", "NEW"), values, sources) if value is None]


def _gate_outcome(gate, b, n, limit: float) -> tuple[bool, str]:
    """(passed, '<change> <op> <limit>') of one gate of ``gate.kind`` on BASE ``b`` and NEW ``n``."""
    if gate.kind == "minimum":
        ok = n >= limit - EPS
        return ok, f"{'>=' if ok else '<'} minimum {num(limit)}x"
    if b == 0:
        change = 0.0 if n == 0 else math.inf
    else:
        change = (n - b) / abs(b) * 100
    if gate.kind == "drop":
        ok = -change <= limit + EPS
        return ok, f"({change:+.2f}%) {'within' if ok else 'beyond'} limit -{num(limit)}%"
    ok = change <= limit + EPS
    return ok, f"({change:+.2f}%) {'<=' if ok else '>'} limit +{num(limit)}%"


def _metric_gate(spec: MetricSpec, gate, base: Profile, new: Profile, limit: float, sources: tuple[str, str],
                 suffix: str = "") -> CheckResult:
    if (skipped := _missing(gate.name, spec.path[0], base, new)) is not None:
        return skipped
    b, n = value_of(base, spec.path), value_of(new, spec.path)
    absent = _absent((0 if gate.kind == "minimum" else b, n), sources)  # a minimum reads NEW only
    if absent:
        return failed(gate.name, f"{'.'.join(spec.path)} is missing or null in {' and '.join(absent)}; cannot "
                      f"compare {gate.label}")
    ok, outcome = _gate_outcome(gate, b, n, limit)
    if gate.kind == "minimum":
        detail = f"NEW {gate.label} {format_value(n, spec.unit)} {outcome} (BASE {format_value(b, spec.unit)}){suffix}"
    else:
        detail = f"{gate.label} {format_value(b, spec.unit)} -> {format_value(n, spec.unit)} {outcome}{suffix}"
    return passed(gate.name, detail) if ok else failed(gate.name, detail)


def _device_note(base: Profile, new: Profile) -> str | None:
    if base.latency is None or new.latency is None:
        return None

    def ident(profile: Profile):
        return profile.latency.device, profile.latency.device_name, profile.environment.device_name

    b, n = ident(base), ident(new)
    if b == n:
        return None
    describe = lambda ident_: f"{ident_[0]} '{ident_[1]}'" + (  # noqa: E731
        f" (environment: {ident_[2]})" if ident_[2] != ident_[1] else "")
    return (f"latency was measured on different devices: BASE {describe(b)} vs NEW {describe(n)}; latency deltas "
            "compare different hardware")


def _conditions_note(base: Profile, new: Profile) -> str | None:
    """Absolute latency compares machines as much as withdrawal: say when the timing conditions differ (another
    machine, thread count, or figures flagged noisy) so a reader gates on the speedups instead."""
    if base.latency is None or new.latency is None:
        return None
    differences = []
    for side, profile in (("BASE", base), ("NEW", new)):
        if profile.latency.noise is not None and profile.latency.noise.noisy:
            differences.append(f"{side}'s latency is flagged noisy")
    if base.environment.platform != new.environment.platform:
        differences.append(f"machines differ ({base.environment.platform} vs {new.environment.platform})")
    if base.latency.threads != new.latency.threads:
        differences.append(f"threads differ ({base.latency.threads} vs {new.latency.threads})")
    if not differences:
        return None
    return ("absolute latency compares the conditions as much as withdrawal: " + "; ".join(differences)
            + "; gate on --min-speedup / --max-speedup-drop, which compare ratios timed in pairs")


def _data_note(base: Profile, new: Profile) -> str | None:
    """Accuracy and KL on other samples are other figures: name how the data differs."""
    if not base.data or not new.data:
        return None
    b, n = ({entry.name: entry for entry in p.data} for p in (base, new))
    differences = []
    if set(b) != set(n):
        differences.append(f"datasets {', '.join(sorted(b))} vs {', '.join(sorted(n))}")
    for name in sorted(set(b) & set(n)):
        if b[name].sha256 != n[name].sha256:
            differences.append(f"{name}: file content differs (sha256 {b[name].sha256[:12]}... vs "
                               f"{n[name].sha256[:12]}...)")
        elif tuple(b[name].sample_ids) != tuple(n[name].sample_ids):
            differences.append(f"{name}: other samples ({b[name].samples} vs {n[name].samples}, ids differ)")
    if not differences:
        return None
    return "the profiles were calibrated on different data: " + "; ".join(differences) + \
        "; KL and accuracy deltas compare the data as much as the model"


def _versions_note(base: Profile, new: Profile) -> str | None:
    keys = ("vtwcli", "transformers", "torch")
    differing = [f"{key} {getattr(base.environment, key)} vs {getattr(new.environment, key)}" for key in keys
                 if getattr(base.environment, key) != getattr(new.environment, key)]
    return None if not differing else "different software: " + ", ".join(differing)


def _model_note(base: Profile, new: Profile) -> str | None:
    b, n = base.model, new.model
    if b.config_sha256 == n.config_sha256 and b.architecture == n.architecture:
        return None
    return (f"the profiles describe different models: BASE {b.name_or_path} ({b.architecture}, {b.num_layers} "
            f"layers) vs NEW {n.name_or_path} ({n.architecture}, {n.num_layers} layers)")


def _noisy_suffix(new: Profile) -> str:
    noise = new.latency.noise if new.latency is not None else None
    return " (NEW's latency is flagged noisy)" if noise is not None and noise.noisy else ""


def _kl_gate(base: Profile, new: Profile, limit: float, sources) -> CheckResult:
    name = "max-kl"
    if (skipped := _missing(name, "calibration", base, new)) is not None:
        return skipped
    if new.calibration is None:
        return failed(name, f"NEW ({sources[1]}) has no calibration section; cannot check its KL")
    choice = choice_of(new)
    if choice.layer is None:
        return failed(name, f"NEW ({sources[1]}) has no chosen layer (calibration.layer is null: no layer met its "
                      "threshold)")
    if choice.kl_mean is None:
        return failed(name, f"NEW ({sources[1]}) has no calibration.per_layer entry for its layer {choice.layer}")
    ok = choice.kl_mean <= limit
    detail = f"NEW kl_mean at K={choice.layer} is {num(choice.kl_mean)} {'<=' if ok else '>'} limit {num(limit)}"
    return passed(name, detail) if ok else failed(name, detail)


def _accuracy_gate(base: Profile, new: Profile, limit: float, sources) -> CheckResult:
    name = "max-accuracy-drop"
    if (skipped := _missing(name, "evaluation", base, new)) is not None:
        return skipped
    path = metric("accuracy.withdrawn").path
    b, n = value_of(base, path), value_of(new, path)
    absent = _absent((b, n), sources)
    if absent:
        return failed(name, f"evaluation.withdrawn.accuracy is missing or null in {' and '.join(absent)}")
    ok, detail = accuracy_drop_detail(b, n, limit, label="withdrawn accuracy",
                                      samples=new.evaluation.samples if new.evaluation is not None else None)
    return passed(name, detail) if ok else failed(name, detail)


def _same_layer_gate(base: Profile, new: Profile, sources) -> CheckResult:
    name = "same-layer"
    has = lambda p: p.calibration is not None or p.withdrawal is not None  # noqa: E731
    if not has(base) and not has(new):
        return not_applicable(name, "not applicable: neither profile has a calibration or withdrawal section")
    if not has(base) or not has(new):
        side = "BASE" if not has(base) else "NEW"
        return failed(name, f"{side} ({sources[0] if side == 'BASE' else sources[1]}) has no calibration or "
                      "withdrawal section; cannot compare K")
    b, n = choice_of(base), choice_of(new)
    if b.layer != n.layer:
        return failed(name, f"K differs: BASE {num(b.layer)} vs NEW {num(n.layer)}")
    kinds_b, kinds_n = kinds_text(sorted(b.kinds or ())), kinds_text(sorted(n.kinds or ()))
    if kinds_b != kinds_n:  # the same K withdrawing other tokens is another configuration
        return failed(name, f"K = {num(b.layer)} in both, but the withdrawn tokens differ: BASE {kinds_b} vs NEW "
                      f"{kinds_n}")
    return passed(name, f"K = {num(b.layer)} in both" + (f", withdrawing {kinds_b}" if kinds_b != "all vision" else ""))


def _typed(profile, source: str) -> Profile:
    return profile if isinstance(profile, Profile) else typed_profile(profile, source)


def compare_profiles(base, new, limits: GateLimits = GateLimits(), *, base_source: str = "BASE",
                     new_source: str = "NEW") -> Comparison:
    """Side-by-side figures of two validated profiles (typed, or dicts) and the requested gates."""
    base, new = _typed(base, base_source), _typed(new, new_source)
    sources = (base_source, new_source)
    device_note, conditions_note = _device_note(base, new), _conditions_note(base, new)
    notes = [note for note in (_model_note(base, new), _data_note(base, new), _versions_note(base, new), device_note,
                               conditions_note) if note]
    bound_suffix = " (different devices)" if device_note else " (see note: conditions differ)" if conditions_note \
        else ""
    gates = []
    for spec in METRICS:
        for gate in spec.gates:
            limit = getattr(limits, gate.limit)
            if limit is not None:
                suffix = bound_suffix if gate.device_bound else _noisy_suffix(new) if spec.unit == "ratio" else ""
                gates.append(_metric_gate(spec, gate, base, new, limit, sources, suffix))
    if limits.max_kl is not None:
        gates.append(_kl_gate(base, new, limits.max_kl, sources))
    if limits.max_accuracy_drop is not None:
        bench = benchmark_gates(base, new, limits.max_accuracy_drop, sources)
        if not bench or any(p.evaluation is not None and p.evaluation.withdrawn is not None for p in (base, new)):
            gates.append(_accuracy_gate(base, new, limits.max_accuracy_drop, sources))
        gates += bench
    if limits.same_layer:
        gates.append(_same_layer_gate(base, new, sources))
    rows = [row for row in (MetricRow.of(spec, base, new) for spec in METRICS)
            if row.base is not None or row.new is not None] + benchmark_rows(base, new)  # no row nobody has
    return Comparison(base_source, new_source, rows, gates, notes)


def compare_files(base_path: Path | str, new_path: Path | str, limits: GateLimits = GateLimits()) -> Comparison:
    """Read + validate both files (VtwError, exit 2, when one cannot be) and compare them."""
    return compare_profiles(load_profile(base_path), load_profile(new_path), limits, base_source=str(base_path),
                            new_source=str(new_path))
