"""The typed profile and the JSON Schema describe one shape: :func:`shape_problems` lists where they differ.

The schema is the source (it validates every read and write); the dataclasses of
:mod:`vtwcli.profile.model` must accept every profile it accepts and name every key it names: the same
keys (an open mapping, ``additionalProperties: true``, may have more typed fields), a field without a
default only for a required key, ``X | None`` wherever the schema allows null, and the same scalar
types. ``tests/test_profile.py`` fails on any difference.
"""

from __future__ import annotations

import dataclasses
import types
import typing

from vtwcli.profile import model
from vtwcli.profile.schema import schema as shipped_schema

__all__ = ["shape_problems"]

_SCALARS = {int: {"integer"}, float: {"number"}, str: {"string"}, bool: {"boolean"}, dict: {"object"}}
_NOT_KEYS = {"raw", "source"}


def _resolve(node: dict, root: dict) -> dict:
    while "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _types(node: dict) -> set[str]:
    kind = node.get("type", [])
    return set(kind if isinstance(kind, list) else [kind])


def _non_null(node: dict, root: dict) -> tuple[dict, bool]:
    """(the schema of the value when present, whether null is allowed): ``oneOf: [X, null]`` is X, nullable."""
    node = _resolve(node, root)
    for key in ("oneOf", "anyOf"):
        if key in node:
            options = [_resolve(option, root) for option in node[key]]
            values = [option for option in options if _types(option) != {"null"}]
            if len(values) == 1:
                return values[0], len(values) < len(options)
    return node, "null" in _types(node)


def _unwrap(hint) -> tuple[object, bool]:
    """(the hint without ``| None``, whether it allowed None)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else hint), len(args) < len(typing.get_args(hint))
    return hint, False


def _compare_value(hint, node: dict, root: dict, where: str, problems: list[str]) -> None:
    node = _resolve(node, root)
    if typing.get_origin(hint) is tuple:
        if "array" not in _types(node):
            problems.append(f"{where}: a tuple in the dataclass, {sorted(_types(node))} in the schema")
            return
        _compare_value(typing.get_args(hint)[0], node.get("items", {}), root, f"{where}[]", problems)
    elif dataclasses.is_dataclass(hint):
        _compare_object(hint, node, root, where, problems)
    elif hint in _SCALARS:
        allowed = _SCALARS[hint] | ({"integer"} if hint is float else set())
        declared = _types(node) - {"null"}
        if "enum" in node or "const" in node:
            return  # closed vocabularies: strings or numbers by value
        if not declared or not declared <= allowed:
            problems.append(f"{where}: {hint.__name__} in the dataclass, {sorted(declared) or 'any'} in the schema")


def _compare_object(kind, node: dict, root: dict, where: str, problems: list[str]) -> None:
    node = _resolve(node, root)
    hints = typing.get_type_hints(kind)
    fields = {f.name: f for f in dataclasses.fields(kind) if f.name not in _NOT_KEYS}
    properties = node.get("properties", {})
    prefix = f"{where}." if where else ""
    for name in sorted(set(properties) - set(fields)):
        problems.append(f"{prefix}{name}: in the schema, not in {kind.__name__}")
    if node.get("additionalProperties") is False:
        for name in sorted(set(fields) - set(properties)):
            problems.append(f"{prefix}{name}: in {kind.__name__}, not in the schema")
    required = set(node.get("required", []))
    for name, spec in fields.items():
        if name not in properties:
            continue
        has_default = spec.default is not dataclasses.MISSING or spec.default_factory is not dataclasses.MISSING
        if name not in required and not has_default:
            problems.append(f"{prefix}{name}: optional in the schema but has no default in {kind.__name__}")
        hint, optional = _unwrap(hints[name])
        value, nullable = _non_null(properties[name], root)
        if nullable and not optional:
            problems.append(f"{prefix}{name}: nullable in the schema but not Optional in {kind.__name__}")
        _compare_value(hint, value, root, f"{prefix}{name}", problems)


def shape_problems(schema: dict | None = None) -> list[str]:
    """Every difference between :class:`~vtwcli.profile.model.Profile` and the schema (default: the shipped one)."""
    schema = shipped_schema() if schema is None else schema
    problems: list[str] = []
    _compare_object(model.Profile, schema, schema, "", problems)
    return problems
