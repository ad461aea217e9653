"""`vtw models`: the architectures withdrawal supports."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from vtwcli.adapters import ADAPTERS, PLANNED
from vtwcli.cli import app
from vtwcli.cli._state import console


@app.command("models")
def models_command(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the model families and transformers classes that withdrawal supports."""
    rows = [
        {"family": a.family, "architectures": list(a.architectures), "status": "supported", "notes": a.notes}
        for a in ADAPTERS
    ]
    rows += [
        {"family": family, "architectures": [c.strip() for c in classes.split(",")], "status": "planned", "notes": ""}
        for family, classes in PLANNED.items()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="Architectures")
    for column in ("family", "transformers class", "status", "notes"):
        table.add_column(column)
    for row in rows:
        style = "green" if row["status"] == "supported" else "dim"
        table.add_row(row["family"], "\n".join(row["architectures"]), f"[{style}]{row['status']}[/]", row["notes"])
    console.print(table)
