"""Latency figures a user can trust (#15): the pairs' statistics, the stopping rule and the noise verdict on
synthetic timing sequences against hand-computed values (no timed tests), the speedup gates and notes of
`vtw compare`, `vtw check` on paired figures, the plain progress lines of a log, threads."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
from profile_fixtures import SHA_DATA, example_profile

from vtwcli.defaults import DEFAULT_MIN_PAIRS, default_threads
from vtwcli.errors import VtwError
from vtwcli.gates import compare_profiles
from vtwcli.gates.check import check_profile_dict
from vtwcli.gates.compare import GateLimits
from vtwcli.measure.latency import (MIN_PAIRS_FOR_CI, LatencyPlan, median_ci, noise_reasons, pair_speedups,
                                    relative_half_width, speedup_interval)
from vtwcli.profile import SpeedupInterval


# ------------------------------------------------------------------------------- the pairs' statistics

def test_median_ci_is_the_binomial_order_statistics():
    """95%: the largest k with P(Bin(n, 1/2) <= k-1) <= 0.025. n = 5: P(B=0) = 1/32 > 0.025, no interval;
    n = 6: P(B=0) = 1/64, k = 1 (min..max); n = 10: P(B<=1) = 11/1024 <= 0.025 < P(B<=2) = 56/1024, k = 2;
    n = 20: P(B<=5) = 21700/2^20 = 0.0207 <= 0.025 < P(B<=6) = 60460/2^20, k = 6."""
    assert median_ci([1, 2, 3, 4, 5]) is None
    assert median_ci([6, 1, 5, 2, 4, 3]) == (1, 6)
    assert median_ci(list(range(10, 0, -1))) == (2, 9)
    assert median_ci(list(range(1, 21))) == (6, 15)
    assert MIN_PAIRS_FOR_CI == DEFAULT_MIN_PAIRS == 6


def test_pair_speedups_cancel_a_slowdown_that_hits_both_runs_of_a_pair():
    """Pairs 4..6 ran while another job took the CPU (both runs 3x slower): every pair still says 2x, while
    the ratio of the variants' medians mixes quiet and busy runs (median of 10,10,10,30,30,30 = 20 over the
    withdrawn median of 5,5,5,15,15,15 = 10 happens to agree here, but with the busy burst on one variant's
    runs only it does not: see the second sequence)."""
    baseline = [10.0, 10.0, 10.0, 30.0, 30.0, 30.0]
    withdrawn = [5.0, 5.0, 5.0, 15.0, 15.0, 15.0]
    ratios = pair_speedups(baseline, withdrawn)
    assert ratios == [2.0] * 6
    median, interval = speedup_interval(ratios)
    assert median == 2.0 and (interval.low, interval.high, interval.p10, interval.p90) == (2.0, 2.0, 2.0, 2.0)
    assert relative_half_width(median, interval) == 0.0
    # hand-computed: ratios 2, 2, 2, 2, 6, 0.4 -> sorted 0.4 2 2 2 2 6, median 2, 95% CI = min..max (n = 6)
    median, interval = speedup_interval(pair_speedups([10, 10, 10, 10, 30, 10], [5, 5, 5, 5, 5, 25]))
    assert median == 2.0 and (interval.low, interval.high) == (0.4, 6.0)
    assert relative_half_width(median, interval) == pytest.approx((6.0 - 0.4) / 2 / 2.0)
    with pytest.raises(ValueError, match="pairs"):
        pair_speedups([1.0, 2.0], [1.0])


def test_speedup_interval_spread_and_width():
    """Ratios 1.0, 1.1, ..., 1.9 (n = 10): median 1.45, CI = 2nd and 9th = 1.1 .. 1.8, p10/p90 by inclusive
    deciles = 1.09 / 1.81; half width (1.8 - 1.1) / 2 / 1.45."""
    ratios = [1.0 + i / 10 for i in range(10)]
    median, interval = speedup_interval(ratios)
    assert median == pytest.approx(1.45)
    assert (interval.low, interval.high) == (pytest.approx(1.1), pytest.approx(1.8))
    assert (interval.p10, interval.p90) == (pytest.approx(1.09), pytest.approx(1.81))
    assert relative_half_width(median, interval) == pytest.approx(0.35 / 1.45)
    assert math.isinf(relative_half_width(1.0, SpeedupInterval(p10=1.0, p90=1.0)))


def test_noise_reasons():
    tight = (1.5, SpeedupInterval(low=1.47, high=1.53, p10=1.45, p90=1.55))    # +-2%
    wide = (1.5, SpeedupInterval(low=1.2, high=1.8, p10=1.1, p90=1.9))         # +-20%
    none = (1.5, SpeedupInterval(p10=1.4, p90=1.6))                            # too few pairs
    assert noise_reasons({"prefill": tight, "end_to_end": tight}, 0.03, 12, flops_ratio=1.6) == []
    reasons = noise_reasons({"prefill": tight, "decode_per_token": wide, "end_to_end": none}, 0.03, 5, 1.6)
    assert reasons == ["decode per token speedup 1.50x: 95% interval 1.20..1.80 (+-20.0%) is wider than the "
                       "target +-3.0%",
                       "end to end speedup: 5 pair(s) are too few for a 95% interval (need 6)"]
    # a prefill speedup whose whole interval lies above 1.15 x the FLOPs ratio is not withdrawal's doing
    assert noise_reasons({"prefill": tight}, 0.03, 12, flops_ratio=1.25) == [
        "prefill speedup 1.50x exceeds the FLOPs ratio 1.25x by more than 15%: more than the saved work explains"]
    assert noise_reasons({"prefill": tight}, 0.03, 12, flops_ratio=1.3) == []  # 1.47 < 1.3 * 1.15 = 1.495


def test_latency_plan_stops_when_tight_or_out_of_time():
    plan = LatencyPlan(min_runs=6, min_time_s=2.0, max_time_s=10.0, ci_target=0.03)
    assert not plan.done(5, 50.0, lambda: True)        # too few pairs, whatever the time
    assert not plan.done(6, 1.0, lambda: True)         # too early
    assert plan.done(6, 2.0, lambda: True)             # both minimums met and tight
    assert not plan.done(40, 9.9, lambda: False)       # not tight, budget left: go on
    assert plan.done(40, 10.0, lambda: False)          # budget spent
    asked = []
    plan.done(3, 0.0, lambda: asked.append(1) or True)
    assert asked == []                                 # the intervals are not even computed before the minimums


@pytest.mark.parametrize("plan, message", [
    (LatencyPlan(min_time_s=5, max_time_s=2), "--max-time 2 is below --min-time 5"),
    (LatencyPlan(ci_target=0), "--ci-target 0: use a fraction between 0 and 1"),
    (LatencyPlan(ci_target=3), "--ci-target 3"),
    (LatencyPlan(min_runs=0), "--min-runs must be >= 1"),
])
def test_latency_plan_check(plan, message):
    with pytest.raises(VtwError, match=message.replace(".", r"\.")):
        plan.check()


# ------------------------------------------------------------------------------ profiles: check, compare

def paired(profile: dict, *, prefill=1.6, low=1.55, high=1.65, noisy=False, threads=2) -> dict:
    """``profile`` with a latency section measured in pairs (speedups consistent with their intervals)."""
    latency = profile["latency"]
    latency["speedup"]["prefill"] = prefill
    latency["threads"] = threads
    latency["speedup_interval"] = {
        key: {"low": value * 0.97, "high": value * 1.03, "p10": value * 0.95, "p90": value * 1.05}
        for key, value in latency["speedup"].items()}
    latency["speedup_interval"]["prefill"] = {"low": low, "high": high, "p10": low - 0.05, "p90": high + 0.05}
    latency["pairs"] = 12
    latency["noise"] = {"noisy": noisy, "reasons": ["prefill too wide"] if noisy else [], "ci_target": 0.03,
                        "max_time_s": 60.0, "seconds": 12.5, "load_start": 3.1, "load_end": 3.4, "cpus": 2}
    return profile


def test_check_reads_paired_speedups_against_their_interval():
    ok = {r.name: r for r in check_profile_dict(paired(example_profile()), "p.yaml")}
    assert ok["latency.speedup.prefill"].passed  # 1.6 is not 40/25 = 1.6 by chance: see the next profile
    # a median per-pair speedup need not equal the ratio of the medians ...
    shifted = {r.name: r for r in check_profile_dict(paired(example_profile(), prefill=1.52, low=1.5, high=1.6),
                                                      "p.yaml")}
    assert shifted["latency.speedup.prefill"].passed
    # ... but must lie within its interval
    broken = {r.name: r for r in check_profile_dict(paired(example_profile(), prefill=1.7, low=1.5, high=1.6),
                                                     "p.yaml")}
    assert not broken["latency.speedup.prefill"].passed
    assert "outside its p10..p90 1.45..1.65" in broken["latency.speedup.prefill"].detail


def _gate(comparison, name):
    return next(g for g in comparison.gates if g.name == name)


def test_compare_speedup_gates():
    base = paired(example_profile(), prefill=1.6, low=1.55, high=1.65)
    new = paired(example_profile(), prefill=1.5, low=1.45, high=1.55)
    result = compare_profiles(base, new, GateLimits(min_speedup=1.4, max_speedup_drop=10))
    # 1.5 >= 1.4; (1.5 - 1.6) / 1.6 = -6.25%, within -10%
    assert _gate(result, "min-speedup (prefill)").passed
    assert _gate(result, "min-speedup (prefill)").detail == "NEW prefill speedup 1.50x >= minimum 1.4x (BASE 1.60x)"
    assert _gate(result, "max-speedup-drop (prefill)").detail == \
        "prefill speedup 1.60x -> 1.50x (-6.25%) within limit -10%"
    result = compare_profiles(base, new, GateLimits(min_speedup=1.55, max_speedup_drop=5))
    assert not result.passed and not _gate(result, "min-speedup (prefill)").passed
    assert _gate(result, "max-speedup-drop (prefill)").detail.endswith("(-6.25%) beyond limit -5%")
    # the same speedup on a runner 10x slower: the absolute gate fails, the speedup gate does not
    slow = copy.deepcopy(base)
    for variant in ("baseline", "withdrawn"):
        for stats in slow["latency"][variant].values():
            stats.update({k: v * 10 for k, v in stats.items() if k != "runs"})
    slow["environment"]["platform"] = "Linux-aarch64"
    result = compare_profiles(base, slow, GateLimits(max_latency_increase=20, max_speedup_drop=1))
    assert _gate(result, "max-speedup-drop (prefill)").passed
    latency_gate = _gate(result, "max-latency-increase (prefill)")
    assert not latency_gate.passed and latency_gate.detail.endswith("(see note: conditions differ)")
    assert any(note.startswith("absolute latency compares the conditions as much as withdrawal: machines differ "
                               "(Linux-x86_64 vs Linux-aarch64)") for note in result.notes)


def test_compare_flags_noisy_figures_and_other_threads():
    base = paired(example_profile())
    new = paired(example_profile(), noisy=True, threads=1)
    result = compare_profiles(base, new, GateLimits(min_speedup=1.0, max_latency_increase=50))
    assert _gate(result, "min-speedup (prefill)").detail.endswith("(NEW's latency is flagged noisy)")
    note = next(n for n in result.notes if n.startswith("absolute latency"))
    assert "NEW's latency is flagged noisy" in note and "threads differ (2 vs 1)" in note
    assert compare_profiles(base, paired(example_profile()), GateLimits()).notes == []


def test_compare_gate_missing_speedup_fails():
    result = compare_profiles(paired(example_profile()), {k: v for k, v in example_profile().items()
                                                          if k not in ("latency", "memory")},
                              GateLimits(min_speedup=1.0))
    gate = _gate(result, "min-speedup (prefill)")
    assert not gate.passed and "latency.speedup.prefill is missing or null in NEW" in gate.detail


def test_compare_notes_other_data_and_versions():
    base, new = example_profile(), example_profile()
    new["data"][0]["sample_ids"] = list(reversed(new["data"][0]["sample_ids"]))[:-1] + ["other"]
    new["environment"]["transformers"] = "5.30.0"
    notes = compare_profiles(base, new).notes
    name = base["data"][0]["name"]
    assert f"the profiles were calibrated on different data: {name}: other samples" in notes[0]
    assert notes[1] == "different software: transformers 5.24.0 vs 5.30.0"
    new["data"][0]["sha256"] = "f" * 64
    assert f"{name}: file content differs (sha256 {SHA_DATA[:12]}... vs ffffffffffff...)" in \
        compare_profiles(base, new).notes[0]
    new["data"][0]["name"] = "elsewhere"
    assert f"datasets {name} vs elsewhere" in compare_profiles(base, new).notes[0]


def test_compare_hides_rows_neither_profile_has():
    bare = {k: v for k, v in example_profile().items() if k not in ("latency", "memory")}
    keys = [row.key for row in compare_profiles(bare, bare).rows]
    assert not any(key.startswith(("latency.", "memory.")) for key in keys)
    assert "flops.withdrawn" in keys
    # present on one side: shown (with a dash on the other)
    keys = [row.key for row in compare_profiles(bare, example_profile()).rows]
    assert "latency.speedup.prefill" in keys


# --------------------------------------------------------------------------------------- logs, threads

def test_plain_progress_lines_on_a_fake_clock():
    from vtwcli.cli._progress import PlainProgress, duration

    now = [100.0]
    lines = []
    progress = PlainProgress("calibrate: KL", 40, write=lines.append, every=5.0, clock=lambda: now[0])
    now[0] = 102.0
    progress.advance(8)                      # 2 s after the start: too soon for a line
    assert lines == []
    now[0] = 106.0
    progress.advance(8, " samples")          # 16 of 40 in 6 s: 24 left at 0.375 s each = 9 s
    assert lines == ["calibrate: KL: 16/40 (40%) samples, 6 s elapsed, ETA 9 s"]
    now[0] = 107.0
    progress.advance(24)                     # the end always gets its line
    assert lines[-1] == "calibrate: KL: 40/40 (100%), 7 s elapsed"
    assert [duration(s) for s in (0.4, 59, 61, 3725)] == ["0 s", "59 s", "1 min 01 s", "1 h 02 min"]
    open_ended = PlainProgress("pairs", None, write=lines.append, every=0.0, clock=lambda: now[0])
    open_ended.advance(1, " (target +-3.0%)")
    assert lines[-1] == "pairs: 1 (target +-3.0%), 0 s elapsed"


def test_default_threads_and_torch_threads(monkeypatch):
    import os

    import torch

    from vtwcli.loading import torch_threads

    for cpus, expected in ((1, 1), (2, 1), (16, 8), (None, 1)):
        monkeypatch.setattr(os, "cpu_count", lambda cpus=cpus: cpus)
        assert default_threads() == expected
    before = torch.get_num_threads()
    with torch_threads(1) as used:
        assert used == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with pytest.raises(VtwError, match="--threads 0: use 1 or more"):
        with torch_threads(0):
            pass


def test_overhead_note_explains_a_slowdown_by_the_fixed_cost():
    """Baseline 16 ms, FLOPs ratio 1.1: the FLOPs predict 16 / 1.1 = 14.545 ms withdrawn; measured 17.2 ms, so
    17.2 - 14.545 = 2.655 ms is fixed cost, more than the 16 - 14.545 = 1.455 ms saved."""
    from vtwcli.measure.latency import overhead_notes

    slower = SpeedupInterval(low=0.90, high=0.96, p10=0.88, p90=0.98)
    (note,) = overhead_notes({"prefill": (0.93, slower)}, 16.0, 17.2, 1.1)
    assert note.startswith("withdrawn prefill is slower (0.93x) although it computes 1.10x fewer FLOPs: it takes "
                           "17.20 ms where the FLOPs predict 14.55 ms, so about 2.65 ms a forward is not compute "
                           "but the hooks' fixed cost (plus noise where the figures are flagged noisy), against "
                           "1.45 ms of compute saved")
    # straddling 1 but wholly below the FLOPs ratio 1.1: 16 / 1.1 = 14.545 predicted, 15.8 measured: 1.255 ms
    # fixed >= half of the 1.455 ms saved
    straddles = SpeedupInterval(low=0.95, high=1.06, p10=0.8, p90=1.2)
    (note,) = overhead_notes({"prefill": (1.01, straddles)}, 16.0, 15.8, 1.1)
    assert note.startswith("prefill speedup 1.01x stays below the FLOPs ratio 1.10x: it takes 15.80 ms where the "
                           "FLOPs predict 14.55 ms, so about 1.25 ms a forward is not compute but the hooks' fixed "
                           "cost (plus noise where the figures are flagged noisy), against 1.45 ms of compute saved")
    # 1.6x for a 1.7x FLOPs ratio: 30 / 1.7 = 17.65 predicted, 18.75 measured: 1.1 ms fixed < half of 12.35 saved
    close = SpeedupInterval(low=1.55, high=1.65, p10=1.5, p90=1.7)
    assert overhead_notes({"prefill": (1.6, close)}, 30.0, 18.75, 1.7) == []
    faster = SpeedupInterval(low=1.4, high=1.8, p10=1.3, p90=1.9)
    assert overhead_notes({"prefill": (1.5, faster)}, 30.0, 20.0, 1.7) == []   # the interval reaches the ratio
    # no interval (fewer than 6 pairs): the pairs' p90 decides; decode / end to end: no FLOPs estimate
    notes = overhead_notes({"prefill": (1.5, faster), "decode_per_token": (0.93, SpeedupInterval(p10=0.9, p90=0.97))},
                           30.0, 20.0, 1.7)
    assert notes == ["withdrawn decode per token is slower (0.93x): on this model the hooks' fixed cost per forward "
                     "exceeds the compute withdrawal saves; on a model whose forwards take longer the saving "
                     "dominates"]


def test_bundled_dataset_paths_are_recorded_relative_to_the_package(tmp_path):
    from vtwcli.calibrating import recorded_path
    from vtwcli.datasets import load_dataset

    bundled = load_dataset("synthetic_color")
    assert recorded_path(bundled.path) == "vtwcli/data/datasets/synthetic_color/data.jsonl"
    own = tmp_path / "mine.jsonl"
    assert recorded_path(own) == str(own)


def _ci_log(*args: str) -> str:
    """`vtw ARGS | cat` with COLUMNS=80: stdout is no terminal."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    done = subprocess.run([sys.executable, "-c", "from vtwcli.cli import main; main()", *args], capture_output=True,
                          text=True, env=env, check=False, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode in (0, 1), done.stderr
    return done.stdout


