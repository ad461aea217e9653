"""Profile YAML text: a safe loader that keeps timestamps as text, and the writer's readable layout
(header first, flow-style leaves, plain Python types only). No validation and no files here."""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping

import yaml

__all__ = ["SECTION_ORDER", "Loader", "plain", "ordered", "dump_profile_yaml"]

# Readable order of the top-level keys when writing: header, inputs, results, environment; unknown keys last.
SECTION_ORDER = ("schema_version", "created_at", "tool", "model", "data", "calibration", "evaluation", "withdrawal",
                 "flops", "latency", "memory", "verification", "environment")


class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser when present: ~10x faster
    """Safe loader that keeps timestamps as text (``created_at`` is a string in the schema)."""


Loader.yaml_implicit_resolvers = {
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


def plain(value):
    """Plain Python types only (numpy / torch scalars, tuples, Paths become int / float / list / str)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
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
        return plain(value.item())
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


def ordered(data: dict) -> dict:
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
    data = plain(data)
    body = yaml.dump(_styled(ordered(data)), Dumper=_Dumper, sort_keys=False,
                     allow_unicode=not _has_unicode_line_break(data), default_flow_style=False, width=100)
    return "# vtwcli profile (docs/profile-schema.md)\n" + body
