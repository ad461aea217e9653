"""`vtw calibrate`: choose the withdrawal layer K for a model and write it into a YAML profile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from vtwcli.cli import app
from vtwcli.cli._state import console, err_console
from vtwcli.defaults import DEFAULT_THRESHOLD
from vtwcli.errors import CheckFailed, VtwError


def default_datasets(is_bundled: bool) -> list[str]:
    """Synthetic sets for the bundled model (what it was trained on), photographs for real models."""
    from vtwcli.datasets import bundled_datasets

    names = [info.name for info in bundled_datasets()]
    prefix = "synthetic_" if is_bundled else "photo_"
    return [name for name in names if name.startswith(prefix)]


@app.command("calibrate")
def calibrate_command(
    model: Optional[str] = typer.Option(None, "--model", help="Hub id or local directory. Default: the bundled demo model."),
    dataset: Optional[list[str]] = typer.Option(None, "--dataset", help="Bundled dataset name or JSONL path (repeatable). "
                                                "Default: the synthetic sets for the bundled model, the photograph sets otherwise."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Samples drawn per dataset (seeded). Default: all."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample draw and of the bootstrap."),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, "--threshold",
                                    help=f"Choose the first layer whose mean KL is <= this (default {DEFAULT_THRESHOLD}, "
                                    "the reference's value for LLaVA-1.5-7B)."),
    min_layer: int = typer.Option(1, "--min-layer", help="First candidate layer (0-based decoder layer index)."),
    criterion: str = typer.Option("last_token", "--criterion",
                                  help="last_token: KL of the first answer token's distribution; teacher_forced: "
                                  "mean KL over every reference answer token."),
    direction: str = typer.Option("withdrawn_to_full", "--direction",
                                  help="withdrawn_to_full = KL(P_K || P_full) (the reference's); or full_to_withdrawn."),
    batch_size: int = typer.Option(8, "--batch-size", help="Samples per forward."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16 (KL is float32 anyway)."),
    attn: str = typer.Option("sdpa", "--attn", help="Attention implementation: sdpa or eager."),
    device_map: Optional[str] = typer.Option(None, "--device-map", help="Pass to from_pretrained, e.g. auto."),
    output: Path = typer.Option(Path("vtw-calibration.yaml"), "--output", "-o", help="Profile to write (YAML)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --output if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the profile as JSON instead of tables."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also save a PNG of KL vs layer (needs matplotlib)."),
    diagnose: bool = typer.Option(False, "--diagnose", help="Record the share of the last prompt token's attention on "
                                  "system / vision / text tokens per layer (needs --attn eager)."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Measure greedy-answer accuracy, full and at K."),
    max_new_tokens: int = typer.Option(8, "--max-new-tokens", help="Tokens generated per answer for the accuracy."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its checkpoint "
                                "(<output>.partial.jsonl); gives the same profile as an uninterrupted run."),
    withdraw: Optional[str] = typer.Option(None, "--withdraw", help="Which vision tokens to withdraw: image, video or "
                                           "image,video (families with video). Default: every vision token."),
    generic: bool = typer.Option(False, "--generic", help="For an architecture without an adapter entry: derive one "
                                 "from the standard layout and run `vtw verify` on 2 samples first (refused unless "
                                 "exact)."),
) -> None:
    """Calibrate the withdrawal layer K by the KL criterion and write a YAML profile."""
    # Heavy imports here, not at module level: `vtw --help` must not wait for torch.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vtwcli.adapters import parse_kinds
    from vtwcli.calibration import CalibrationOptions, DatasetSelection, calibrate, calibration_section
    from vtwcli.checkpoint import CheckpointStore
    from vtwcli.cli._render import check_output_path, kl_chart, kl_table, output_path_for, save_plot
    from vtwcli.cli._signals import stop_on_signals
    from vtwcli.datasets import load_dataset, sample_dataset
    from vtwcli.loading import load_model, model_section
    from vtwcli.profile import new_profile, write_profile

    if diagnose and attn != "eager":
        raise VtwError("--diagnose needs attention weights: add --attn eager")
    options = CalibrationOptions(threshold=threshold, min_layer=min_layer, criterion=criterion, direction=direction,
                                 batch_size=batch_size, seed=seed, diagnose=diagnose, evaluate=evaluate,
                                 max_new_tokens=max_new_tokens, kinds=parse_kinds(withdraw))
    check_output_path(output, "vtw-calibration.yaml")
    if not resume:
        output = output_path_for(output, force)
    loaded = load_model(model, device=device, dtype=dtype, attn=attn, device_map=device_map, generic=generic)
    names = dataset or default_datasets(loaded.is_bundled)
    if not names:
        raise VtwError("no bundled calibration datasets were found for this model; pass --dataset NAME_OR_JSONL "
                       "(see `vtw datasets`)")
    selections = []
    for name in names:
        data = load_dataset(name)
        selections.append(DatasetSelection(dataset=data, samples=sample_dataset(data, samples, seed), seed=seed))
    verification = None
    if generic:
        from vtwcli.generic import adopt_with_section, verification_samples

        chosen, record = verification_samples(selections)
        with console.status("--generic: verifying the derived adapter ...", spinner="dots") if not as_json else \
                _quiet():
            verification = adopt_with_section(loaded.model, loaded.processor, chosen, record)
    total = sum(len(s.samples) for s in selections)
    settings = {"model": model_section(loaded), "options": vars(options),
                "data": [(s.dataset.sha256, [x.id for x in s.samples]) for s in selections]}
    store = CheckpointStore(output.with_name(output.name + ".partial.jsonl"), settings, resume=resume, force=force)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=as_json) as bar, stop_on_signals():
        tasks = {"kl": bar.add_task("KL, every layer", total=total)}
        if evaluate:
            tasks["eval"] = bar.add_task("accuracy, full and at K", total=total * 2)
        try:
            result = calibrate(loaded.model, loaded.processor, selections, options, store=store,
                               progress=lambda phase, n: bar.advance(tasks[phase], n))
        except KeyboardInterrupt:
            raise VtwError(f"interrupted; {len(store)} finished batches are saved in {store.path}; continue with the "
                           "same command plus --resume", exit_code=130) from None

    profile = new_profile(model_section(loaded), loaded.device)
    profile["data"] = [{"name": s.dataset.name, "path": str(s.dataset.path), "sha256": s.dataset.sha256,
                        "samples": len(s.samples), "seed": s.seed, "sample_ids": [x.id for x in s.samples]}
                       for s in selections]
    profile["calibration"] = calibration_section(result)
    if result.evaluation is not None:
        profile["evaluation"] = result.evaluation
    if verification is not None:
        profile["verification"] = verification
    written = write_profile(profile, output, force=force or resume)
    store.finish()
    if plot is not None:
        save_plot(result, plot)

    if as_json:
        typer.echo(json.dumps(profile, indent=2))
    else:
        console.print(kl_table(result))
        console.print(kl_chart(result))
        for entry in result.per_dataset:
            own = entry["layer"] if entry["layer"] is not None else "none"
            console.print(f"  {entry['name']}: first layer under the threshold = {own}")
        if result.evaluation:
            ev = result.evaluation
            withdrawn = ev["withdrawn"]["accuracy"]
            console.print(f"accuracy on {ev['samples']} samples: full model {ev['baseline']['accuracy']:.1%}"
                          + (f", withdrawn at K={result.layer} {withdrawn:.1%}" if withdrawn is not None else ""))
        console.print(f"cost: {result.cost['full_forward_equivalents']:.2f} full-forward equivalents for all "
                      f"{len(result.layers)} candidate layers, {result.cost['seconds']:.1f} s")
        console.print(f"profile written to [bold]{written}[/]", soft_wrap=True)  # a path must stay one piece to copy
    if result.layer is None:
        raise CheckFailed(f"no layer in {options.min_layer}..{result.layers[-1]} has mean KL <= {threshold}; the "
                          f"curve is in {written}; raise --threshold or calibrate on other data")
    if not as_json:
        console.print(f"[bold green]K = {result.layer}[/] (first layer with mean KL <= {threshold}"
                      + (", the default threshold" if threshold == DEFAULT_THRESHOLD else "") + ")")


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None