def test_tables_in_an_80_column_log_cut_nothing():
    """`vtw models` and `vtw check` in a CI log: no cell cut with an ellipsis, no file name split, every
    family and every notes text whole; a table that fits stays a table."""
    from vtwcli.adapters import ADAPTERS

    models = _ci_log("models")
    assert "…" not in models
    for adapter in ADAPTERS:
        assert f"- {adapter.family}" in models and f"notes: {adapter.notes}" in models
    check = _ci_log("check", "profiles/bundled.yaml", "profiles/llava-1.5-7b-flops.yaml")
    assert "…" not in check
    assert "profiles/bundled.yaml:" in check.splitlines() and "profiles/llava-1.5-7b-flops.yaml:" in check.splitlines()
    assert "  flops.reduction  pass  " in check
    flops = _ci_log("profile", "--model", "profiles/configs/llava-1.5-7b", "--flops-only", "--layer", "16")
    table = [line for line in flops.splitlines() if line.startswith(("┃", "│", "┏", "└"))]
    assert table and all(len(line) <= 80 for line in table)
    assert any("decode / token (GFLOPs)" in line and "13.551" in line for line in table)
    assert "576 vision tokens (1 image)" in flops


def test_print_table_falls_back_to_plain_lines():
    import io

    from rich.console import Console
    from rich.table import Table

    from vtwcli.cli._tables import print_table

    def render(table, **kw):
        out = io.StringIO()
        print_table(table, console=Console(file=out, width=40), **kw)
        return out.getvalue()

    narrow = Table(title="t")
    narrow.add_column("a")
    narrow.add_column("b")
    narrow.add_row("x", "[green]y[/]")
    assert "┃ a" in render(narrow)
    wide = Table(title="wide")
    for column in ("name", "text", "more"):
        wide.add_column(column)
    wide.add_row("first", "a long cell " * 4, "")
    wide.add_row("first", "[bold]second[/] row", "z")
    assert render(wide) == ("wide\n- first\n    text: " + "a long cell " * 4 + "\n- first\n    text: second row\n"
                            "    more: z\n")
    assert render(wide, layout="lines") == "wide\nfirst:\n  " + "a long cell " * 4 + "\n  second row  z\n"


def test_eval_threads_reach_lmms_eval_through_omp_num_threads(tmp_path, monkeypatch):
    """`vtw eval --threads N` runs lmms-eval with OMP_NUM_THREADS=N (torch's thread count there); None: the default."""
    import json
    import os
    import sys

    from vtwcli.benchmarks import _run, threads_or_default

    writer = ("import json, os, pathlib; pathlib.Path(r'%s', 'x_results.json').write_text("
              "json.dumps(os.environ.get('OMP_NUM_THREADS')))" % tmp_path)
    written = _run([sys.executable, "-c", writer], tmp_path, tmp_path / "log", "without the profile", threads=3)
    assert json.loads(written.read_text()) == "3"
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert threads_or_default(None) == 4 and threads_or_default(2) == 2
    with pytest.raises(VtwError, match="--threads 0: use 1 or more"):
        threads_or_default(0)
