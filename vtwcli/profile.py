"""The profile: a typed, versioned YAML record of a calibration / measurement (docs/profile-schema.md).

Reading validates against the shipped JSON Schema (``vtwcli/schema/profile.schema.json``) and reports
every problem as ONE :class:`~vtwcli.errors.VtwError` line naming the file, the key path and, where the
YAML gives it, the line number. Writing validates first, then replaces the target atomically (temp file
in the same directory, fsync, ``os.replace``), so a crash never leaves a half-written profile.

Versioning: ``schema_version`` is an integer. A profile newer than :data:`SCHEMA_VERSION` is refused
with an upgrade hint; an older one is migrated step by step through :data:`MIGRATIONS`
(``{from_version: function(dict) -> dict}`` producing ``from_version + 1``) or refused when no
migration exists.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import functools
import json
import numbers
import os
import platform
import shlex
import sys
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vtwcli.atomic import atomic_write_text
from vtwcli.errors import VtwError

__all__ = [
    "SCHEMA_VERSION", "MIGRATIONS", "SECTION_ORDER", "schema", "environment_section", "now_iso", "new_profile",
    "validate_profile_dict", "write_profile", "read_profile_dict", "load_profile", "profile_to_dict",
    "profile_from_dict", "save_profile", "apply_profile", "dump_profile_yaml",
    "Profile", "ToolInfo", "ModelInfo", "DataInfo", "LayerKL", "Bootstrap", "DatasetCurve", "SampleKL",
    "CalibrationCost", "AttentionShare", "Calibration", "Accuracy", "WithdrawnAccuracy", "Benchmark", "Evaluation",
    "Withdrawal", "TokenCounts", "FlopsBreakdown", "ContextTokens", "DecodeFlops", "AnalyticFlops", "Flops",
    "TimingStats", "LatencyRun", "Speedup", "Latency", "MemoryRun", "Memory", "Environment",
]

SCHEMA_VERSION = 1
UPGRADE_HINT = "pip install -U vtwcli"
# Readable order of the top-level keys when writing: header, inputs, results, environment; unknown keys last.
SECTION_ORDER = ("schema_version", "created_at", "tool", "model", "data", "calibration", "evaluation", "withdrawal",
                 "flops", "latency", "memory", "environment")
SCHEMA_PATH = Path(__file__).parent / "schema" / "profile.schema.json"

# from_version -> function turning a profile dict of that version into one of from_version + 1.
# There is no older layout yet; a future v2 registers MIGRATIONS[1] here.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}


# --------------------------------------------------------------------------------------------- header

def now_iso() -> str:
    """Current time, UTC, ISO 8601 with seconds (``2026-11-26T07:00:00+00:00``)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def environment_section(device) -> dict:
    """The profile's ``environment`` block: package versions, platform and the name of ``device``."""
    import torch
    import transformers

    from vtwcli import __version__

    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type == "cuda" and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        device_name = f"Apple MPS ({platform.processor() or platform.machine()})"
    else:
        device_name = _cpu_name()
    return {
        "vtwcli": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device_name": device_name,
    }


def _command_line() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("vtw", "vtw.exe"):
        return shlex.join(["vtw", *argv[1:]])
    return shlex.join(argv) if argv else "python"


def new_profile(model_section: dict, device, *, command: str | None = None) -> dict:
    """A fresh profile dict holding the header: schema_version, created_at, tool, model, environment.

    Callers add their sections (``calibration``, ``flops``, ...) and pass it to :func:`write_profile`.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "created_at": now_iso(),
        "tool": {"name": "vtwcli", "command": command if command is not None else _command_line()},
        "model": dict(model_section),
        "environment": environment_section(device),
    }


# ----------------------------------------------------------------------------------------- validation

@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema() -> dict:
    """The shipped JSON Schema (a copy)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _key_path(parts) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
               (dict, "mapping"), (type(None), "null"))


