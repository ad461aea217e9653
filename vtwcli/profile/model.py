"""The typed profile: frozen dataclasses mirroring the documented sections, built from validated data.

:class:`Profile` is the currency inside the package: gates, commands and ``apply_profile`` read it.
``raw`` keeps the whole dict (unknown keys included) so :func:`profile_to_dict` loses nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vtwcli.profile.files import read_profile_dict, write_profile
from vtwcli.profile.schema import validate_profile_dict
from vtwcli.profile.yaml_text import ordered, plain

__all__ = [
    "Profile", "ToolInfo", "ModelInfo", "DataInfo", "LayerKL", "Bootstrap", "DatasetCurve", "SampleKL",
    "CalibrationCost", "AttentionShare", "Selection", "SelectionWarning", "SamplesAuto", "AutoRoundRecord",
    "Calibration", "Accuracy", "WithdrawnAccuracy", "AccuracyInterval", "Benchmark", "Evaluation",
    "Withdrawal", "TokenCounts", "FlopsBreakdown", "ContextTokens", "DecodeFlops", "AnalyticFlops", "Flops",
    "TimingStats", "LatencyRun", "Speedup", "SpeedupInterval", "SpeedupIntervals", "LatencyNoise", "Latency", "MemoryRun", "Memory", "Environment", "Choice",
    "VerificationCheck", "VerificationData", "DerivedAdapter", "Verification",
    "VARIANTS", "FLOPS_COMPONENTS", "LATENCY_FIGURES",
    "choice_of", "first_layer_under", "model_differences", "MATCHED_MODEL_KEYS", "typed_profile", "profile_from_dict",
    "load_profile", "profile_to_dict", "save_profile", "as_profile",
]


@dataclass(frozen=True)
class ToolInfo:
    name: str
    command: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    name_or_path: str
    architecture: str
    num_layers: int
    dtype: str
    device: str
    attn_implementation: str
    config_sha256: str


@dataclass(frozen=True)
class DataInfo:
    name: str
    path: str
    sha256: str
    samples: int
    sample_ids: tuple[str, ...]
    seed: int | None = None


@dataclass(frozen=True)
class LayerKL:
    layer: int
    kl_mean: float
    kl_max: float | None = None
    kl_p90: float | None = None
    kl_ci_low: float | None = None
    kl_ci_high: float | None = None


@dataclass(frozen=True)
class Bootstrap:
    resamples: int
    seed: int
    confidence: float


@dataclass(frozen=True)
class DatasetCurve:
    name: str
    layer: int | None
    per_layer: tuple[LayerKL, ...]


@dataclass(frozen=True)
class SampleKL:
    dataset: str
    id: str
    kl: tuple[float, ...]


@dataclass(frozen=True)
class CalibrationCost:
    full_forward_equivalents: float     # of the KL search over every candidate K
    seconds: float                      # the KL search (not the accuracy evaluation)
    evaluation_seconds: float | None = None   # the accuracy evaluation, full and at K (null: --no-eval)
    # False where the candidates recompute the text before the first image (windowed or conv / recurrent
    # layers among them); its work is in full_forward_equivalents either way. None: profiles from before.
    shared_prefix: bool | None = None


@dataclass(frozen=True)
class AttentionShare:
    layer: int
    system: float
    vision: float
    text: float


@dataclass(frozen=True)
class SelectionWarning:
    code: str
    message: str


@dataclass(frozen=True)
class AutoRoundRecord:
    samples: int
    modal_k: str | None
    modal_share: float
    straddles: bool


@dataclass(frozen=True)
class SamplesAuto:
    target: float
    step: int
    budget: int | None
    stopped: str
    samples: int
    rounds: tuple[AutoRoundRecord, ...]


@dataclass(frozen=True)
class Selection:
    """How K was chosen (``rule``: mean, upper, stable=P) and the bootstrap distribution of K."""

    rule: str
    k_bootstrap: dict  # K as text ("4", or "none") -> fraction of resamples
    warnings: tuple[SelectionWarning, ...] = ()
    samples_auto: SamplesAuto | None = None


@dataclass(frozen=True)
class Calibration:
    criterion: str
    direction: str
    threshold: float
    min_layer: int
    layer: int | None
    per_layer: tuple[LayerKL, ...]
    withdraw: tuple[str, ...] | None = None
    max_layer: int | None = None  # last candidate where it is not L - 1 (withdrawal not exact beyond it)
    max_layer_reason: str | None = None
    bootstrap: Bootstrap | None = None
    per_dataset: tuple[DatasetCurve, ...] | None = None
    per_sample: tuple[SampleKL, ...] | None = None
    cost: CalibrationCost | None = None
    diagnose: tuple[AttentionShare, ...] | None = None
    selection: Selection | None = None  # None in profiles written before --select: the mean rule

    def kl_at(self, layer: int | None) -> LayerKL | None:
        return next((entry for entry in self.per_layer if entry.layer == layer), None)


@dataclass(frozen=True)
class Accuracy:
    accuracy: float
    accuracy_ci: tuple[float, ...] | None = None  # Wilson interval (low, high)


@dataclass(frozen=True)
class WithdrawnAccuracy:
    accuracy: float | None
    layer: int | None
    accuracy_ci: tuple[float, ...] | None = None


@dataclass(frozen=True)
class AccuracyInterval:
    method: str
    confidence: float


@dataclass(frozen=True)
class Benchmark:
    """One lmms-eval task scored without and with the profile (`vtw eval`, vtwcli/benchmarks.py)."""

    task: str
    metric: str
    full: float
    withdrawn: float
    samples: int
    layer: int
    lmms_eval: str
    higher_is_better: bool = True
    model: str | None = None


@dataclass(frozen=True)
class Evaluation:
    """Accuracy on the calibration datasets (`vtw calibrate`; samples, baseline and withdrawn go together)
    and/or on lmms-eval benchmarks (`vtw eval`)."""

    samples: int | None = None
    baseline: Accuracy | None = None
    withdrawn: WithdrawnAccuracy | None = None
    interval: AccuracyInterval | None = None
    benchmarks: tuple[Benchmark, ...] | None = None


@dataclass(frozen=True)
class Withdrawal:
    layer: int
    kinds: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TokenCounts:
    vision: int
    text: int
    images: int | None = None
    videos: int | None = None
    frames: int | None = None


@dataclass(frozen=True)
class FlopsBreakdown:
    total: int
    vision_tower: int
    projector: int
    language_model: int
    lm_head: int


@dataclass(frozen=True)
class ContextTokens:
    baseline: int
    withdrawn: int


@dataclass(frozen=True)
class DecodeFlops:
    baseline: int
    withdrawn: int
    context_tokens: ContextTokens


@dataclass(frozen=True)
class AnalyticFlops:
    baseline: dict
    withdrawn: dict
    covers: tuple[str, ...] | None = None  # components the closed form covers (None: older profiles, all)
    decode_per_token: dict | None = None


@dataclass(frozen=True)
class Flops:
    convention: str
    counter: str
    tokens: TokenCounts
    baseline: FlopsBreakdown
    withdrawn: FlopsBreakdown
    reduction: float
    decode_per_token: DecodeFlops | None = None
    analytic: AnalyticFlops | None = None
    fvcore: dict | None = None


@dataclass(frozen=True)
class TimingStats:
    median: float
    p10: float
    p90: float
    stdev: float | None
    runs: int


@dataclass(frozen=True)
class LatencyRun:
    prefill_ms: TimingStats
    end_to_end_ms: TimingStats
    decode_ms_per_token: TimingStats | None = None


@dataclass(frozen=True)
class Speedup:
    prefill: float
    end_to_end: float
    decode_per_token: float | None = None


@dataclass(frozen=True)
class SpeedupInterval:
    """Of one speedup figure: the 95% confidence interval of the median per-pair speedup (null: too few
    pairs) and the spread of the pairs (p10, p90)."""

    p10: float
    p90: float
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class SpeedupIntervals:
    prefill: SpeedupInterval
    end_to_end: SpeedupInterval
    decode_per_token: SpeedupInterval | None = None


@dataclass(frozen=True)
class LatencyNoise:
    """Whether the latency figures are usable, and the conditions they were taken in."""

    noisy: bool
    reasons: tuple[str, ...] = ()
    ci_target: float | None = None      # relative half-width of the 95% intervals aimed at
    max_time_s: float | None = None     # the time budget
    seconds: float | None = None        # timed seconds spent
    load_start: float | None = None     # 1-minute load average before / after the timing
    load_end: float | None = None
    cpus: int | None = None


@dataclass(frozen=True)
class Latency:
    device: str
    device_name: str
    baseline: LatencyRun
    withdrawn: LatencyRun
    speedup: Speedup
    threads: int | None = None
    new_tokens: int | None = None
    flops_ratio: float | None = None
    speedup_interval: SpeedupIntervals | None = None   # absent in profiles measured before pairs
    pairs: int | None = None
    noise: LatencyNoise | None = None
    notes: tuple[str, ...] = ()        # what a reader needs to read the figures (e.g. why it is a slowdown)


@dataclass(frozen=True)
class MemoryRun:
    peak_rss_bytes: int
    kv_cache_bytes: int
    cuda_peak_allocated_bytes: int | None = None
    cuda_peak_reserved_bytes: int | None = None
    # conv / recurrent states (models with such layers only): fixed size, withdrawal saves nothing there
    state_bytes: int | None = None


@dataclass(frozen=True)
class Memory:
    baseline: MemoryRun
    withdrawn: MemoryRun
    kv_cache_reduction: float | None = None


@dataclass(frozen=True)
class VerificationCheck:
    name: str
    passed: bool
    detail: str
    layer: int | None = None
    max_abs_diff: float | None = None
    tolerance: float | None = None


@dataclass(frozen=True)
class VerificationData:
    name: str
    sha256: str
    sample_ids: tuple[str, ...]


@dataclass(frozen=True)
class DerivedAdapter:
    derived: bool
    notes: str | None = None


@dataclass(frozen=True)
class Verification:
    """`vtw verify`: whether withdrawal was exact on this model, with which versions, checks and tolerance."""

    passed: bool
    vtwcli: str
    transformers: str
    config_sha256: str
    dtype: str
    reference: str
    relative_tolerance: float
    layers: tuple[int, ...]
    checks: tuple[VerificationCheck, ...]
    torch: str | None = None
    weights_sha256: str | None = None
    new_tokens: int | None = None
    data: tuple[VerificationData, ...] | None = None
    adapter: DerivedAdapter | None = None


@dataclass(frozen=True)
class Environment:
    vtwcli: str
    python: str
    torch: str
    transformers: str
    platform: str
    device_name: str


@dataclass(frozen=True)
class Profile:
    """A validated profile. Typed fields mirror the documented sections; ``raw`` keeps the whole dict
    (unknown keys included) so :func:`profile_to_dict` loses nothing."""

    schema_version: int
    created_at: str
    model: ModelInfo
    environment: Environment
    tool: ToolInfo | None = None
    data: tuple[DataInfo, ...] = ()
    calibration: Calibration | None = None
    evaluation: Evaluation | None = None
    withdrawal: Withdrawal | None = None
    flops: Flops | None = None
    latency: Latency | None = None
    memory: Memory | None = None
    verification: Verification | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)
    source: str = field(default="<profile>", compare=False, repr=False)

    @property
    def kinds(self) -> tuple[str, ...] | None:
        """Which vision tokens are withdrawn (see :func:`choice_of`); None: all."""
        return choice_of(self).kinds

    @property
    def layer(self) -> int | None:
        """The withdrawal layer K (see :func:`choice_of`)."""
        return choice_of(self).layer


# Facts of the profile's shape that measurements, checks and renderers share.
VARIANTS = ("baseline", "withdrawn")
FLOPS_COMPONENTS = tuple(f.name for f in dataclasses.fields(FlopsBreakdown) if f.name != "total")
# (label, key under latency.<variant>, key under latency.speedup) of each timed figure
LATENCY_FIGURES = (("prefill", "prefill_ms", "prefill"),
                   ("decode per token", "decode_ms_per_token", "decode_per_token"),
                   ("end to end", "end_to_end_ms", "end_to_end"))


@dataclass(frozen=True)
class Choice:
    """What a profile chooses: the withdrawal layer K, the vision token kinds, and the mean KL at K."""

    layer: int | None
    kinds: tuple[str, ...] | None   # None: every vision token
    kl_mean: float | None           # calibration.per_layer's kl_mean at K; None without that entry


def choice_of(profile: Profile) -> Choice:
    """The one answer to "which K, which kinds, what KL" for a profile.

    K is ``calibration.layer``, else ``withdrawal.layer``; the kinds are ``calibration.withdraw``, else
    ``withdrawal.kinds``; the KL is the calibration curve's ``kl_mean`` at K.
    """
    calibration, withdrawal = profile.calibration, profile.withdrawal
    layer = calibration.layer if calibration is not None and calibration.layer is not None else (
        withdrawal.layer if withdrawal is not None else None)
    kinds = calibration.withdraw if calibration is not None and calibration.withdraw is not None else (
        withdrawal.kinds if withdrawal is not None else None)
    entry = calibration.kl_at(layer) if calibration is not None and layer is not None else None
    return Choice(layer, None if kinds is None else tuple(kinds), None if entry is None else entry.kl_mean)


def first_layer_under(per_layer, threshold: float) -> int | None:
    """The KL criterion's K: the lowest layer whose ``kl_mean`` is <= ``threshold`` (None: no layer is).

    ``per_layer``: :class:`LayerKL` entries or dicts with ``layer`` and ``kl_mean`` (torch-free: the
    calibration chooses with it, `vtw check` re-derives the choice with it).
    """
    curve = sorted((entry["layer"], entry["kl_mean"]) if isinstance(entry, Mapping) else (entry.layer, entry.kl_mean)
                   for entry in per_layer)
    return next((layer for layer, kl_mean in curve if kl_mean <= threshold), None)


MATCHED_MODEL_KEYS = ("architecture", "num_layers", "config_sha256")


def model_differences(expected: ModelInfo, actual: Mapping, keys=MATCHED_MODEL_KEYS) -> dict[str, tuple]:
    """``{key: (profile's value, model's value)}`` for each of ``keys`` on which a ``model`` block
    (or a dict of those keys) differs from the profile's: the one "is this the same model" check."""
    return {key: (getattr(expected, key), actual[key]) for key in keys if getattr(expected, key) != actual[key]}


