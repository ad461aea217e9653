"""docs/profile-schema.md is generated from the JSON Schema (scripts/profile_doc.py): one place per fact."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "vtwcli" / "schema" / "profile.schema.json").read_text(encoding="utf-8"))


def _generator():
    spec = importlib.util.spec_from_file_location("profile_doc", ROOT / "scripts" / "profile_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keys(node: dict, path: str):
    """(path, schema node) of every property below ``node``, through list items and nullable alternatives."""
    for alternative in node.get("oneOf", []) + node.get("anyOf", []):
        yield from _keys(alternative, path)
    if isinstance(node.get("items"), dict):
        yield from _keys(node["items"], path + "[]")
    for key, child in node.get("properties", {}).items():
        yield f"{path}.{key}".lstrip("."), child
        yield from _keys(child, f"{path}.{key}")


def test_committed_reference_is_the_generated_one() -> None:
    committed = (ROOT / "docs" / "profile-schema.md").read_text(encoding="utf-8")
    assert committed == _generator().generate(SCHEMA), "run python scripts/profile_doc.py"


def test_every_key_and_record_has_its_meaning_in_the_schema() -> None:
    nodes = list(_keys(SCHEMA, ""))
    for name, record in SCHEMA["$defs"].items():
        nodes += [(f"$defs.{name}", record)] + list(_keys(record, f"$defs.{name}"))
    assert len(nodes) > 150
    assert [path for path, node in nodes if not node.get("description")] == []


@pytest.mark.parametrize(("node", "expected"), [
    ({"type": ["integer", "null"], "minimum": 1, "maximum": 100000}, "integer 1..100000, nullable"),
    ({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, "number in (0, 1)"),
    ({"type": "number", "minimum": 0, "maximum": 1}, "number in [0, 1]"),
    ({"type": "array", "items": {"enum": ["image", "video"]}, "minItems": 1}, "list of `image` | `video`, non-empty"),
    ({"oneOf": [{"$ref": "#/$defs/stats"}, {"type": "null"}]}, "[`stats`](#stats) record, nullable"),
])
def test_type_column_reads_the_schema_keywords(node, expected) -> None:
    assert _generator().type_text(node) == expected
