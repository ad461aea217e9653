"""The size limits of docs/ARCHITECTURE.md, checked on the source: no module under vtwcli/ over 600 lines,
no function of a command (vtwcli/cli/) over 59 lines (commands parse, build options, call, render)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vtwcli"


def test_no_module_is_over_600_lines() -> None:
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
             for path in PACKAGE.rglob("*.py")}
    assert len(sizes) > 40  # the whole package was read
    assert {name: lines for name, lines in sizes.items() if lines > 600} == {}


def test_no_command_function_is_60_lines_or_longer() -> None:
    lengths = {}
    for path in (PACKAGE / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths[f"{path.name}::{node.name}"] = node.end_lineno - node.lineno + 1
    assert "profile_cmd.py::profile_command" in lengths
    assert {name: lines for name, lines in lengths.items() if lines >= 60} == {}
