"""`vtw calibrate`: choose the withdrawal layer K for a model and write it into a YAML profile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

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
    samples: Optional[str] = typer.Option(None, "--samples", help="Samples drawn per dataset (seeded), or auto: draw "
                                          "rounds of --auto-step until K is stable (--auto-target). Default: all."),
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
    select: str = typer.Option("mean", "--select", help="How K is chosen: mean (first layer with mean KL <= "
                               "threshold), upper (first whose bootstrap upper bound is), stable=P (the smallest K that "
                               "a fraction P of bootstrap resamples choose or beat, e.g. stable=0.95)."),
    auto_target: Optional[float] = typer.Option(None, "--auto-target", help="--samples auto: stop when this share of "
                                                "bootstrap resamples chooses the same K (default 0.9)."),
    auto_step: Optional[int] = typer.Option(None, "--auto-step", help="--samples auto: samples added per dataset "
                                            "per round (default 5)."),
    auto_budget: Optional[int] = typer.Option(None, "--auto-budget", help="--samples auto: at most this many "
                                              "samples per dataset (default: all)."),
) -> None:
    """Calibrate the withdrawal layer K by the KL criterion and write a YAML profile."""
    # Heavy imports here, not at module level: `vtw --help` must not wait for torch.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vtwcli.adapters import parse_kinds
    from vtwcli.calibration import CalibrationOptions, DatasetSelection, calibrate, calibration_section
    from vtwcli.checkpoint import CheckpointStore
    from vtwcli.cli._render import check_output_path, kl_chart, kl_table, output_path_for, save_plot
    from vtwcli.cli._signals import stop_on_signals
    from vtwcli.datasets import draw_order, load_dataset, sample_dataset
    from vtwcli.loading import load_model, model_section
    from vtwcli.profile import new_profile, write_profile
    from vtwcli.selection import parse_rule, stability_line

    if diagnose and attn != "eager":
        raise VtwError("--diagnose needs attention weights: add --attn eager")
    count = parse_samples(samples)
    auto = auto_options(count == "auto", auto_target, auto_step, auto_budget)
    options = CalibrationOptions(threshold=threshold, min_layer=min_layer, criterion=criterion, direction=direction,
                                 batch_size=batch_size, seed=seed, diagnose=diagnose, evaluate=evaluate,
                                 max_new_tokens=max_new_tokens, kinds=parse_kinds(withdraw), select=select, auto=auto)
    parse_rule(select)
    if auto is not None:
        auto.validate()
    check_output_path(output, "vtw-calibration.yaml")
    if not resume:
        output = output_path_for(output, force)
    loaded = load_model(model, device=device, dtype=dtype, attn=attn, device_map=device_map)
    names = dataset or default_datasets(loaded.is_bundled)
    if not names:
        raise VtwError("no bundled calibration datasets were found for this model; pass --dataset NAME_OR_JSONL "
                       "(see `vtw datasets`)")
    selections = []
    for name in names:
        data = load_dataset(name)
        drawn = draw_order(data, seed) if auto is not None else sample_dataset(data, count, seed)
        selections.append(DatasetSelection(dataset=data, samples=drawn, seed=seed))
    total = sum(len(s.samples) for s in selections)  # with --samples auto: at most this many
    settings = {"model": model_section(loaded), "options": vars(options),
                "data": [(s.dataset.sha256, [x.id for x in s.samples]) for s in selections]}
    store = CheckpointStore(output.with_name(output.name + ".partial.jsonl"), settings, resume=resume, force=force)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=as_json) as bar, stop_on_signals():
        tasks = {"kl": bar.add_task("KL, every layer", total=total)}
        if evaluate:  # --samples auto: how many is known only when the KL rounds stop
            tasks["eval"] = bar.add_task("accuracy, full and at K", total=None if auto else total * 2)
        try:
            result = calibrate(loaded.model, loaded.processor, selections, options, store=store,
                               progress=lambda phase, n: bar.advance(tasks[phase], n))
        except KeyboardInterrupt:
            raise VtwError(f"interrupted; {len(store)} finished batches are saved in {store.path}; continue with the "
                           "same command plus --resume", exit_code=130) from None

    profile = new_profile(model_section(loaded), loaded.device)
    profile["data"] = [{"name": s.dataset.name, "path": str(s.dataset.path), "sha256": s.dataset.sha256,
                        "samples": len(s.samples), "seed": s.seed, "sample_ids": [x.id for x in s.samples]}
                       for s in result.selections]
    profile["calibration"] = calibration_section(result)
    if result.evaluation is not None:
        profile["evaluation"] = result.evaluation
    written = write_profile(profile, output, force=force or resume)
    store.finish()
    if plot is not None:
        save_plot(result, plot)

    rule = parse_rule(options.select)
    if as_json:
        typer.echo(json.dumps(profile, indent=2))
    else:
        console.print(kl_table(result))
        console.print(kl_chart(result))
        for entry in result.per_dataset:
            own = entry["layer"] if entry["layer"] is not None else "none"
            console.print(f"  {entry['name']}: first layer under the threshold = {own}")
        console.print(f"K stability: {stability_line(result.selection['k_bootstrap'])} "
                      f"({options.bootstrap_resamples} bootstrap resamples, stratified by dataset)", soft_wrap=True)
        if "samples_auto" in result.selection:
            console.print(auto_line(result.selection["samples_auto"], len(result.selections)))
        if result.evaluation:
            ev = result.evaluation

            def accuracy(side: dict) -> str:
                low, high = side["accuracy_ci"]
                return f"{side['accuracy']:.1%} ({low:.1%}..{high:.1%})"

            withdrawn = (f", withdrawn at K={result.layer} {accuracy(ev['withdrawn'])}"
                         if ev["withdrawn"]["accuracy"] is not None else "")
            console.print(f"accuracy on {ev['samples']} samples (95% Wilson interval): full model "
                          f"{accuracy(ev['baseline'])}{withdrawn}", soft_wrap=True)
        console.print(f"cost: {result.cost['full_forward_equivalents']:.2f} full-forward equivalents for all "
                      f"{len(result.layers)} candidate layers, {result.cost['seconds']:.1f} s")
        console.print(f"profile written to [bold]{written}[/]", soft_wrap=True)  # a path must stay one piece to copy
    for warning in result.selection["warnings"]:  # on stderr: seen with --json and in CI logs too
        err_console.print(f"[yellow]warning:[/] {escape(warning['message'])}", soft_wrap=True, highlight=False)
    if result.layer is None:
        unmet = (f"has mean KL <= {threshold}" if rule.name == "mean" else
                 f"has a bootstrap upper bound of the mean KL <= {threshold} (--select upper)" if rule.name == "upper"
                 else f"is chosen or beaten by {rule.share:.0%} of bootstrap resamples (--select {rule})")
        raise CheckFailed(f"no layer in {options.min_layer}..{result.layers[-1]} {unmet}; the curve is in "
                          f"{written}; " + ("raise --threshold or calibrate on other data" if not rule.conservative else
                                            "calibrate on more samples (--samples auto), raise --threshold or use "
                                            "--select mean"))
    if not as_json:
        console.print(f"[bold green]K = {result.layer}[/] ({rule.describe(threshold)}"
                      + (", the default threshold" if threshold == DEFAULT_THRESHOLD else "") + ")")


def parse_samples(text: str | None) -> int | str | None:
    """--samples: None (every sample), a count, or "auto"."""
    if text is None:
        return None
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise VtwError(f"--samples {text!r} is not a sample count; use a positive integer (per dataset) or auto") \
            from None


def auto_options(auto: bool, target: float | None, step: int | None, budget: int | None):
    """The --samples auto settings; the --auto-* options mean nothing without it."""
    from vtwcli.selection import DEFAULT_AUTO_STEP, DEFAULT_AUTO_TARGET, AutoOptions

    given = [name for name, value in (("--auto-target", target), ("--auto-step", step), ("--auto-budget", budget))
             if value is not None]
    if not auto:
        if given:
            raise VtwError(f"{given[0]} only applies with --samples auto; add --samples auto or drop {given[0]}")
        return None
    return AutoOptions(target=DEFAULT_AUTO_TARGET if target is None else target,
                       step=DEFAULT_AUTO_STEP if step is None else step, budget=budget)


def auto_line(record: dict, datasets: int) -> str:
    why = {"stable": f"the modal K's share reached {record['target']:.0%} with its interval clear of the threshold",
           "data": "the datasets ran out", "budget": f"the budget of {record['budget']} per dataset was reached"}
    last = record["rounds"][-1]
    return (f"--samples auto: {record['samples']} samples over {datasets} dataset(s) in {len(record['rounds'])} "
            f"round(s) of {record['step']} per dataset; stopped because {why[record['stopped']]} (modal K "
            f"{last['modal_k']} in {last['modal_share']:.0%} of resamples)")
