"""Accuracy on real benchmarks: lmms-eval runs with and without a profile, kept in ``evaluation.benchmarks``.

`vtw eval` (:func:`run_benchmarks`) runs the same lmms-eval task twice in a subprocess — the base lmms-eval
model, then the ``vtw`` plugin model (vtwcli/lmms_eval_plugin) wrapping it with the profile applied — reads
both results files and records one entry per (task, metric) in the profile. `vtw check --max-accuracy-drop`
and `vtw compare --max-accuracy-drop` gate on those entries (:func:`benchmark_checks`,
:func:`benchmark_gates`). Nothing here imports torch or lmms-eval.

A benchmark drop is in percentage points when lmms-eval reports the metric as a fraction (both values in
[0, 1], e.g. accuracy 0.853), and in the metric's own units otherwise (e.g. MME's perception score out of
2000); for a metric where lower is better the drop is the increase.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vtwcli.errors import VtwError
from vtwcli.lmms_eval_plugin import MODEL_NAME

__all__ = ["PLUGIN_MODEL", "EvalOptions", "BenchmarkResult", "parse_model_args", "lmms_eval_command",
           "read_results", "metric_key", "benchmark_entry", "merge_benchmarks", "drop_points",
           "benchmark_checks", "benchmark_gates", "benchmark_rows", "run_benchmarks", "record_benchmarks"]

PLUGIN_MODEL = MODEL_NAME  # the lmms-eval model name the entry point registers
_EPS = 1e-9


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
    python: str = field(default_factory=lambda: sys.executable)

    def __post_init__(self):
        if not self.model or self.model == PLUGIN_MODEL:
            raise VtwError(f"--model {self.model!r}: give the base lmms-eval model (e.g. llava_hf); vtw eval wraps "
                           f"it in the {PLUGIN_MODEL!r} plugin model itself")
        if not self.tasks:
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


def _is_fraction(*values: float) -> bool:
    return all(0.0 <= v <= 1.0 for v in values)


def drop_points(before: float, after: float, higher_is_better: bool = True) -> float:
    """How much worse ``after`` is than ``before``: percentage points for fractions, else the metric's units."""
    drop = (before - after) if higher_is_better else (after - before)
    return drop * 100 if _is_fraction(before, after) else drop


def _value_text(value: float, *others: float) -> str:
    return f"{value * 100:.2f}%" if _is_fraction(value, *others) else f"{value:.4g}"


def _name(entry: dict) -> str:
    return f"benchmark {entry['task']} {entry['metric']}"


def benchmark_checks(data: dict, src: str, max_accuracy_drop: float | None) -> list:
    """`vtw check` rows for ``evaluation.benchmarks``: each entry's layer is the profile's K, and (with a
    limit) the withdrawn score is at most ``max_accuracy_drop`` below the full one."""
    from vtwcli.gates import CheckResult
    from vtwcli.profile import profile_from_dict

    results = []
    benchmarks = (data.get("evaluation") or {}).get("benchmarks") or []
    layer = profile_from_dict(data, src).layer if benchmarks else None
    for entry in benchmarks:
        name = _name(entry)
        if entry["layer"] == layer:
            results.append(CheckResult(f"{name}.layer", True, f"= the profile's layer ({layer})", src))
        else:
            results.append(CheckResult(f"{name}.layer", False, f"was measured at layer {entry['layer']} but the "
                                       f"profile's layer is {layer}; rerun vtw eval", src))
        if max_accuracy_drop is not None:
            drop = drop_points(entry["full"], entry["withdrawn"], entry.get("higher_is_better", True))
            ok = drop <= max_accuracy_drop + _EPS
            detail = (f"{_value_text(entry['full'], entry['withdrawn'])} full -> "
                      f"{_value_text(entry['withdrawn'], entry['full'])} withdrawn on {entry['samples']} samples: "
                      f"drop {drop:.2f} {'<=' if ok else '>'} limit {max_accuracy_drop:g}")
            results.append(CheckResult(f"max-accuracy-drop ({entry['task']} {entry['metric']})", ok, detail, src))
    return results


def _benchmarks(data: dict) -> dict[tuple[str, str], dict]:
    return {(e["task"], e["metric"]): e for e in (data.get("evaluation") or {}).get("benchmarks") or []}


