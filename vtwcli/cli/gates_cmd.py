"""`vtw check` and `vtw compare`: profile consistency checks and CI gates (logic in vtwcli.gates)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vtwcli.cli import app
from vtwcli.cli._render import json_text
from vtwcli.cli._tables import print_table
from vtwcli.cli._state import console
from vtwcli.errors import CheckFailed, VtwError
from vtwcli.gates import (Comparison, FileCheck, GateLimits, check_failure_message, check_files, compare_files,
                          format_delta, format_value)

_STYLE = {"pass": "green", "FAIL": "bold red", "n/a": "dim", "ERROR": "bold red"}


def _status(status: str) -> str:
    return f"[{_STYLE.get(status, '')}]{status}[/]"


@app.command("check")
def check_command(
    profiles: list[Path] = typer.Argument(..., metavar="PROFILE...", help="Profile YAML files to check."),
    max_accuracy_drop: float | None = typer.Option(
        None, "--max-accuracy-drop", metavar="POINTS",
        help="Also fail when (baseline - withdrawn accuracy) x 100 exceeds POINTS percentage points (and the "
        "same for each evaluation.benchmarks entry: full - withdrawn)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Validate profiles and their internal consistency (exit 0 ok, 1 a check failed, 2 unreadable/invalid).

    Checks the schema, then the rules in docs/profile-rules.md (layer, KL, FLOPs, latency, memory, data).
    """
    files = check_files(profiles, max_accuracy_drop=max_accuracy_drop)
    if as_json:
        typer.echo(json_text({"ok": all(f.passed for f in files), "files": [f.to_dict() for f in files]}))
    else:
        _render_checks(files)
    errors = [f for f in files if f.error is not None]
    if errors:
        more = f" ({len(errors) - 1} more unreadable file(s))" if len(errors) > 1 else ""
        raise VtwError(errors[0].error + more)
    message = check_failure_message(files)
    if message:
        raise CheckFailed(message)


def _render_checks(files: list[FileCheck]) -> None:
    table = Table(title="vtw check")
    table.add_column("file", overflow="fold")
    table.add_column("check", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for item in files:
        if item.error is not None:
            table.add_row(escape(item.source), "read", _status("ERROR"), escape(item.error))
            continue
        for result in item.results:
            table.add_row(escape(item.source), escape(result.name), _status(result.status), escape(result.detail))
    print_table(table, layout="lines")
    failed = sum(1 for f in files for r in f.results if not r.passed)
    unreadable = sum(1 for f in files if f.error is not None)
    if not failed and not unreadable:
        console.print(f"[green]all checks passed[/] ({len(files)} file{'' if len(files) == 1 else 's'})")


class OutputFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"


@app.command("compare")
def compare_command(
    base: Path = typer.Argument(..., metavar="BASE", help="Reference profile (e.g. committed on main)."),
    new: Path = typer.Argument(..., metavar="NEW", help="Profile to judge (e.g. produced by this CI run)."),
    output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", case_sensitive=False,
                                               help="table (rich), markdown (for a CI comment) or json."),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
    max_flops_increase: float | None = typer.Option(
        None, "--max-flops-increase", metavar="PCT", help="Fail if NEW's withdrawn total FLOPs exceed BASE's by more "
        "than PCT percent."),
    max_latency_increase: float | None = typer.Option(
        None, "--max-latency-increase", metavar="PCT", help="Fail if any withdrawn latency median (prefill, decode "
        "per token, end to end) of NEW exceeds BASE's by more than PCT percent."),
    min_speedup: float | None = typer.Option(
        None, "--min-speedup", metavar="X", help="Fail if NEW's prefill speedup (median of baseline/withdrawn pairs) "
        "is below X (e.g. 1.2)."),
    max_speedup_drop: float | None = typer.Option(
        None, "--max-speedup-drop", metavar="PCT", help="Fail if NEW's prefill speedup is more than PCT percent below "
        "BASE's (ratios timed in pairs: robust to a slower runner, unlike --max-latency-increase)."),
    max_memory_increase: float | None = typer.Option(
        None, "--max-memory-increase", metavar="PCT", help="Fail if NEW's withdrawn peak RSS or KV cache exceeds "
        "BASE's by more than PCT percent."),
    max_kl: float | None = typer.Option(None, "--max-kl", metavar="X",
                                        help="Fail if NEW's kl_mean at its chosen layer exceeds X."),
    max_accuracy_drop: float | None = typer.Option(
        None, "--max-accuracy-drop", metavar="POINTS", help="Fail if NEW's withdrawn accuracy is more than POINTS "
        "percentage points below BASE's withdrawn accuracy (also per evaluation.benchmarks task and metric)."),
    same_layer: bool = typer.Option(False, "--same-layer", help="Fail if the withdrawal layer K differs."),
) -> None:
    """Compare two profiles side by side and gate CI on them (exit 0 ok, 1 a gate failed, 2 bad input).

    A gate is n/a when its section is in neither profile; it fails when only one profile lacks its figures.
    """
    limits = GateLimits(max_flops_increase=max_flops_increase, max_latency_increase=max_latency_increase,
                        min_speedup=min_speedup, max_speedup_drop=max_speedup_drop,
                        max_memory_increase=max_memory_increase, max_kl=max_kl, max_accuracy_drop=max_accuracy_drop,
                        same_layer=same_layer)
    comparison = compare_files(base, new, limits)
    fmt = OutputFormat.json if as_json else output_format
    if fmt is OutputFormat.json:
        typer.echo(json_text(comparison.to_dict()))
    elif fmt is OutputFormat.markdown:
        typer.echo(render_markdown(comparison))
    else:
        _render_comparison(comparison)
    message = comparison.failure_message()
    if message:
        raise CheckFailed(message)


