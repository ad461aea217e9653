"""`vtw compare`: the figures of two profiles side by side, and the CI gates requested between them.

Gate policy (docs/profile-schema.md, "CI gates"): a requested gate whose section is absent from BOTH
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
    max_memory_increase: float | None = None     # percent, withdrawn peak RSS and KV cache NEW vs BASE
    max_kl: float | None = None                  # NEW's kl_mean at its chosen layer
    max_accuracy_drop: float | None = None       # points, NEW withdrawn accuracy vs BASE withdrawn accuracy
    same_layer: bool = False                     # K must be equal


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


def _increase_gate(spec: MetricSpec, base: Profile, new: Profile, limit: float, sources: tuple[str, str],
                   suffix: str = "") -> CheckResult:
    gate = spec.gate
    if (skipped := _missing(gate.name, spec.path[0], base, new)) is not None:
        return skipped
    b, n = value_of(base, spec.path), value_of(new, spec.path)
    absent = _absent((b, n), sources)
    if absent:
        return failed(gate.name, f"{'.'.join(spec.path)} is missing or null in {' and '.join(absent)}; cannot "
                      f"compare {gate.label}")
    if b == 0:
        increase = 0.0 if n == 0 else math.inf
    else:
        increase = (n - b) / abs(b) * 100
    ok = increase <= limit + EPS
    detail = (f"{gate.label} {format_value(b, spec.unit)} -> {format_value(n, spec.unit)} ({increase:+.2f}%) "
              f"{'<=' if ok else '>'} limit +{num(limit)}%{suffix}")
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


def _model_note(base: Profile, new: Profile) -> str | None:
    b, n = base.model, new.model
    if b.config_sha256 == n.config_sha256 and b.architecture == n.architecture:
        return None
    return (f"the profiles describe different models: BASE {b.name_or_path} ({b.architecture}, {b.num_layers} "
            f"layers) vs NEW {n.name_or_path} ({n.architecture}, {n.num_layers} layers)")


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
    device_note = _device_note(base, new)
    notes = [note for note in (_model_note(base, new), device_note) if note]
    gates = []
    for spec in METRICS:
        limit = getattr(limits, spec.gate.limit) if spec.gate is not None else None
        if limit is not None:
            suffix = " (different devices)" if device_note and spec.gate.device_bound else ""
            gates.append(_increase_gate(spec, base, new, limit, sources, suffix))
    if limits.max_kl is not None:
        gates.append(_kl_gate(base, new, limits.max_kl, sources))
    if limits.max_accuracy_drop is not None:
        bench = benchmark_gates(base, new, limits.max_accuracy_drop, sources)
        if not bench or any(p.evaluation is not None and p.evaluation.withdrawn is not None for p in (base, new)):
            gates.append(_accuracy_gate(base, new, limits.max_accuracy_drop, sources))
        gates += bench
    if limits.same_layer:
        gates.append(_same_layer_gate(base, new, sources))
    rows = [MetricRow.of(spec, base, new) for spec in METRICS] + benchmark_rows(base, new)
    return Comparison(base_source, new_source, rows, gates, notes)


def compare_files(base_path: Path | str, new_path: Path | str, limits: GateLimits = GateLimits()) -> Comparison:
    """Read + validate both files (VtwError, exit 2, when one cannot be) and compare them."""
    return compare_profiles(load_profile(base_path), load_profile(new_path), limits, base_source=str(base_path),
                            new_source=str(new_path))
