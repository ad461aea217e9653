"""`vtw calibrate`: choose the withdrawal layer K for a model and write it into a YAML profile."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from vtwcli.cli import app
from vtwcli.cli._render import json_text
from vtwcli.cli._tables import print_table
from vtwcli.cli._state import console, err_console
from vtwcli.defaults import DEFAULT_THRESHOLD
from vtwcli.errors import CheckFailed, VtwError


# How many samples and how K is read off the curve (docs/calibration.md).
_SAMPLES = typer.Option(None, "--samples", help="Samples drawn per dataset (seeded), or auto: draw rounds of "
                        "--auto-step until K is stable (--auto-target). Default: all.")
_SELECT = typer.Option("mean", "--select", help="How K is chosen: mean (first layer with mean KL <= threshold), upper "
                       "(first whose bootstrap upper bound is), stable=P (the smallest K that a fraction P of bootstrap "
                       "resamples choose or beat, e.g. stable=0.95).")
_AUTO_TARGET = typer.Option(None, "--auto-target", help="--samples auto: stop when this share of bootstrap resamples "
                            "chooses the same K and its interval is clear of the threshold (default 0.9).")
_AUTO_STEP = typer.Option(None, "--auto-step", help="--samples auto: samples added per dataset per round (default 5).")
_AUTO_BUDGET = typer.Option(None, "--auto-budget", help="--samples auto: at most this many samples per dataset "
                            "(default: all).")
# Options whose help runs over several lines, kept out of the signature.
_CRITERION = typer.Option("last_token", "--criterion", help="last_token: KL of the first answer token's distribution; "
                          "teacher_forced: mean KL over every reference answer token.")
_DIRECTION = typer.Option("withdrawn_to_full", "--direction",
                          help="withdrawn_to_full = KL(P_K || P_full) (the reference's); or full_to_withdrawn.")
_DIAGNOSE = typer.Option(False, "--diagnose", help="Record the share of the last prompt token's attention on "
                         "system / vision / text tokens per layer (needs --attn eager).")
_RESUME = typer.Option(False, "--resume", help="Continue an interrupted run from its checkpoint "
                       "(<output>.partial.jsonl); gives the same profile as an uninterrupted run.")
_WITHDRAW = typer.Option(None, "--withdraw", help="Which vision tokens to withdraw: image, video or image,video "
                         "(families with video). Default: every vision token.")
_DATASET = typer.Option(None, "--dataset", help="Bundled dataset name or JSONL path (repeatable). "
                        "Default: the synthetic sets for the bundled model, the photograph sets otherwise.")
_THRESHOLD = typer.Option(DEFAULT_THRESHOLD, "--threshold",
                          help=f"Choose the first layer whose mean KL is <= this (default {DEFAULT_THRESHOLD}, "
                          "the reference's value for LLaVA-1.5-7B).")
_GENERIC = typer.Option(False, "--generic", help="For an architecture without an adapter entry: derive one "
                        "from the standard layout and run `vtw verify` on 2 samples first (refused unless "
                        "exact).")
_THREADS = typer.Option(None, "--threads", help="torch threads (CPU). Default: half the CPU cores, "
                        "at least 1 (torch's own default, every core, slows down under outside load).")


@app.command("calibrate")
def calibrate_command(
    model: Optional[str] = typer.Option(None, "--model", help="Hub id or local directory. Default: the bundled demo model."),
    dataset: Optional[list[str]] = _DATASET,
    samples: Optional[str] = _SAMPLES,
    seed: int = typer.Option(0, "--seed", help="Seed of the sample draw and of the bootstrap."),
    threshold: float = _THRESHOLD,
    min_layer: int = typer.Option(1, "--min-layer", help="First candidate layer (0-based decoder layer index)."),
    criterion: str = _CRITERION,
    direction: str = _DIRECTION,
    batch_size: int = typer.Option(8, "--batch-size", help="Samples per forward."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16 (KL is float32 anyway)."),
    attn: str = typer.Option("sdpa", "--attn", help="Attention implementation: sdpa or eager."),
    device_map: Optional[str] = typer.Option(None, "--device-map", help="Pass to from_pretrained, e.g. auto."),
    output: Path = typer.Option(Path("vtw-calibration.yaml"), "--output", "-o", help="Profile to write (YAML)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --output if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the profile as JSON instead of tables."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also save a PNG of KL vs layer (needs matplotlib)."),
    diagnose: bool = _DIAGNOSE,
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Measure greedy-answer accuracy, full and at K."),
    max_new_tokens: int = typer.Option(8, "--max-new-tokens", help="Tokens generated per answer for the accuracy."),
    resume: bool = _RESUME,
    withdraw: Optional[str] = _WITHDRAW,
    select: str = _SELECT, auto_target: Optional[float] = _AUTO_TARGET,
    auto_step: Optional[int] = _AUTO_STEP, auto_budget: Optional[int] = _AUTO_BUDGET,
    generic: bool = _GENERIC,
    threads: Optional[int] = _THREADS,
) -> None:
    """Calibrate the withdrawal layer K by the KL criterion and write a YAML profile."""
    # Heavy imports here, not at module level: `vtw --help` must not wait for torch.
    from vtwcli.adapters import parse_kinds
    from vtwcli.calibrating import CalibrationJob, calibrate_to_profile
    from vtwcli.calibration import CalibrationOptions
    from vtwcli.cli._render import check_plot_path, save_plot

    count, auto = samples_plan(samples, select, auto_target, auto_step, auto_budget)  # before the model loads
    options = CalibrationOptions(threshold=threshold, min_layer=min_layer, criterion=criterion, direction=direction,
                                 batch_size=batch_size, seed=seed, diagnose=diagnose, evaluate=evaluate, auto=auto,
                                 max_new_tokens=max_new_tokens, kinds=parse_kinds(withdraw), select=select)
    options.check_values()  # every value that needs no model, before it loads
    if plot is not None:
        check_plot_path(plot)
    job = CalibrationJob(options, _output_for(output, force=force, resume=resume), model=model,
                         datasets=tuple(dataset or ()), samples=None if count == "auto" else count, device=device,
                         dtype=dtype, attn=attn, device_map=device_map, force=force, resume=resume, generic=generic,
                         threads=threads)
    run = calibrate_to_profile(job, progress=lambda totals: _progress_bar(totals, hidden=as_json))
    if plot is not None:
        save_plot(run.result, plot)
    if as_json:
        typer.echo(json_text(run.profile))
    else:
        _render(run)
    _conclude(run, as_json)


def _output_for(output: Path, *, force: bool, resume: bool) -> Path:
    """The profile path, checked with its checkpoint before the model loads: a free sibling name unless
    --force, and with --resume the sibling an interrupted run wrote beside an existing output."""
    from vtwcli.checkpoint import check_checkpoint, checkpoint_path
    from vtwcli.cli._render import output_path_for
    from vtwcli.profile import check_output_path

    check_output_path(output, "vtw-calibration.yaml")
    if not resume or not os.path.lexists(checkpoint_path(output)):
        output = output_path_for(output, force)
        check_output_path(output, "vtw-calibration.yaml")
    check_checkpoint(checkpoint_path(output), resume=resume, force=force)
    return output


def _conclude(run, as_json: bool) -> None:
    """The warnings and the chosen K last, or exit 1 when no layer qualified (the curve is in the profile)."""
    from vtwcli.selection import parse_rule

    result, threshold = run.result, run.result.options.threshold
    rule = parse_rule(result.options.select)
    for warning in result.selection["warnings"]:  # on stderr: seen with --json and in CI logs too
        err_console.print(f"[yellow]warning:[/] {escape(warning['message'])}", soft_wrap=True, highlight=False)
    if result.layer is None:
        unmet = (f"has mean KL <= {threshold}" if rule.name == "mean" else
                 f"has a bootstrap upper bound of the mean KL <= {threshold} (--select upper)" if rule.name == "upper"
                 else f"is chosen or beaten by {rule.share:.0%} of bootstrap resamples (--select {rule})")
        raise CheckFailed(f"no layer in {result.options.min_layer}..{result.layers[-1]} {unmet}; the curve is in "
                          f"{run.written}; " + ("raise --threshold or calibrate on other data" if not rule.conservative
                                                else "calibrate on more samples (--samples auto), raise --threshold "
                                                "or use --select mean"))
    if not as_json:
        console.print(f"[bold green]K = {result.layer}[/] ({rule.describe(threshold)}"
                      + (", the default threshold" if threshold == DEFAULT_THRESHOLD else "") + ")")


def samples_plan(text: str | None, select: str, target: float | None, step: int | None, budget: int | None):
    """(--samples as None / a count / "auto", the --samples auto settings or None), with --select checked: the
    --auto-* options mean nothing without --samples auto."""
    from vtwcli.selection import DEFAULT_AUTO_STEP, DEFAULT_AUTO_TARGET, AutoOptions, parse_rule

    parse_rule(select)
    count = None if text is None else text.strip().lower()
    if count is not None and count != "auto":
        try:
            count = int(count)
        except ValueError:
            raise VtwError(f"--samples {text!r} is not a sample count; use a positive integer (per dataset) or "
                           "auto") from None
    given = [name for name, value in (("--auto-target", target), ("--auto-step", step), ("--auto-budget", budget))
             if value is not None]
    if count != "auto":
        if given:
            raise VtwError(f"{given[0]} only applies with --samples auto; add --samples auto or drop {given[0]}")
        return count, None
    auto = AutoOptions(target=DEFAULT_AUTO_TARGET if target is None else target,
                       step=DEFAULT_AUTO_STEP if step is None else step, budget=budget)
    auto.validate()
    return count, auto


@contextlib.contextmanager
def _progress_bar(totals: dict, *, hidden: bool):
    """A transient bar per phase on stderr (cli.main turns SIGTERM into Ctrl-C; the checkpoint stays)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    labels = {"kl": "KL, every layer", "eval": "accuracy, full and at K"}
    if not hidden and not err_console.is_terminal:  # a log: plain lines every few seconds, not a bar
        yield _plain_progress(totals, labels)
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=hidden) as bar:  # SIGTERM: see cli.main
        tasks = {phase: bar.add_task(labels[phase], total=total) for phase, total in totals.items()}  # None: unknown
        yield lambda phase, n: bar.advance(tasks[phase], n)


