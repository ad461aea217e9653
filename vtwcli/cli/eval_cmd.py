"""`vtw eval`: an lmms-eval task with and without the profile, recorded in evaluation.benchmarks (vtwcli.benchmarks)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vtwcli.benchmarks import EvalOptions, evaluate_profile
from vtwcli.cli import app
from vtwcli.cli._state import console
from vtwcli.gates.benchmarks import drop_points


def _split(values: list[str]) -> tuple[str, ...]:
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())


@app.command("eval")
def eval_command(
    profile: Path = typer.Argument(..., metavar="PROFILE", help="The profile to evaluate (its K is applied)."),
    model: str = typer.Option(..., "--model", help="The base lmms-eval model, e.g. llava_hf, qwen2_5_vl."),
    model_args: str = typer.Option("", "--model-args", help="The base model's lmms-eval args, e.g. "
                                   "pretrained=llava-hf/llava-1.5-7b-hf,dtype=bfloat16."),
    tasks: list[str] = typer.Option([], "--tasks", help="lmms-eval task names (repeat or comma-separate)."),
    dataset: list[str] = typer.Option([], "--dataset", help="Also evaluate on a vtwcli dataset (bundled name or "
                                      "JSONL), as a local lmms-eval task (offline; repeatable)."),
    metric: str | None = typer.Option(None, "--metric", help="The metric to record (default: the task's only one)."),
    limit: int | None = typer.Option(None, "--limit", help="Evaluate the first N documents of each task."),
    include_path: Path | None = typer.Option(None, "--include-path", help="A folder of local lmms-eval task YAMLs."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="lmms-eval --batch_size."),
    device: str | None = typer.Option(None, "--device", help="lmms-eval --device (e.g. cuda:0, cpu)."),
    strict: bool = typer.Option(True, "--strict/--no-strict", help="Refuse a profile made for another model."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the profile here instead of updating "
                                       "PROFILE in place."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output."),
    work_dir: Path | None = typer.Option(None, "--work-dir", help="Keep lmms-eval's logs and results here "
                                         "(default: a new temporary folder, said on screen)."),
    threads: int | None = typer.Option(None, "--threads", help="torch threads of the lmms-eval runs "
                                          "(OMP_NUM_THREADS). Default: half the CPU cores, at least 1."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Run lmms-eval tasks without and with PROFILE's withdrawal; record the scores in evaluation.benchmarks.

    Needs lmms-eval (pip install 'vtwcli\\[lmms-eval]'). Gate on the result with
    `vtw check PROFILE --max-accuracy-drop POINTS` or `vtw compare BASE NEW --max-accuracy-drop POINTS`.
    """
    options = EvalOptions(model=model, model_args=model_args, tasks=_split(tasks), datasets=_split(dataset),
                          metric=metric, limit=limit, include_path=include_path, batch_size=batch_size, device=device,
                          strict=strict, threads=threads)
    steps = {"full": "lmms-eval without the profile (1/2)", "withdrawn": "lmms-eval with the profile (2/2)"}
    with console.status("lmms-eval") as status:
        outcome = evaluate_profile(profile, options, output=output, force=force, work_dir=work_dir,
                                   progress=lambda step: status.update(steps[step]))
    _render(outcome, as_json)


def _render(outcome, as_json: bool) -> None:
    result, written = outcome.result, outcome.written
    if as_json:
        typer.echo(json.dumps({"profile": str(written), "benchmarks": result.entries,
                               "work_dir": str(outcome.work_dir), "logs": [str(p) for p in result.logs]}, indent=2))
        return
    table = Table(title=f"lmms-eval, K = {result.entries[0]['layer']}, lmms-eval {result.entries[0]['lmms_eval']}")
    for column in ("task", "metric", "samples", "full", "withdrawn", "drop"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for entry in result.entries:
        drop = drop_points(entry["full"], entry["withdrawn"], entry["higher_is_better"])
        table.add_row(escape(entry["task"]), escape(entry["metric"]), str(entry["samples"]), f"{entry['full']:.4g}",
                      f"{entry['withdrawn']:.4g}", f"{drop:.2f}")
    console.print(table)
    console.print(f"wrote evaluation.benchmarks to {escape(str(written))}; lmms-eval logs and results in "
                  f"{escape(str(outcome.work_dir))}", soft_wrap=True)