_NOT_DATA_FIELDS = {"raw", "source"}


def _build(kind, value):
    """Build ``kind`` (a dataclass / tuple[...] / X | None / primitive hint) from validated plain data."""
    if value is None:
        return None
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return _build(inner[0], value) if len(inner) == 1 else value
    if origin is tuple:
        item = typing.get_args(kind)[0]
        return tuple(_build(item, v) for v in value)
    if dataclasses.is_dataclass(kind):
        hints = _hints(kind)
        names = [f.name for f in dataclasses.fields(kind) if f.name not in _NOT_DATA_FIELDS]
        return kind(**{name: _build(hints[name], value[name]) for name in names if name in value})
    if kind is dict:
        return dict(value)
    return value


@functools.lru_cache(maxsize=None)
def _hints(kind) -> dict:
    return typing.get_type_hints(kind)


def _unbuild(value, raw):
    """Plain data for ``value``, keeping keys of ``raw`` that the typed view does not model."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = dict(raw) if isinstance(raw, dict) else {}
        for spec in dataclasses.fields(value):
            if spec.name in _NOT_DATA_FIELDS:
                continue
            current = getattr(value, spec.name)
            default = spec.default if spec.default is not dataclasses.MISSING else (
                spec.default_factory() if spec.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            if spec.name not in out and current == default:
                continue  # absent in the source and still at its default: keep it absent
            out[spec.name] = _unbuild(current, out.get(spec.name))
        return out
    if isinstance(value, tuple):
        raws = raw if isinstance(raw, list) and len(raw) == len(value) else [None] * len(value)
        return [_unbuild(v, r) for v, r in zip(value, raws)]
    if isinstance(value, (dict, list)):
        return copy.deepcopy(value)
    return value


def record_dict(record) -> dict:
    """Plain data of one profile record (a dataclass of this module), optional keys at their default left out."""
    return _unbuild(record, None)


def typed_profile(data: dict, source: str = "<profile>") -> Profile:
    """A typed :class:`Profile` over an ALREADY VALIDATED profile dict (see :func:`profile_from_dict`)."""
    hints = _hints(Profile)
    kwargs = {name: _build(hints[name], data[name]) for name in hints
              if name not in _NOT_DATA_FIELDS and name in data}
    if "data" in kwargs and kwargs["data"] is None:
        kwargs.pop("data")
    return Profile(**kwargs, raw=data, source=source)


def profile_from_dict(data: dict, source: str = "<profile>") -> Profile:
    """A typed :class:`Profile` from a profile dict (validated here)."""
    data = plain(data)
    validate_profile_dict(data, source)
    return typed_profile(data, source)


def load_profile(path: Path | str) -> Profile:
    """Read and validate a profile file into a typed :class:`Profile`."""
    return typed_profile(read_profile_dict(path), str(path))


def profile_to_dict(profile: Profile) -> dict:
    """The profile as a plain dict: the typed fields over ``profile.raw`` (so unknown keys survive)."""
    return ordered(_unbuild(profile, profile.raw))


def save_profile(profile: Profile, path: Path | str, *, force: bool = False) -> Path:
    """Write a typed profile (see :func:`write_profile`)."""
    return write_profile(profile_to_dict(profile), path, force=force)


def as_profile(profile) -> Profile:
    """A :class:`Profile` from a Profile, a profile dict (validated here) or a path (read and validated)."""
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, Mapping):
        return profile_from_dict(dict(profile))
    return load_profile(profile)
