"""`vtw datasets`: the bundled evaluation datasets."""

from __future__ import annotations


import typer
from rich.table import Table

from vtwcli.cli import app
from vtwcli.cli._render import json_text
from vtwcli.cli._tables import print_table
from vtwcli.cli._state import console
from vtwcli.datasets import bundled_datasets


@app.command("datasets")
def datasets_command(as_json: bool = typer.Option(False, "--json", help="Machine-readable output (full sha256).")) -> None:
    """List the bundled datasets: name, tasks, samples, sha256 of data.jsonl, licence, description.

    Any command that takes a dataset also accepts a path to your own JSONL file (see docs/datasets.md).
    """
    infos = bundled_datasets()
    if as_json:
        typer.echo(json_text([info.to_dict() for info in infos]))
        return
    table = Table(title="Bundled datasets")
    table.add_column("name", no_wrap=True)
    table.add_column("tasks")
    table.add_column("samples", justify="right")
    table.add_column("sha256", no_wrap=True, min_width=12)
    table.add_column("licence")
    table.add_column("description")
    for info in infos:
        table.add_row(
            info.name,
            ", ".join(info.tasks),
            str(info.num_samples),
            info.sha256[:12],
            info.licence,
            info.description,
        )
    print_table(table)