def _diagnose_table(result):
    """A short view of --diagnose (the profile has every layer): the first layers, those around K, the last."""
    from rich.table import Table

    shares = result.diagnose  # one entry per attention layer, labelled with its index
    around = {entry["layer"] for entry in (*shares[:2], shares[-1])}
    if result.layer is not None:
        around |= {result.layer - 1, result.layer, result.layer + 1}
    table = Table(title="attention of the last prompt token", caption="--diagnose; every layer is in the profile")
    for column in ("layer", "system", "vision", "text"):
        table.add_column(column, justify="right")
    for entry in shares:
        if entry["layer"] in around:
            chosen = entry["layer"] == result.layer
            table.add_row(f"{entry['layer']}{' = K' if chosen else ''}", f"{entry['system']:.1%}",
                          f"{entry['vision']:.1%}", f"{entry['text']:.1%}", style="bold green" if chosen else "")
    return table


def _plain_progress(totals: dict, labels: dict):
    from vtwcli.cli._progress import PlainProgress

    def write(text: str) -> None:
        err_console.print(text, highlight=False, soft_wrap=True)

    lines = {phase: PlainProgress(f"calibrate: {labels[phase]}", total, write=write) for phase, total in totals.items()}
    previous = {}

    def advance(phase: str, n: int) -> None:
        if lines[phase].done == 0 and previous:  # a phase's clock starts when the one before it ended
            lines[phase].started = lines[previous["phase"]].last
        previous["phase"] = phase
        lines[phase].advance(n, " samples" if phase == "kl" else " answers")
    return advance