def _json_type(value) -> str:
    for kind, name in _JSON_TYPES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    if isinstance(value, (dict, list)):
        text = f"a {_json_type(value)}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(error) -> tuple[list, str]:
    """(key path, what is wrong + what is expected) for one jsonschema error."""
    path = list(error.absolute_path)
    validator, expected, value = error.validator, error.validator_value, error.instance
    if validator == "required":
        missing = [key for key in expected if isinstance(value, dict) and key not in value]
        return path + missing[:1], "required key is missing"
    if validator == "type":
        kinds = expected if isinstance(expected, list) else [expected]
        kinds = ["mapping" if k == "object" else k for k in kinds]
        return path, f"expected {' or '.join(kinds)}, got {_json_type(value)} {_short(value)}"
    if validator == "const":
        return path, f"expected {expected!r}, got {_short(value)}"
    if validator == "enum":
        return path, f"expected one of {', '.join(map(str, expected))}; got {_short(value)}"
    if validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = [key for key in value if key not in allowed] if isinstance(value, dict) else []
        return path + extra[:1], f"unknown key (allowed here: {', '.join(allowed)})"
    if validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[validator]
        return path, f"expected a value {sign} {expected}, got {_short(value)}"
    if validator == "pattern":
        return path, f"expected text matching {expected}, got {_short(value)}"
    if validator == "minLength":
        return path, f"expected a non-empty string, got {_short(value)}"
    if validator in ("oneOf", "anyOf"):
        return path, f"expected {' or '.join(_alt_name(s) for s in expected)}, got {_json_type(value)} {_short(value)}"
    if validator == "dependentRequired":
        for key, needs in expected.items():
            missing = [need for need in needs if isinstance(value, dict) and key in value and need not in value]
            if missing:
                return path + missing[:1], f"required key is missing (it goes with {key})"
    if validator == "minProperties":
        return path, "expected a non-empty mapping"
    if validator == "minItems":
        return path, f"expected a list of at least {expected} item(s), got {len(value)}"
    return path, error.message


def _alt_name(subschema: dict) -> str:
    if "$ref" in subschema:
        return "a mapping (" + subschema["$ref"].rsplit("/", 1)[-1] + ")"
    return str(subschema.get("type", "a value"))


def _node_line(root, path) -> int | None:
    """1-based line of the YAML node at ``path`` (or of its deepest existing ancestor)."""
    if root is None:
        return None
    node, line = root, root.start_mark.line + 1
    for part in path:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)),
                         None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def validate_profile_dict(data: dict, source: str = "<profile>", *, text: str | None = None) -> None:
    """Validate ``data`` against the profile schema; raise one VtwError line on the first problem.

    The line names ``source``, the key path (``calibration.per_layer[3].kl_mean``), the YAML line when
    ``text`` (the YAML it was read from) is given, and what is expected.
    """
    if not isinstance(data, dict):
        raise VtwError(f"{source}: a profile must be a YAML mapping at the top level, got {_json_type(data)}")
    import jsonschema

    try:
        error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    except RecursionError:
        raise VtwError(f"{source}: the profile is nested too deeply to be a vtwcli profile") from None
    if error is None:
        return
    path, what = _describe(error)
    where = source
    if text is not None:
        try:
            line = _node_line(yaml.compose(text, Loader=_Loader), path)
        except Exception:  # noqa: BLE001 - the line number is a courtesy
            line = None
        if line is not None:
            where = f"{source}:{line}"
    raise VtwError(f"{where}: {_key_path(path)}: {what} (invalid profile; see docs/profile-schema.md)")


# ---------------------------------------------------------------------------------------------- YAML

class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser when present: ~10x faster
    """Safe loader that keeps timestamps as text (``created_at`` is a string in the schema)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data):  # never emit &anchors / *aliases: profiles are plain trees
        return True


class _FlowList(list):
    pass


class _FlowDict(dict):
    pass


_Dumper.add_representer(_FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
_Dumper.add_representer(_FlowDict, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v.items(),
                                                                     flow_style=True))


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _plain(value):
    """Plain Python types only (numpy / torch scalars, tuples, Paths become int / float / list / str)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)  # str subclasses (torch's TorchVersion) have no YAML representer
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # 0-d tensors / arrays
        return _plain(value.item())
    return value


def _styled(value, in_list: bool = False):
    """Mark short leaves for flow style: scalar lists and per-layer records stay on one line."""
    if isinstance(value, dict):
        items = {k: _styled(v) for k, v in value.items()}
        if in_list and all(_is_scalar(v) for v in value.values()):
            return _FlowDict(items)
        return items
    if isinstance(value, list):
        if all(_is_scalar(v) for v in value):
            return _FlowList(value)
        return [_styled(v, in_list=True) for v in value]
    return value


def _ordered(data: dict) -> dict:
    ordered = {key: data[key] for key in SECTION_ORDER if key in data}
    ordered.update((key, value) for key, value in data.items() if key not in ordered)
    return ordered


_LINE_BREAKS = ("\x85", "\u2028", "\u2029")


