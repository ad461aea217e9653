"""`vtw models`: the architectures withdrawal supports."""

from __future__ import annotations


import typer
from rich.table import Table

from vtwcli.adapters import ADAPTERS, NOT_APPLICABLE, PLANNED
from vtwcli.cli import app
from vtwcli.cli._render import json_text
from vtwcli.cli._tables import print_table
from vtwcli.cli._state import console


def _status(adapter) -> str:
    """supported; "withdraw() only" where the family has no vision token ids (inputs_embeds + vision_mask, no
    processor path for the CLI); "blocked upstream" where the installed transformers breaks its forward."""
    if adapter.upstream_defect is not None and adapter.upstream_defect(adapter.architectures[0]):
        return "blocked upstream"
    return "supported" if adapter.vision_token_id_keys else "withdraw() only"


def _flops_only_cell(row: dict) -> str:
    return ("yes (+video)" if row["flops_only_videos"] else "yes") if row["flops_only"] else "no"


@app.command("models")
def models_command(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List every image-text-to-text family of transformers: supported, planned (and why) or not applicable."""
    rows = [
        {"family": a.family, "architectures": list(a.architectures), "status": _status(a),
         "inputs": a.declared_kinds() or ["vision_mask"],
         "flops_only": a.fixed_image_layout or a.image_tokens is not None,
         "flops_only_videos": a.video_tokens is not None, "notes": a.notes}
        for a in ADAPTERS
    ]
    rows += [
        {"family": family, "architectures": list(entry.architectures), "status": status, "inputs": [],
         "flops_only": False, "flops_only_videos": False, "notes": entry.reason}
        for status, entries in (("planned", PLANNED), ("not applicable", NOT_APPLICABLE))
        for family, entry in entries.items()
    ]
    if as_json:
        typer.echo(json_text(rows))
        return
    table = Table(title="Architectures (`withdraw`, `vtw calibrate` and `vtw profile` work on every supported one; "
                        "see the notes of the others)")
    table.add_column("family")
    table.add_column("transformers class", no_wrap=True)
    table.add_column("status")
    table.add_column("inputs")
    table.add_column("--flops-only")
    table.add_column("notes", ratio=1)
    for row in rows:
        style = {"supported": "green", "planned": "yellow", "withdraw() only": "yellow",
                 "blocked upstream": "red"}.get(row["status"], "dim")
        table.add_row(row["family"], "\n".join(row["architectures"]), f"[{style}]{row['status']}[/]",
                      ", ".join(row["inputs"]), _flops_only_cell(row), row["notes"])
    print_table(table)
    console.print("Not listed: `vtw verify --generic --model X` derives an adapter from the standard layout and "
                  "uses it only if withdrawal verifies exact (docs/architectures.md, 'Unlisted architectures').",
                  style="dim", highlight=False)