def _render_comparison(comparison: Comparison) -> None:
    table = Table(title=f"vtw compare: {escape(comparison.base_source)} -> {escape(comparison.new_source)}")
    table.add_column("metric")
    for column in ("BASE", "NEW", "Δ", "Δ %"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in comparison.rows:
        absolute, pct = format_delta(row)
        table.add_row(row.metric, format_value(row.base, row.unit), format_value(row.new, row.unit), absolute, pct)
    _print_rows(table, comparison)
    if comparison.gates:
        gates = Table(title="gates")
        gates.add_column("gate", no_wrap=True)
        gates.add_column("status", no_wrap=True)
        gates.add_column("detail", overflow="fold")
        for gate in comparison.gates:
            gates.add_row(gate.name, _status(gate.status), escape(gate.detail))
        print_table(gates, layout="lines")
    else:
        console.print("[dim]no gates requested[/]")
    for note in comparison.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)


def _print_rows(table: Table, comparison: Comparison) -> None:
    """The table where it fits (without the absolute Δ if need be); in a narrow log one line per figure."""
    from vtwcli.cli._tables import fits

    if fits(table, console):
        console.print(table)
        return
    narrow = Table(title=table.title)
    for column in ("metric", "BASE", "NEW", "Δ %"):
        narrow.add_column(column, justify="left" if column == "metric" else "right", no_wrap=column != "metric")
    for row in comparison.rows:
        narrow.add_row(row.metric, format_value(row.base, row.unit), format_value(row.new, row.unit), format_delta(row)[1])
    if fits(narrow, console):
        console.print(narrow)
        return
    console.print(table.title, highlight=False, soft_wrap=True)
    for row in comparison.rows:
        pct = format_delta(row)[1]
        console.print(f"  {row.metric}: {format_value(row.base, row.unit)} -> {format_value(row.new, row.unit)}"
                      + ("" if pct == "—" else f" ({pct})"), highlight=False, soft_wrap=True)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


_MD_STATUS = {"pass": "✅ pass", "FAIL": "❌ FAIL", "n/a": "➖ n/a"}


def render_markdown(comparison: Comparison) -> str:
    """GitHub-flavoured markdown: a metrics table, a gates table and notes (for a CI comment)."""
    lines = [f"### vtw compare: `{_cell(comparison.base_source)}` → `{_cell(comparison.new_source)}`", "",
             "| metric | BASE | NEW | Δ | Δ % |", "|---|---:|---:|---:|---:|"]
    for row in comparison.rows:
        absolute, pct = format_delta(row)
        lines.append(f"| {_cell(row.metric)} | {_cell(format_value(row.base, row.unit))} | "
                     f"{_cell(format_value(row.new, row.unit))} | {_cell(absolute)} | {_cell(pct)} |")
    lines.append("")
    if comparison.gates:
        lines += ["| gate | status | detail |", "|---|---|---|"]
        lines += [f"| {_cell(g.name)} | {_MD_STATUS[g.status]} | {_cell(g.detail)} |" for g in comparison.gates]
        verdict = "**All gates passed.**" if comparison.passed else \
            f"**{sum(not g.passed for g in comparison.gates)} gate(s) failed.**"
        lines += ["", verdict]
    else:
        lines.append("_No gates requested._")
    for note in comparison.notes:
        lines += ["", f"> **Note:** {_cell(note)}"]
    return "\n".join(lines)