def benchmark_gates(base: dict, new: dict, limit: float, sources: tuple[str, str]) -> list:
    """`vtw compare --max-accuracy-drop` on benchmarks: NEW's withdrawn score vs BASE's, per (task, metric).

    A benchmark in one profile only fails (a pipeline that stops measuring it never passes); none in either
    gives no rows (the dataset accuracy gate reports n/a then).
    """
    from vtwcli.gates import CheckResult

    b_all, n_all = _benchmarks(base), _benchmarks(new)
    gates = []
    for key in list(dict.fromkeys([*b_all, *n_all])):
        name = f"max-accuracy-drop ({key[0]} {key[1]})"
        b, n = b_all.get(key), n_all.get(key)
        if b is None or n is None:
            side, src = ("BASE", sources[0]) if b is None else ("NEW", sources[1])
            gates.append(CheckResult(name, False, f"benchmark {key[0]} {key[1]} is missing in {side} ({src}); run "
                                     "vtw eval on it or drop it from the other profile"))
            continue
        drop = drop_points(b["withdrawn"], n["withdrawn"], n.get("higher_is_better", True))
        ok = drop <= limit + _EPS
        detail = (f"withdrawn {_value_text(b['withdrawn'], n['withdrawn'])} -> "
                  f"{_value_text(n['withdrawn'], b['withdrawn'])}: drop {drop:.2f} {'<=' if ok else '>'} limit "
                  f"{limit:g}")
        gates.append(CheckResult(name, ok, detail))
    return gates


def benchmark_rows(base: dict, new: dict) -> list:
    """`vtw compare` table rows: each benchmark's full and withdrawn score in BASE and NEW."""
    from vtwcli.gates import MetricRow

    b_all, n_all = _benchmarks(base), _benchmarks(new)
    rows = []
    for task, metric in list(dict.fromkeys([*b_all, *n_all])):
        b, n = b_all.get((task, metric)) or {}, n_all.get((task, metric)) or {}
        values = [v for e in (b, n) for v in (e.get("full"), e.get("withdrawn")) if v is not None]
        unit = "fraction" if _is_fraction(*values) else "score"
        for which in ("full", "withdrawn"):
            rows.append(MetricRow(f"{task} {metric}, {which}", f"benchmark.{task}.{metric}.{which}", unit,
                                  b.get(which), n.get(which)))
    return rows


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


def _run(command: list[str], output_dir: Path, log: Path, what: str) -> Path:
    """Run one lmms-eval command, its output into ``log``; return the results file it wrote.

    lmms-eval 0.7 exits 0 even when the evaluation failed (it logs the error), so a run without a new
    results file failed too.
    """
    before = set(Path(output_dir).rglob("*_results.json"))
    with open(log, "w", encoding="utf-8") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ), check=False)
    written = sorted(set(Path(output_dir).rglob("*_results.json")) - before, key=lambda p: p.stat().st_mtime)
    if done.returncode != 0 or not written:
        status = f"exit {done.returncode}" if done.returncode != 0 else "no results written"
        raise VtwError(f"lmms-eval {what} failed ({status}): {_why(log)[:400]}; full log: {log}")
    return written[-1]


def run_benchmarks(profile_path: Path | str, options: EvalOptions, *, work_dir: Path | None = None,
                   progress=None) -> BenchmarkResult:
    """Run ``options.tasks`` without and with the profile; return the ``evaluation.benchmarks`` entries.

    ``progress(step: str)`` is called before each run. The profile is read (and validated) first, so a bad
    profile fails before minutes of evaluation.
    """
    from vtwcli.profile import load_profile

    profile = load_profile(profile_path)
    layer = profile.layer
    if layer is None:
        raise VtwError(f"{profile_path}: no withdrawal layer to evaluate (calibration.layer is null and there is no "
                       "withdrawal.layer); re-calibrate with a higher --threshold")
    version = lmms_eval_version()
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="vtw-eval-"))
    runs = {}
    for label, with_profile in (("full", None), ("withdrawn", Path(profile_path))):
        out = work / label
        out.mkdir(parents=True, exist_ok=True)
        command = lmms_eval_command(options, out, with_profile)
        if progress is not None:
            progress(label)
        what = "without the profile" if with_profile is None else f"with the profile (K = {layer})"
        runs[label] = (_run(command, out, work / f"{label}.log", what), command)
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
