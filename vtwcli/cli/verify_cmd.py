"""`vtw verify`: check that withdrawal is exact on this model (logic in vtwcli.verifying / vtwcli.verify)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from vtwcli.cli import app
from vtwcli.cli._state import console, err_console
from vtwcli.errors import CheckFailed


@app.command("verify")
def verify_command(
    model: Optional[str] = typer.Option(None, "--model", help="Hub id or local directory. Default: the bundled demo model."),
    layer: Optional[list[int]] = typer.Option(None, "--layer", help="Withdrawal layer K to check (repeatable, 1..L-1). "
                                              "Default: 1, L/4, L/2 and L-1. K = L is always checked."),
    dataset: Optional[list[str]] = typer.Option(None, "--dataset", help="Bundled dataset name or JSONL path "
                                                "(repeatable). Default: photo_vqa."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Prompts drawn per dataset (seeded). Default: 4 (or "
                                          "all, where a dataset has fewer)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample draw."),
    new_tokens: int = typer.Option(4, "--new-tokens", help="Tokens generated per prompt by the generate() check."),
    batch_size: int = typer.Option(4, "--batch-size", help="Prompts per batched (left-padded) forward."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16 (sets the tolerance)."),
    attn: str = typer.Option("sdpa", "--attn", help="Attention implementation: sdpa or eager."),
    device_map: Optional[str] = typer.Option(None, "--device-map", help="Pass to from_pretrained, e.g. auto."),
    generic: bool = typer.Option(False, "--generic", help="For an architecture without an adapter entry: derive one "
                                 "from the standard layout (docs/architectures.md, 'Unlisted architectures')."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Store the result as the `verification` section "
                                          "of this profile (created if missing; an existing profile of the same model "
                                          "keeps its other sections)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (CPU). Default: half the CPU cores, "
                                          "at least 1."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Check that withdrawal is exact on this model: vision tokens, K = L, an independent reference, generate()."""
    from vtwcli.verifying import VerifyJob, verify_to_profile

    job = VerifyJob(model=model, layers=tuple(layer or ()), datasets=tuple(dataset or ()), samples=samples, seed=seed,
                    new_tokens=new_tokens, batch_size=batch_size, device=device, dtype=dtype, attn=attn,
                    device_map=device_map, generic=generic, output=output, threads=threads)
    run = verify_to_profile(job, progress=lambda total, text: _progress_bar(total, text, hidden=as_json))
    if as_json:
        typer.echo(json.dumps({**run.section, "output": str(run.written) if run.written else None}, indent=2))
    else:
        _render(run)
    message = run.failure_message()
    if message is not None:
        raise CheckFailed(message)


@contextlib.contextmanager
def _progress_bar(total: int, description: str, *, hidden: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # a bar only on a terminal: in a log rich leaves an empty line on stderr, before the one-line error too
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=hidden or not err_console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _render(run) -> None:
    result, section = run.result, run.section
    table = Table(title=f"vtw verify: {run.architecture}, {section['dtype']}, {result.samples} prompt(s), reference: "
                  f"{result.reference}, tolerance {section['relative_tolerance']:g} x max(1, |logit|)")
    for column in ("check", "status", "max |Δ|", "tolerance", "detail"):
        table.add_column(column, justify="right" if column in ("max |Δ|", "tolerance") else "left",
                         overflow="fold", no_wrap=column == "check")
    for check in result.checks:
        status = "[green]pass[/]" if check.passed else "[bold red]FAIL[/]"
        diff = "-" if check.max_abs_diff is None else f"{check.max_abs_diff:.3g}"
        tol = "-" if check.tolerance is None else f"{check.tolerance:.3g}"
        table.add_row(escape(check.name), status, diff, tol, escape(check.detail))
    console.print(table)
    if result.passed:
        console.print(f"[bold green]withdrawal is exact on this model[/] (K = {', '.join(map(str, result.layers))} "
                      f"and K = L = {result.num_layers})")
    if run.derived_notes is not None:
        console.print(f"adapter derived by --generic: {escape(run.derived_notes)}", highlight=False)
    if run.written is not None:
        console.print(f"verification written to [bold]{escape(str(run.written))}[/]", soft_wrap=True)
