"""Accuracy on real benchmarks: lmms-eval runs with and without a profile, kept in ``evaluation.benchmarks``.

`vtw eval` (:func:`run_benchmarks`) runs the same lmms-eval task twice in a subprocess — the base lmms-eval
model, then the ``vtw`` plugin model (vtwcli/lmms_eval_plugin) wrapping it with the profile applied — reads
both results files and records one entry per (task, metric) in the profile. `vtw check --max-accuracy-drop`
and `vtw compare --max-accuracy-drop` gate on those entries (:mod:`vtwcli.gates.benchmarks`). Nothing here
imports torch or lmms-eval.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from vtwcli.errors import VtwError
from vtwcli.lmms_eval_plugin import MODEL_NAME

__all__ = ["PLUGIN_MODEL", "EvalOptions", "BenchmarkResult", "parse_model_args", "lmms_eval_command",
           "read_results", "metric_key", "benchmark_entry", "merge_benchmarks", "run_benchmarks", "record_benchmarks",
           "EvalOutcome", "evaluate_profile"]

PLUGIN_MODEL = MODEL_NAME  # the lmms-eval model name the entry point registers


# ------------------------------------------------------------------------------------------ arguments

def parse_model_args(text: str, option: str = "--model-args") -> dict[str, str]:
    """``key=value,key=value`` (lmms-eval's model_args syntax) as an ordered dict; one-line error if malformed."""
    args: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise VtwError(f"{option} {text!r}: {part!r} is not key=value; write e.g. "
                           "pretrained=llava-hf/llava-1.5-7b-hf,dtype=bfloat16")
        if key in args:
            raise VtwError(f"{option} {text!r}: {key} is given twice; give each key once")
        args[key] = value.strip()
    return args


def _join_args(args: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in args.items())


@dataclass(frozen=True)
class EvalOptions:
    """What `vtw eval` runs: lmms-eval ``model`` with ``model_args`` on ``tasks``, with and without the profile."""

    model: str                                   # the base lmms-eval model name, e.g. llava_hf
    tasks: tuple[str, ...]
    model_args: str = ""                         # the base model's args, e.g. pretrained=...,dtype=bfloat16
    metric: str | None = None                    # "accuracy" or "accuracy,none"; None: the task's only metric
    limit: int | None = None                     # first N documents of each task
    include_path: Path | None = None             # a folder of local task YAMLs
    batch_size: int | None = None
    device: str | None = None
    strict: bool = True                          # refuse a profile made for another model
    datasets: tuple[str, ...] = ()               # vtwcli datasets, evaluated as local tasks (local_task.write_task)
    threads: int | None = None                   # torch threads of lmms-eval (OMP_NUM_THREADS); None: default_threads()
    python: str = field(default_factory=lambda: sys.executable)

    def __post_init__(self):
        if not self.model or self.model == PLUGIN_MODEL:
            raise VtwError(f"--model {self.model!r}: give the base lmms-eval model (e.g. llava_hf); vtw eval wraps "
                           f"it in the {PLUGIN_MODEL!r} plugin model itself")
        if self.datasets and self.include_path is not None:
            raise VtwError("--dataset and --include-path cannot be combined; put your task YAMLs beside the written "
                           "ones or run vtw eval twice")
        if not self.tasks and not self.datasets:
            raise VtwError("no --tasks given; pass at least one lmms-eval task (e.g. --tasks mme) or a vtwcli "
                           "--dataset")
        if self.limit is not None and self.limit < 1:
            raise VtwError(f"--limit must be >= 1, got {self.limit}")
        if self.include_path is not None and not Path(self.include_path).is_dir():
            raise VtwError(f"--include-path {self.include_path}: no such directory; pass the folder holding the "
                           "task YAML files")
        reserved = {"base", "profile", "strict"} & set(parse_model_args(self.model_args))
        if reserved:
            raise VtwError(f"--model-args: {', '.join(sorted(reserved))} is reserved for the vtw plugin; give the "
                           "profile as vtw eval's PROFILE argument")


def lmms_eval_command(options: EvalOptions, output_dir: Path, profile: Path | None) -> list[str]:
    """The lmms-eval command line of one run: the base model, or (``profile`` given) the vtw plugin around it."""
    if profile is None:
        model, model_args = options.model, options.model_args
    else:
        wrapped = {"base": options.model, "profile": str(Path(profile).resolve())}
        if not options.strict:
            wrapped["strict"] = "False"
        model, model_args = PLUGIN_MODEL, _join_args({**wrapped, **parse_model_args(options.model_args)})
    # --log_samples: each document's answer lands beside the results, to look at when the scores differ.
    command = [options.python, "-m", "lmms_eval", "--model", model, "--tasks", ",".join(options.tasks),
               "--output_path", str(output_dir), "--log_samples"]
    if model_args:
        command += ["--model_args", model_args]
    for flag, value in (("--limit", options.limit), ("--include_path", options.include_path),
                        ("--batch_size", options.batch_size), ("--device", options.device)):
        if value is not None:
            command += [flag, str(value)]
    return command


# -------------------------------------------------------------------------------------- results files

def metric_key(results: dict, task: str, metric: str | None, where: str) -> str:
    """The lmms-eval result key (``name,filter``) of ``metric`` for ``task``; the only metric when None."""
    values = results.get("results", {}).get(task)
    if not isinstance(values, dict):
        known = ", ".join(sorted(results.get("results", {}))) or "none"
        raise VtwError(f"{where}: no results for task {task!r} (results for: {known}); check the task name")
    keys = [key for key, value in values.items() if "," in key and "_stderr" not in key.split(",")[0]
            and isinstance(value, (int, float)) and not isinstance(value, bool)]
    if metric is not None:
        match = [key for key in keys if key == metric or key.split(",")[0] == metric]
        if len(match) == 1:
            return match[0]
        raise VtwError(f"{where}: task {task} has {'several' if match else 'no'} metric {metric!r} (it reports: "
                       f"{', '.join(keys) or 'none'}); pass --metric with one of them")
    if len(keys) == 1:
        return keys[0]
    raise VtwError(f"{where}: task {task} reports {len(keys)} metrics ({', '.join(keys) or 'none'}); choose one "
                   "with --metric")


def _samples(results: dict, task: str) -> int:
    counts = results.get("n-samples", {}).get(task, {})
    return int(counts.get("effective", counts.get("original", 0)))


def read_results(path: Path | str, task: str, metric: str | None) -> tuple[str, float, int, bool]:
    """(metric key, value, samples, higher_is_better) of ``task`` in an lmms-eval results JSON."""
    where = str(path)
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise VtwError(f"{where}: cannot read the lmms-eval results ({error}); rerun lmms-eval") from None
    key = metric_key(results, task, metric, where)
    higher = results.get("higher_is_better", {}).get(task, {}).get(key.split(",")[0], True)
    return key, float(results["results"][task][key]), _samples(results, task), bool(higher)


# --------------------------------------------------------------------------------------- the section

def benchmark_entry(task: str, metric: str, full: float, withdrawn: float, samples: int, layer: int, *,
                    model: str, lmms_eval: str, higher_is_better: bool = True) -> dict:
    """One ``evaluation.benchmarks`` item (docs/profile-schema.md)."""
    return {"task": task, "metric": metric, "full": float(full), "withdrawn": float(withdrawn),
            "samples": int(samples), "layer": int(layer), "higher_is_better": bool(higher_is_better),
            "model": model, "lmms_eval": lmms_eval}


def merge_benchmarks(data: dict, entries: list[dict]) -> dict:
    """A copy of profile ``data`` with ``entries`` in ``evaluation.benchmarks``, replacing the same (task, metric)."""
    out = dict(data)
    evaluation = dict(out.get("evaluation") or {})
    new_keys = {(e["task"], e["metric"]) for e in entries}
    kept = [e for e in evaluation.get("benchmarks") or [] if (e["task"], e["metric"]) not in new_keys]
    evaluation["benchmarks"] = kept + list(entries)
    out["evaluation"] = evaluation
    return out


# ------------------------------------------------------------------------------------------ running

@dataclass(frozen=True)
class BenchmarkResult:
    entries: list[dict]
    logs: tuple[Path, Path]          # the lmms-eval output of the run without and with the profile
    commands: tuple[list[str], list[str]]


def lmms_eval_version() -> str:
    try:
        return importlib.metadata.version("lmms_eval")
    except importlib.metadata.PackageNotFoundError:
        raise VtwError("lmms-eval is not installed in this environment; pip install 'vtwcli[lmms-eval]'") from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _why(log: Path) -> str:
    """The reason a run failed, from its log: the plugin's VtwError, else lmms-eval's error line, else the last line."""
    lines = [_ANSI.sub("", line).strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    for marker in ("VtwError:", "Error during evaluation:"):
        found = next((line for line in reversed(lines) if marker in line), None)
        if found is not None:
            return found.split(marker, 1)[1].strip().removesuffix(
                ". Please set `--verbosity=DEBUG` to get more information.")
    return lines[-1] if lines else "no output"


def _run(command: list[str], output_dir: Path, log: Path, what: str, threads: int | None = None) -> Path:
    """Run one lmms-eval command, its output into ``log``; return the results file it wrote.

    lmms-eval 0.7 exits 0 even when the evaluation failed (it logs the error), so a run without a new
    results file failed too.
    """
    before = set(Path(output_dir).rglob("*_results.json"))
    with open(log, "w", encoding="utf-8") as handle:
        env = dict(os.environ) if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}  # torch reads it
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False)
    written = sorted(set(Path(output_dir).rglob("*_results.json")) - before, key=lambda p: p.stat().st_mtime)
    if done.returncode != 0 or not written:
        status = f"exit {done.returncode}" if done.returncode != 0 else "no results written"
        raise VtwError(f"lmms-eval {what} failed ({status}): {_why(log)[:400]}; full log: {log}")
    return written[-1]