def _has_unicode_line_break(value) -> bool:
    """PyYAML writes NEL / LS / PS raw when allow_unicode is on, and reads them back as newlines."""
    if isinstance(value, str):
        return any(ch in value for ch in _LINE_BREAKS)
    if isinstance(value, dict):
        return any(_has_unicode_line_break(k) or _has_unicode_line_break(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_unicode_line_break(v) for v in value)
    return False


def dump_profile_yaml(data: dict) -> str:
    """The YAML text :func:`write_profile` writes (header first, readable key order, no validation)."""
    data = _plain(data)
    body = yaml.dump(_styled(_ordered(data)), Dumper=_Dumper, sort_keys=False,
                     allow_unicode=not _has_unicode_line_break(data), default_flow_style=False, width=100)
    return "# vtwcli profile (docs/profile-schema.md)\n" + body


# ------------------------------------------------------------------------------------------- writing

def write_profile(data: dict, path: Path | str, *, force: bool = False) -> Path:
    """Validate ``data`` and write it as YAML to ``path`` atomically; return the path.

    Refuses to replace an existing file unless ``force``. The file appears complete or not at all.
    """
    path = Path(path).expanduser()
    data = _plain(data)
    validate_profile_dict(data, str(path))
    if path.is_dir():
        raise VtwError(f"{path} is a directory; pass a file name for the profile (e.g. {path / 'profile.yaml'})")
    if path.exists() and not force:
        raise VtwError(f"{path} exists; pass --force to overwrite or choose another --output")
    return atomic_write_text(path, dump_profile_yaml(data))


# ------------------------------------------------------------------------------------------- reading

def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def _migrate(data: dict, version: int, source: str) -> dict:
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise VtwError(f"{source}: schema_version {version} is too old for this vtwcli (reads {SCHEMA_VERSION}) "
                           "and cannot be migrated; re-create the profile with this vtwcli")
        data = step(dict(data))
        version += 1
        data["schema_version"] = version
    return data


def read_profile_dict(path: Path | str) -> dict:
    """Read, version-check (migrating older layouts) and validate a profile; return the plain dict."""
    path = Path(path).expanduser()
    source = str(path)
    if not path.exists():
        raise VtwError(f"{source}: no such profile file; check the path (profiles come from `vtw calibrate` / "
                       "`vtw profile`)")
    if not path.is_file():
        raise VtwError(f"{source}: not a file; pass a profile YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise VtwError(f"{source}: not a text file (byte {error.start} is not UTF-8); pass a profile YAML "
                       "file") from None
    except OSError as error:
        raise VtwError(f"{source}: cannot read it ({error.strerror or error}); check its permissions") from None
    return _parse_profile_text(text, source)


def _parse_profile_text(text: str, source: str) -> dict:
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as error:
        raise VtwError(f"{source}: corrupted or truncated YAML at {_yaml_problem(error)}; re-create the profile "
                       "or restore it") from None
    except RecursionError:
        raise VtwError(f"{source}: YAML nested too deeply to be a profile") from None
    except Exception as error:  # noqa: BLE001 - e.g. a bad explicit !!tag value; still bad input
        raise VtwError(f"{source}: YAML could not be read ({type(error).__name__}: {error})") from None
    if data is None:
        raise VtwError(f"{source}: the file is empty; a profile is a YAML mapping starting with schema_version")
    if not isinstance(data, dict):
        raise VtwError(f"{source}: a profile must be a YAML mapping at the top level, got {_json_type(data)}")
    if "schema_version" not in data:
        raise VtwError(f"{source}: schema_version is missing; this is not a vtwcli profile (or it was cut short)")
    version = data["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise VtwError(f"{source}: schema_version must be an integer, got {_short(version)}")
    if version > SCHEMA_VERSION:
        raise VtwError(f"{source}: schema_version {version} was written by a newer vtwcli (this one reads up to "
                       f"{SCHEMA_VERSION}); upgrade: {UPGRADE_HINT}")
    migrated = version < SCHEMA_VERSION
    if migrated:
        data = _migrate(data, version, source)
    validate_profile_dict(data, source, text=None if migrated else text)
    return data


# ------------------------------------------------------------------------------------------- typing

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
    full_forward_equivalents: float
    seconds: float


@dataclass(frozen=True)
class AttentionShare:
    layer: int
    system: float
    vision: float
    text: float


@dataclass(frozen=True)
class Calibration:
    criterion: str
    direction: str
    threshold: float
    min_layer: int
    layer: int | None
    per_layer: tuple[LayerKL, ...]
    withdraw: tuple[str, ...] | None = None
    bootstrap: Bootstrap | None = None
    per_dataset: tuple[DatasetCurve, ...] | None = None
    per_sample: tuple[SampleKL, ...] | None = None
    cost: CalibrationCost | None = None
    diagnose: tuple[AttentionShare, ...] | None = None

    def kl_at(self, layer: int | None) -> LayerKL | None:
        return next((entry for entry in self.per_layer if entry.layer == layer), None)


@dataclass(frozen=True)
class Accuracy:
    accuracy: float


@dataclass(frozen=True)
class WithdrawnAccuracy:
    accuracy: float | None
    layer: int | None


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
    """Accuracy on the calibration datasets (`vtw calibrate`) and/or on lmms-eval benchmarks (`vtw eval`)."""

    samples: int | None = None
    baseline: Accuracy | None = None
    withdrawn: WithdrawnAccuracy | None = None
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
class Latency:
    device: str
    device_name: str
    baseline: LatencyRun
    withdrawn: LatencyRun
    speedup: Speedup
    threads: int | None = None
    new_tokens: int | None = None
    flops_ratio: float | None = None


@dataclass(frozen=True)
class MemoryRun:
    peak_rss_bytes: int
    kv_cache_bytes: int
    cuda_peak_allocated_bytes: int | None = None
    cuda_peak_reserved_bytes: int | None = None


@dataclass(frozen=True)
class Memory:
    baseline: MemoryRun
    withdrawn: MemoryRun
    kv_cache_reduction: float | None = None


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
    raw: dict = field(default_factory=dict, compare=False, repr=False)
    source: str = field(default="<profile>", compare=False, repr=False)

    @property
    def kinds(self) -> tuple[str, ...] | None:
        """Which vision tokens are withdrawn (``calibration.withdraw``, else ``withdrawal.kinds``); None: all."""
        if self.calibration is not None and self.calibration.withdraw is not None:
            return tuple(self.calibration.withdraw)
        if self.withdrawal is not None and self.withdrawal.kinds is not None:
            return tuple(self.withdrawal.kinds)
        return None

    @property
    def layer(self) -> int | None:
        """The withdrawal layer K: ``calibration.layer``, else ``withdrawal.layer``, else None."""
        if self.calibration is not None and self.calibration.layer is not None:
            return self.calibration.layer
        if self.withdrawal is not None:
            return self.withdrawal.layer
        return None


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


def _typed(data: dict, source: str) -> Profile:
    hints = _hints(Profile)
    kwargs = {name: _build(hints[name], data[name]) for name in hints
              if name not in _NOT_DATA_FIELDS and name in data}
    if "data" in kwargs and kwargs["data"] is None:
        kwargs.pop("data")
    return Profile(**kwargs, raw=data, source=source)


def profile_from_dict(data: dict, source: str = "<profile>") -> Profile:
    """A typed :class:`Profile` from a profile dict (validated here)."""
    data = _plain(data)
    validate_profile_dict(data, source)
    return _typed(data, source)


def load_profile(path: Path | str) -> Profile:
    """Read and validate a profile file into a typed :class:`Profile`."""
    return _typed(read_profile_dict(path), str(path))


def profile_to_dict(profile: Profile) -> dict:
    """The profile as a plain dict: the typed fields over ``profile.raw`` (so unknown keys survive)."""
    return _ordered(_unbuild(profile, profile.raw))


def save_profile(profile: Profile, path: Path | str, *, force: bool = False) -> Path:
    """Write a typed profile (see :func:`write_profile`)."""
    return write_profile(profile_to_dict(profile), path, force=force)


# ------------------------------------------------------------------------------------------- applying

def _as_profile(profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, Mapping):
        return profile_from_dict(dict(profile))
    return load_profile(profile)


def apply_profile(model, profile, *, strict: bool = True):
    """Withdraw the vision tokens of ``model`` at the profile's layer; return the WithdrawalHandle.

    ``profile`` is a :class:`Profile`, a profile dict or a path. The model's architecture, decoder layer
    count and config hash are compared with the profile's ``model`` section first: a mismatch raises
    VtwError (``strict``) or warns and applies anyway (``strict=False``).
    """
    from vtwcli.loading import config_sha256
    from vtwcli.withdrawal import num_decoder_layers, withdraw

    profile = _as_profile(profile)
    layer = profile.layer
    if layer is None:
        why = ("calibration.layer is null: no layer met the KL threshold" if profile.calibration is not None
               else "it has neither calibration.layer nor withdrawal.layer")
        raise VtwError(f"{profile.source}: no withdrawal layer to apply ({why}); re-calibrate with a higher "
                       "--threshold or pass a layer to withdraw() yourself")
    expected = profile.model
    actual = {
        "architecture": type(model).__name__,
        "num_layers": num_decoder_layers(model),
        "config_sha256": config_sha256(model.config),
    }
    differences = [f"{key} profile={getattr(expected, key)} model={value}"
                   for key, value in actual.items() if getattr(expected, key) != value]
    if differences:
        message = (f"{profile.source} was made for another model ({expected.name_or_path}): "
                   + "; ".join(differences))
        if strict:
            raise VtwError(message + "; use the matching model or apply_profile(..., strict=False)")
        warnings.warn(message + "; applying layer " + str(layer) + " anyway (strict=False)", UserWarning,
                      stacklevel=2)
    return withdraw(model, layer=layer, kinds=profile.kinds)
