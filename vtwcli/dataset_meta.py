"""A dataset directory's facts besides its samples: the SHA-256 of its files and its description / licence /
source (meta.json, else the README's front matter and first paragraph)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from vtwcli.errors import VtwError

__all__ = ["file_sha256", "read_meta"]


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (streamed)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise VtwError(f"cannot read {path}: {error.strerror or error}; check the path and its permissions") from None
    return digest.hexdigest()


_README_KEY = re.compile(r"^\s*(?:[-*]\s+)?\**\s*(licen[cs]e|source)\s*\**\s*:\s*\**\s*(.+)$", re.IGNORECASE)


def _first_clause(text: str) -> str:
    """Up to the first sentence end or semicolon, markdown emphasis removed."""
    text = text.replace("**", "").replace("`", "").strip()
    cut = re.split(r"(?<=[^\s.])[.;](?:\s|$)", text, maxsplit=1)[0]
    return cut.strip()


def _first_paragraph(lines: list[str], limit: int = 160) -> str:
    """The README's first prose paragraph (no heading, list, table, code), first sentence, at most ``limit``."""
    words: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped:
            if words:
                break
            continue
        if stripped.startswith(("#", "-", "*", "|", "```", "<", ">")):
            if words:
                break
            continue
        words.append(stripped)
    text = _first_clause(" ".join(words))
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def read_meta(directory: Path) -> dict[str, str]:
    """Description / licence / source of a dataset directory: meta.json, else README front matter."""
    meta: dict[str, str] = {}
    readme = directory / "README.md"
    if readme.is_file():
        try:
            text = readme.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        lines = text.splitlines()
        body_start = 0
        if lines and lines[0].strip() == "---":
            for index, line in enumerate(lines[1:], start=1):
                if line.strip() == "---":
                    body_start = index + 1
                    break
                key, sep, value = line.partition(":")
                if sep:
                    meta[key.strip().lower().replace("license", "licence")] = value.strip().strip("\"'")
        body = lines[body_start:]
        # "- **Licence**: CC0 1.0 (...)" / "Source: ..." lines in the body fill keys the front matter lacks.
        for index, line in enumerate(body):
            match = _README_KEY.match(line)
            if match:
                value = [match.group(2)]
                for more in body[index + 1:]:  # indented continuation lines of the same list item
                    if not more.strip() or not more[:1].isspace() or more.strip().startswith(("-", "*")):
                        break
                    value.append(more.strip())
                key = match.group(1).lower().replace("license", "licence")
                meta.setdefault(key, _first_clause(" ".join(value)))
        if "description" not in meta:
            meta["description"] = _first_paragraph(body)
    meta_json = directory / "meta.json"
    if meta_json.is_file():
        try:
            loaded = json.loads(meta_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise VtwError(f"{meta_json}: not valid JSON ({error}); fix or delete the file") from None
        if not isinstance(loaded, dict):
            raise VtwError(f"{meta_json}: must be a JSON object with description/licence/source keys")
        meta.update(
            {str(k).lower().replace("license", "licence"): str(v) for k, v in loaded.items() if isinstance(v, (str, int, float))}
        )
    return meta