def _layer_to_evaluate(profile_path: Path | str) -> int:
    from vtwcli.profile import load_profile

    layer = load_profile(profile_path).layer
    if layer is None:
        raise VtwError(f"{profile_path}: no withdrawal layer to evaluate (calibration.layer is null and there is no "
                       "withdrawal.layer); re-calibrate with a higher --threshold")
    return layer


def threads_or_default(threads: int | None) -> int:
    """``threads`` (>= 1), or :func:`vtwcli.defaults.default_threads` for None."""
    from vtwcli.defaults import check_threads, default_threads

    check_threads(threads)
    return default_threads() if threads is None else threads


def run_benchmarks(profile_path: Path | str, options: EvalOptions, work: Path, *, progress=None) -> BenchmarkResult:
    """Run ``options.tasks`` without and with the profile (logs and results under ``work``); return the
    ``evaluation.benchmarks`` entries. ``progress(step: str)`` is called before each run."""
    layer = _layer_to_evaluate(profile_path)
    version = lmms_eval_version()
    runs = {}
    for label, with_profile in (("full", None), ("withdrawn", Path(profile_path))):
        out = work / label
        out.mkdir(parents=True, exist_ok=True)
        command = lmms_eval_command(options, out, with_profile)
        if progress is not None:
            progress(label)
        what = "without the profile" if with_profile is None else f"with the profile (K = {layer})"
        runs[label] = (_run(command, out, work / f"{label}.log", what, threads_or_default(options.threads)), command)
    entries = []
    for task in options.tasks:
        key, full, samples, higher = read_results(runs["full"][0], task, options.metric)
        _, withdrawn, _, _ = read_results(runs["withdrawn"][0], task, key)  # same arguments: same documents
        entries.append(benchmark_entry(task, key, full, withdrawn, samples, layer, model=options.model,
                                       lmms_eval=version, higher_is_better=higher))
    return BenchmarkResult(entries, (work / "full.log", work / "withdrawn.log"),
                           (runs["full"][1], runs["withdrawn"][1]))


