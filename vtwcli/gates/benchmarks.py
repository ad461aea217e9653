"""Checks, gates and comparison rows on ``evaluation.benchmarks`` (lmms-eval runs recorded by `vtw eval`).

A benchmark drop is in percentage points when lmms-eval reports the metric as a fraction (both values in
[0, 1], e.g. accuracy 0.853), and in the metric's own units otherwise (e.g. MME's perception score out of
2000); for a metric where lower is better the drop is the increase.
"""

from __future__ import annotations

from vtwcli.gates.metrics import MetricRow
from vtwcli.gates.results import EPS, CheckResult, failed, passed
from vtwcli.profile import Benchmark, Profile, choice_of

__all__ = ["drop_points", "benchmark_checks", "benchmark_gates", "benchmark_rows"]


def _is_fraction(*values: float) -> bool:
    return all(0.0 <= v <= 1.0 for v in values)


def drop_points(before: float, after: float, higher_is_better: bool = True) -> float:
    """How much worse ``after`` is than ``before``: percentage points for fractions, else the metric's units."""
    drop = (before - after) if higher_is_better else (after - before)
    return drop * 100 if _is_fraction(before, after) else drop


def _value_text(value: float, *others: float) -> str:
    return f"{value * 100:.2f}%" if _is_fraction(value, *others) else f"{value:.4g}"


def _benchmarks(profile: Profile) -> dict[tuple[str, str], Benchmark]:
    entries = profile.evaluation.benchmarks if profile.evaluation is not None else None
    return {(entry.task, entry.metric): entry for entry in entries or ()}


def benchmark_checks(profile: Profile, src: str, max_accuracy_drop: float | None) -> list[CheckResult]:
    """`vtw check` rows: each entry was measured at the profile's K, and (with a limit) its withdrawn score is at
    most ``max_accuracy_drop`` below the full one."""
    results = []
    layer = choice_of(profile).layer
    for (task, metric), entry in _benchmarks(profile).items():
        name = f"benchmark {task} {metric}.layer"
        results.append(passed(name, f"= the profile's layer ({layer})", src) if entry.layer == layer else
                       failed(name, f"was measured at layer {entry.layer} but the profile's layer is {layer}; "
                              "rerun vtw eval", src))
        if max_accuracy_drop is not None:
            drop = drop_points(entry.full, entry.withdrawn, entry.higher_is_better)
            ok = drop <= max_accuracy_drop + EPS
            detail = (f"{_value_text(entry.full, entry.withdrawn)} full -> "
                      f"{_value_text(entry.withdrawn, entry.full)} withdrawn on {entry.samples} samples: "
                      f"drop {drop:.2f} {'<=' if ok else '>'} limit {max_accuracy_drop:g}")
            results.append((passed if ok else failed)(f"max-accuracy-drop ({task} {metric})", detail, src))
    return results


def benchmark_gates(base: Profile, new: Profile, limit: float, sources: tuple[str, str]) -> list[CheckResult]:
    """`vtw compare --max-accuracy-drop` on benchmarks: NEW's withdrawn score vs BASE's, per (task, metric).

    A benchmark in one profile only fails (a pipeline that stops measuring it never passes); none in either
    gives no rows.
    """
    b_all, n_all = _benchmarks(base), _benchmarks(new)
    gates = []
    for key in dict.fromkeys([*b_all, *n_all]):
        name = f"max-accuracy-drop ({key[0]} {key[1]})"
        b, n = b_all.get(key), n_all.get(key)
        if b is None or n is None:
            side, src = ("BASE", sources[0]) if b is None else ("NEW", sources[1])
            gates.append(failed(name, f"benchmark {key[0]} {key[1]} is missing in {side} ({src}); run vtw eval on "
                                "it or drop it from the other profile"))
            continue
        drop = drop_points(b.withdrawn, n.withdrawn, n.higher_is_better)
        ok = drop <= limit + EPS
        detail = (f"withdrawn {_value_text(b.withdrawn, n.withdrawn)} -> {_value_text(n.withdrawn, b.withdrawn)}: "
                  f"drop {drop:.2f} {'<=' if ok else '>'} limit {limit:g}")
        gates.append((passed if ok else failed)(name, detail))
    return gates


def benchmark_rows(base: Profile, new: Profile) -> list[MetricRow]:
    """`vtw compare` table rows: each benchmark's full and withdrawn score in BASE and NEW."""
    b_all, n_all = _benchmarks(base), _benchmarks(new)
    rows = []
    for task, metric in dict.fromkeys([*b_all, *n_all]):
        b, n = b_all.get((task, metric)), n_all.get((task, metric))
        values = [getattr(e, which) for e in (b, n) if e is not None for which in ("full", "withdrawn")]
        unit = "fraction" if _is_fraction(*values) else "score"
        for which in ("full", "withdrawn"):
            rows.append(MetricRow(f"{task} {metric}, {which}", f"benchmark.{task}.{metric}.{which}", unit,
                                  getattr(b, which, None), getattr(n, which, None)))
    return rows
