"""`vtw verify`: check that withdrawal is exact on this model (logic in vtwcli.verify)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from vtwcli.cli import app
from vtwcli.cli._state import console, err_console
from vtwcli.errors import CheckFailed, VtwError

DEFAULT_DATASET = "photo_vqa"
DEFAULT_SAMPLES = 4


@app.command("verify")
def verify_command(
    model: Optional[str] = typer.Option(None, "--model", help="Hub id or local directory. Default: the bundled demo model."),
    layer: Optional[list[int]] = typer.Option(None, "--layer", help="Withdrawal layer K to check (repeatable, 1..L-1). "
                                              "Default: 1, L/4, L/2 and L-1. K = L is always checked."),
    dataset: Optional[list[str]] = typer.Option(None, "--dataset", help="Bundled dataset name or JSONL path "
                                                f"(repeatable). Default: {DEFAULT_DATASET}."),
    samples: Optional[int] = typer.Option(None, "--samples", help=f"Prompts drawn per dataset (seeded). Default: "
                                          f"{DEFAULT_SAMPLES} (or all, where a dataset has fewer)."),
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
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Check that withdrawal is exact on this model: vision tokens, K = L, an independent reference, generate()."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vtwcli.cli._render import check_output_path
    from vtwcli.datasets import load_dataset, sample_dataset
    from vtwcli.generic import forget, register
    from vtwcli.loading import load_model, model_section
    from vtwcli.verify import default_layers, verification_section, verify
    from vtwcli.withdrawal import num_decoder_layers

    if output is not None:
        check_output_path(output, "vtw-verify.yaml")
    if batch_size < 1:
        raise VtwError(f"--batch-size {batch_size}: use 1 or more")
    names = dataset or [DEFAULT_DATASET]
    chosen = []
    data = []
    for name in names:
        loaded_data = load_dataset(name)
        picked = sample_dataset(loaded_data, min(DEFAULT_SAMPLES, len(loaded_data)) if samples is None else samples,
                                seed)
        chosen += picked
        data.append({"name": loaded_data.name, "sha256": loaded_data.sha256, "sample_ids": [s.id for s in picked]})
    loaded = load_model(model, device=device, dtype=dtype, attn=attn, device_map=device_map, generic=generic)
    derived = register(loaded.model) if generic else None
    num_layers = num_decoder_layers(loaded.model)
    layers = sorted(set(layer)) if layer else default_layers(num_layers)
    steps_per_batch = 2 + 2 * len(layers)
    batches = -(-len(chosen) // batch_size)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"verifying K = {', '.join(map(str, layers))} on {len(chosen)} prompt(s)",
                            total=steps_per_batch * batches)
        try:
            result = verify(loaded.model, loaded.processor, chosen, layers=layers, new_tokens=new_tokens,
                            batch_size=batch_size, progress=lambda n: bar.advance(task, n))
        except BaseException:
            if derived is not None:
                forget(loaded.architecture)
            raise

    section = verification_section(result, loaded.model, data)
    if derived is not None:
        section["adapter"] = {"derived": True, "notes": derived.notes}
    written = _store(output, section, loaded, model_section) if output is not None else None
    if as_json:
        typer.echo(json.dumps({**section, "output": str(written) if written else None}, indent=2))
    else:
        _render(result, section, loaded.architecture)
        if derived is not None:
            console.print(f"adapter derived by --generic: {escape(derived.notes)}", highlight=False)
        if written is not None:
            console.print(f"verification written to [bold]{escape(str(written))}[/]", soft_wrap=True)
    if not result.passed:
        if derived is not None:
            forget(loaded.architecture)
            raise CheckFailed(f"--generic: {loaded.architecture} cannot be handled exactly with a derived adapter: "
                              + result.failure_message().removeprefix("withdrawal is not exact on this model: "))
        raise CheckFailed(result.failure_message())


def _store(path: Path, section: dict, loaded, model_section) -> Path:
    """Add ``verification`` to the profile at ``path`` (same model only), or write a new profile there."""
    from vtwcli.profile import new_profile, read_profile_dict, write_profile

    if path.exists():
        data = read_profile_dict(path)
        recorded = data["model"].get("config_sha256")
        if recorded != section["config_sha256"]:
            raise VtwError(f"--output {path} is a profile of another model ({data['model'].get('name_or_path')}, "
                           f"config_sha256 {str(recorded)[:12]}...); verify that model or choose another --output")
    else:
        data = new_profile(model_section(loaded), loaded.device)
    data["verification"] = section
    data["environment"] = {k: str(v) if isinstance(v, str) else v for k, v in data["environment"].items()}
    return write_profile(data, path, force=True)


def _render(result, section: dict, architecture: str) -> None:
    table = Table(title=f"vtw verify: {architecture}, {section['dtype']}, {result.samples} prompt(s), reference: "
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
