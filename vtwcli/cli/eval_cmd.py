"""`vtw eval`: an lmms-eval task with and without the profile, recorded in evaluation.benchmarks (vtwcli.benchmarks)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vtwcli.benchmarks import EvalOptions, drop_points, record_benchmarks, run_benchmarks
from vtwcli.cli import app
from vtwcli.cli._render import check_output_path
from vtwcli.cli._state import console
from vtwcli.errors import VtwError


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
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Run lmms-eval tasks without and with PROFILE's withdrawal; record the scores in evaluation.benchmarks.

    Needs lmms-eval (pip install 'vtwcli\\[lmms-eval]'). Gate on the result with
    `vtw check PROFILE --max-accuracy-drop POINTS` or `vtw compare BASE NEW --max-accuracy-drop POINTS`.
    """
    from vtwcli.lmms_eval_plugin.local_task import task_name_for, write_task

    if output is not None:
        check_output_path(output, "profile.yaml")
    datasets = _split(dataset)
    if datasets and include_path is not None:
        raise VtwError("--dataset and --include-path cannot be combined; put your task YAMLs beside the written "
                       "ones or run vtw eval twice")
    options = EvalOptions(model=model, model_args=model_args, tasks=_split(tasks) + tuple(map(task_name_for, datasets)),
                          metric=metric, limit=limit, include_path=include_path, batch_size=batch_size, device=device,
                          strict=strict)
    work = work_dir if work_dir is not None else Path(tempfile.mkdtemp(prefix="vtw-eval-"))
    if datasets:  # local tasks over vtwcli datasets, written where lmms-eval's --include_path finds them
        for name in datasets:
            write_task(work / "tasks", name)
        options = replace(options, include_path=work / "tasks")
    if not as_json:
        console.print(f"lmms-eval logs and results: {escape(str(work))}", soft_wrap=True)
    steps = {"full": "lmms-eval without the profile (1/2)", "withdrawn": "lmms-eval with the profile (2/2)"}
    with console.status("lmms-eval") as status:
        result = run_benchmarks(profile, options, work_dir=work, progress=lambda step: status.update(steps[step]))
    written = record_benchmarks(profile, result.entries, output, force=force)
    if as_json:
        typer.echo(json.dumps({"profile": str(written), "benchmarks": result.entries,
                               "logs": [str(p) for p in result.logs]}, indent=2))
        return
    table = Table(title=f"lmms-eval, K = {result.entries[0]['layer']}, lmms-eval {result.entries[0]['lmms_eval']}")
    for column in ("task", "metric", "samples", "full", "withdrawn", "drop"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for entry in result.entries:
        drop = drop_points(entry["full"], entry["withdrawn"], entry["higher_is_better"])
        table.add_row(escape(entry["task"]), escape(entry["metric"]), str(entry["samples"]), f"{entry['full']:.4g}",
                      f"{entry['withdrawn']:.4g}", f"{drop:.2f}")
    console.print(table)
    console.print(f"wrote evaluation.benchmarks to {escape(str(written))}", soft_wrap=True)