def _render(run) -> None:
    from vtwcli.cli._render import kl_chart, kl_table

    result = run.result
    print_table(kl_table(result))
    console.print(kl_chart(result))
    if result.diagnose:
        print_table(_diagnose_table(result))
    for entry in result.per_dataset:
        own = entry["layer"] if entry["layer"] is not None else "none"
        console.print(f"  {entry['name']}: first layer under the threshold = {own}")
    console.print(stability_text(result), soft_wrap=True)
    if result.evaluation:
        console.print(accuracy_text(result.evaluation, result.layer), soft_wrap=True)
    cost = result.cost
    evaluation = "" if cost.get("evaluation_seconds") is None else \
        f"; accuracy evaluation {cost['evaluation_seconds']:.1f} s"
    console.print(f"cost of the KL search: {cost['full_forward_equivalents']:.2f} full-forward equivalents for all "
                  f"{len(result.layers)} candidate layers, {cost['seconds']:.1f} s{evaluation}", soft_wrap=True)
    if result.limit is not None:
        console.print(f"candidates stop at layer {result.layers[-1]}: withdrawal after it cannot be exact on this "
                      f"model ({result.limit})")
    console.print(f"profile written to [bold]{run.written}[/]", soft_wrap=True)  # a path must stay one piece to copy


def stability_text(result) -> str:
    """The K stability line, and how --samples auto stopped."""
    from vtwcli.selection import stability_line

    text = (f"K stability: {stability_line(result.selection['k_bootstrap'])} "
            f"({result.options.bootstrap_resamples} bootstrap resamples, stratified by dataset)")
    record = result.selection.get("samples_auto")
    if record is None:
        return text
    why = {"stable": f"the modal K's share reached {record['target']:.0%} with its interval clear of the threshold",
           "data": "the datasets ran out", "budget": f"the budget of {record['budget']} per dataset was reached"}
    last = record["rounds"][-1]
    return (text + f"\n--samples auto: {record['samples']} samples over {len(result.selections)} dataset(s) in "
            f"{len(record['rounds'])} round(s) of {record['step']} per dataset; stopped because "
            f"{why[record['stopped']]} (modal K {last['modal_k']} in {last['modal_share']:.0%} of resamples)")


def accuracy_text(evaluation: dict, layer) -> str:
    def accuracy(side: dict) -> str:
        low, high = side["accuracy_ci"]
        return f"{side['accuracy']:.1%} ({low:.1%}..{high:.1%})"

    withdrawn = (f", withdrawn at K={layer} {accuracy(evaluation['withdrawn'])}"
                 if evaluation["withdrawn"]["accuracy"] is not None else "")
    return (f"accuracy on {evaluation['samples']} samples (95% Wilson interval): full model "
            f"{accuracy(evaluation['baseline'])}{withdrawn}")