def record_benchmarks(profile_path: Path | str, entries: list[dict], output: Path | str | None = None, *,
                      force: bool = False) -> Path:
    """Write the profile with ``entries`` merged into ``evaluation.benchmarks`` (atomically): back to the profile
    itself when ``output`` is None, else to ``output`` (refused if it exists, unless ``force``)."""
    from vtwcli.profile import read_profile_dict, write_profile

    data = merge_benchmarks(read_profile_dict(profile_path), entries)
    if output is None:
        return write_profile(data, profile_path, force=True)
    return write_profile(data, output, force=force)


@dataclass(frozen=True)
class EvalOutcome:
    result: BenchmarkResult
    written: Path                    # the profile written (PROFILE itself, or --output)
    work_dir: Path


def evaluate_profile(profile_path: Path | str, options: EvalOptions, *, output: Path | None = None,
                     force: bool = False, work_dir: Path | None = None, progress=None) -> EvalOutcome:
    """`vtw eval` as one call: check the output, the profile and lmms-eval first (before minutes of evaluation),
    write the local tasks of ``options.datasets``, run lmms-eval without and with the profile, and record the
    entries in ``evaluation.benchmarks`` (:func:`record_benchmarks`)."""
    from vtwcli.lmms_eval_plugin.local_task import write_task
    from vtwcli.profile import check_output_path

    if output is not None:
        check_output_path(Path(output), "profile.yaml")
    _layer_to_evaluate(profile_path)
    lmms_eval_version()
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="vtw-eval-"))
    if options.datasets:  # local tasks, written where lmms-eval's --include_path finds them
        tasks = tuple(write_task(work / "tasks", name) for name in options.datasets)
        options = replace(options, tasks=options.tasks + tasks, datasets=(), include_path=work / "tasks")
    result = run_benchmarks(profile_path, options, work, progress=progress)
    return EvalOutcome(result, record_benchmarks(profile_path, result.entries, output, force=force), work)
