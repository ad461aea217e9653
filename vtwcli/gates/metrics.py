"""The figures `vtw compare` sets side by side and gates on: ONE table of metric specs.

Each :class:`MetricSpec` names a figure once: its machine key, its label, where it is in a typed
:class:`~vtwcli.profile.Profile` (``path``, the YAML key path; ``("choice", ...)`` reads
:func:`~vtwcli.profile.choice_of`), its unit and which direction is better. A spec with a
:class:`Gate` also drives one increase gate of :class:`~vtwcli.gates.compare.GateLimits`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vtwcli.gates.results import num
from vtwcli.profile import LATENCY_FIGURES, VARIANTS, Profile, choice_of

__all__ = ["Gate", "MetricSpec", "METRICS", "MEMORY_FIGURES", "metric", "value_of", "MetricRow",
           "format_value", "format_delta"]


@dataclass(frozen=True)
class Gate:
    """A gate on a metric, by ``kind``: ``increase``: NEW may exceed BASE by at most ``GateLimits.<limit>``
    percent; ``minimum``: NEW must be at least the limit; ``drop``: NEW may fall below BASE by at most the
    limit, in percent."""

    limit: str                    # the GateLimits field (and --option, dashed)
    name: str                     # the gate's name in the output
    label: str                    # what its detail line calls the figure
    device_bound: bool = False    # an absolute figure of the hardware: say so when devices, machines or noise differ
    kind: str = "increase"        # increase | minimum | drop


@dataclass(frozen=True)
class MetricSpec:
    key: str                      # stable machine name (JSON rows)
    label: str                    # the comparison table's label
    path: tuple[str, ...]         # where it is in the profile
    unit: str                     # layer | kl | fraction | flops | ms | bytes | ratio
    direction: str                # lower | higher (is better) | none
    gates: tuple[Gate, ...] = ()


# (label, key under memory.<variant>) of the memory figures
MEMORY_FIGURES = (("peak RSS", "peak_rss_bytes"), ("KV cache", "kv_cache_bytes"))


def _latency_specs():
    for label, stats, key in LATENCY_FIGURES:
        for variant in VARIANTS:
            gate = Gate("max_latency_increase", f"max-latency-increase ({key})", f"withdrawn {label} median",
                        device_bound=True) if variant == "withdrawn" else None
            yield MetricSpec(f"latency.{key}.{variant}", f"{label} median, {variant}",
                             ("latency", variant, stats, "median"), "ms", "lower", (gate,) if gate else ())


def _speedup_specs():
    """Speedups: the median per-pair ratio cancels most machine drift, so they are what CI can gate latency on;
    the gates read the prefill speedup (what withdrawal saves; decode barely changes)."""
    for label, _, key in LATENCY_FIGURES:
        gates = (Gate("min_speedup", "min-speedup (prefill)", "prefill speedup", kind="minimum"),
                 Gate("max_speedup_drop", "max-speedup-drop (prefill)", "prefill speedup", kind="drop")) \
            if key == "prefill" else ()
        yield MetricSpec(f"latency.speedup.{key}", f"{label} speedup", ("latency", "speedup", key), "ratio", "higher",
                         gates)


def _memory_specs():
    for label, figure in MEMORY_FIGURES:
        short = figure.removesuffix("_bytes")
        for variant in VARIANTS:
            gate = Gate("max_memory_increase", f"max-memory-increase ({short})", f"withdrawn {label}") \
                if variant == "withdrawn" else None
            yield MetricSpec(f"memory.{short}.{variant}", f"{label}, {variant}", ("memory", variant, figure), "bytes",
                             "lower", (gate,) if gate else ())


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("layer", "K (withdrawal layer)", ("choice", "layer"), "layer", "none"),
    MetricSpec("kl_at_layer", "KL at K (kl_mean)", ("choice", "kl_mean"), "kl", "lower"),
    MetricSpec("accuracy.baseline", "accuracy, baseline", ("evaluation", "baseline", "accuracy"), "fraction", "higher"),
    MetricSpec("accuracy.withdrawn", "accuracy, withdrawn", ("evaluation", "withdrawn", "accuracy"), "fraction",
               "higher"),
    MetricSpec("flops.baseline", "FLOPs, baseline", ("flops", "baseline", "total"), "flops", "lower"),
    MetricSpec("flops.withdrawn", "FLOPs, withdrawn", ("flops", "withdrawn", "total"), "flops", "lower",
               (Gate("max_flops_increase", "max-flops-increase", "withdrawn total FLOPs"),)),
    MetricSpec("flops.reduction", "FLOPs reduction", ("flops", "reduction"), "fraction", "higher"),
    *_latency_specs(),
    *_speedup_specs(),
    *_memory_specs(),
)


def metric(key: str) -> MetricSpec:
    """The spec of ``key``."""
    return next(spec for spec in METRICS if spec.key == key)


def value_of(profile: Profile, path: tuple[str, ...]):
    """The figure at ``path`` in ``profile``, or None when a step is absent or null."""
    value = choice_of(profile) if path[0] == "choice" else getattr(profile, path[0], None)
    for name in path[1:]:
        if value is None:
            return None
        value = getattr(value, name, None)
    return value


@dataclass(frozen=True)
class MetricRow:
    metric: str
    key: str       # stable machine name
    unit: str      # layer | kl | fraction | flops | ms | bytes
    base: float | int | None
    new: float | int | None

    @classmethod
    def of(cls, spec: MetricSpec, base: Profile, new: Profile) -> "MetricRow":
        return cls(spec.label, spec.key, spec.unit, value_of(base, spec.path), value_of(new, spec.path))

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
    if unit == "ratio":
        return f"{value:.2f}x"
    if unit == "bytes":
        return _binary(value)
    return num(value)


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
