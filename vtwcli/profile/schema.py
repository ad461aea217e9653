"""The profile's shape: the shipped JSON Schema (``vtwcli/schema/profile.schema.json``) and its messages.

Every problem becomes ONE :class:`~vtwcli.errors.VtwError` line naming the file, the key path and, where
the YAML gives it, the line number.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import yaml

from vtwcli.errors import VtwError
from vtwcli.profile.yaml_text import Loader

__all__ = ["SCHEMA_VERSION", "SCHEMA_PATH", "schema", "validate_profile_dict", "json_type", "short_repr", "key_path"]

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema" / "profile.schema.json"


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema() -> dict:
    """The shipped JSON Schema (a copy)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def key_path(parts) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
               (dict, "mapping"), (type(None), "null"))


def json_type(value) -> str:
    for kind, name in _JSON_TYPES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def short_repr(value, limit: int = 40) -> str:
    text = repr(value)
    if isinstance(value, (dict, list)):
        text = f"an {json_type(value)}"  # array, object
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _got(value) -> str:
    """``string 'abc'``, ``integer 5``; ``an array`` (not ``array an array``)."""
    return short_repr(value) if isinstance(value, (dict, list)) else f"{json_type(value)} {short_repr(value)}"


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
        return path, f"expected {' or '.join(kinds)}, got {_got(value)}"
    if validator == "const":
        return path, f"expected {expected!r}, got {short_repr(value)}"
    if validator == "enum":
        return path, f"expected one of {', '.join(map(str, expected))}; got {short_repr(value)}"
    if validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = [key for key in value if key not in allowed] if isinstance(value, dict) else []
        return path + extra[:1], f"unknown key (allowed here: {', '.join(allowed)})"
    if validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[validator]
        return path, f"expected a value {sign} {expected}, got {short_repr(value)}"
    if validator == "pattern":
        return path, f"expected text matching {expected}, got {short_repr(value)}"
    if validator == "minLength":
        return path, f"expected a non-empty string, got {short_repr(value)}"
    if validator in ("oneOf", "anyOf"):
        alternatives = " or ".join(_alt_name(s) for s in expected)
        return path, f"expected {alternatives}, got {_got(value)}"
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
        raise VtwError(f"{source}: a profile must be a YAML mapping at the top level, got {json_type(data)}")
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
            line = _node_line(yaml.compose(text, Loader=Loader), path)
        except Exception:  # noqa: BLE001 - the line number is a courtesy
            line = None
        if line is not None:
            where = f"{source}:{line}"
    raise VtwError(f"{where}: {key_path(path)}: {what} (invalid profile; see docs/profile-schema.md)")
