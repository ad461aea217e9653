"""Generate docs/profile-schema.md, the profile's key reference, from the JSON Schema.

Every key's meaning is the ``description`` beside it in vtwcli/schema/profile.schema.json (one place per
fact); its type, range and whether it is required come from the schema's own keywords; the example profile
is the schema's ``examples[0]``, written as `vtw` writes profiles. The rules around the keys (validation,
versioning, `vtw check`, `vtw compare`) are hand-written in docs/profile-rules.md.

    python scripts/profile_doc.py            # rewrite docs/profile-schema.md
    python scripts/profile_doc.py --check    # exit 1 if the committed file differs (tests/test_profile_doc.py)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "vtwcli" / "schema" / "profile.schema.json"
DOC = ROOT / "docs" / "profile-schema.md"
# Keys every writer puts first (vtwcli.profile.new_profile); listed together, before the sections.
HEADER = ("schema_version", "created_at", "tool", "model", "environment")


def _ref_name(node: dict) -> str | None:
    ref = node.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref.startswith("#/$defs/") else None


def _bounds(node: dict) -> str:
    low = node.get("minimum", node.get("exclusiveMinimum"))
    high = node.get("maximum", node.get("exclusiveMaximum"))
    if low is not None and high is not None:
        if "minimum" in node and "maximum" in node and isinstance(low, int) and not isinstance(low, bool) \
                and node.get("type") != "number" and "number" not in (node.get("type") or []):
            return f" {low}..{high}"
        return f" in {'[' if 'minimum' in node else '('}{low}, {high}{']' if 'maximum' in node else ')'}"
    if low is not None:
        return f" {'>=' if 'minimum' in node else '>'} {low}"
    if high is not None:
        return f" {'<=' if 'maximum' in node else '<'} {high}"
    return ""


def type_text(node: dict) -> str:
    """The type column: what a value must be, in words, from the schema's keywords."""
    name = _ref_name(node)
    if name is not None:
        return f"[`{name}`](#{name}) record"
    for key in ("oneOf", "anyOf"):
        if key in node:
            options = [o for o in node[key] if o != {"type": "null"}]
            text = " or ".join(type_text(o) for o in options)
            return text + (", nullable" if len(options) < len(node[key]) else "")
    if "const" in node:
        return f"= {json.dumps(node['const'])}"
    if "enum" in node:
        return " | ".join(f"`{v}`" for v in node["enum"])
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    nullable = "null" in types
    types = [t for t in types if t != "null"]
    words = []
    for kind in types:
        if kind == "array":
            items = node.get("items", {})
            text = f"list of {type_text(items)}" if items else "list"
            if node.get("minItems") and node.get("minItems") == node.get("maxItems"):
                text += f", exactly {node['minItems']}"
            elif node.get("minItems"):
                text += ", non-empty"
            words.append(text)
        elif kind == "object":
            words.append("mapping")
        elif kind == "string":
            text = "string"
            if node.get("minLength"):
                text = "non-empty string"
            if "pattern" in node:
                text += f" matching `{node['pattern']}`"
            words.append(text)
        else:
            words.append(kind + _bounds(node))
    return " or ".join(words) + (", nullable" if nullable else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rows(node: dict, prefix: str, required: bool) -> list[tuple[str, str, str]]:
    """(key path, type, meaning) for ``node`` and every key below it, in schema order."""
    out = []
    if prefix:
        path = f"`{prefix}`" + (" **req**" if required else "")
        out.append((path, type_text(node), node.get("description", "")))
    if _ref_name(node) is not None:
        return out
    children = node.get("properties")
    if children is None and node.get("type") in ("array", ["array", "null"]) and "properties" in node.get("items", {}):
        node, prefix = node["items"], prefix + "[]"
        children = node["properties"]
    for key, child in (children or {}).items():
        out += rows(child, f"{prefix}.{key}" if prefix else key, key in node.get("required", ()))
    return out


def _table(entries) -> list[str]:
    lines = ["| key | type | meaning |", "|---|---|---|"]
    lines += [f"| {path} | {_cell(kind)} | {_cell(meaning)} |" for path, kind, meaning in entries]
    return lines


def _example(schema: dict) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from vtwcli.profile.yaml_text import dump_profile_yaml

    return ["## Example", "", "A profile that `vtw check` passes (the schema's `examples[0]`).", "", "```yaml",
            dump_profile_yaml(schema["examples"][0]).rstrip("\n"), "```"]


def generate(schema: dict) -> str:
    props, required = schema["properties"], set(schema["required"])
    lines = [f"# Profile schema (schema_version {props['schema_version']['const']})", "",
             "<!-- Generated by scripts/profile_doc.py from vtwcli/schema/profile.schema.json: edit the schema's "
             "descriptions, then run the script. -->", "",
             schema["description"], "",
             "* Machine-readable schema: [`vtwcli/schema/profile.schema.json`](../vtwcli/schema/profile.schema.json) "
             "(JSON Schema, Draft 2020-12). Every read and every write validates against it.",
             "* Rules (validation, units, versioning and migration, `vtw check`, `vtw compare` gates): "
             "[profile-rules.md](profile-rules.md).",
             "* **req**: required when its section (or record) is present; the header keys `schema_version`, "
             "`created_at`, `model`, `environment` are required in every profile.", "",
             "## Key reference", "", "### Header", "",
             "Every writer puts these first (`vtwcli.profile.new_profile`).", ""]
    header = []
    for key in HEADER:
        header += rows(props[key], key, key in required)
    lines += _table(header)
    for key, node in props.items():
        if key in HEADER:
            continue
        lines += ["", f"### `{key}`", ""]
        if node.get("type") != "object":  # a list section: its own row says what it is
            lines += _table(rows(node, key, False))
            continue
        if node.get("description"):
            lines += [node["description"], ""]
        lines += _table(rows(node, "", False))
    lines += ["", "### Records", "", "Shapes several keys share (the type column links here).", ""]
    for name, node in schema["$defs"].items():
        lines += [f"#### `{name}`", ""]
        if node.get("description"):
            lines += [node["description"], ""]
        lines += _table(rows(node, "", False)) + [""]
    lines += _example(schema)
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    args = parser.parse_args()
    text = generate(json.loads(SCHEMA.read_text(encoding="utf-8")))
    if args.check:
        if DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC.relative_to(ROOT)} is out of date: run python scripts/profile_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
