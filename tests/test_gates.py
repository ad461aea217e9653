"""`vtw check` (internal consistency) and `vtw compare` (CI gates): results, exit codes, output shapes."""

from __future__ import annotations

import json

import pytest
from profile_fixtures import example_profile
from typer.testing import CliRunner

from vtwcli import gates as G
from vtwcli.cli import app, main
from vtwcli.errors import CheckFailed, VtwError
from vtwcli.profile import write_profile

runner = CliRunner()


def save(tmp_path, data, name="p.yaml"):
    return str(write_profile(data, tmp_path / name, force=True))


def invoke(*args):
    """CliRunner on the typer app: VtwError surfaces as result.exception (main() turns it into exit codes)."""
    return runner.invoke(app, [str(a) for a in args])


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def failed_names(results):
    return {r.name for r in results if not r.passed}


# ------------------------------------------------------------------------------------------ check

def test_valid_profile_passes_check(tmp_path):
    path = save(tmp_path, example_profile())
    results = G.check_profile(path)
    assert failed_names(results) == set()
    names = {r.name for r in results}
    assert {"calibration.layer", "flops.reduction", "latency.speedup.end_to_end", "memory.kv_cache_reduction",
            "data[0].sha256", "data[0].samples", "withdrawal.layer", "evaluation.withdrawn.layer"} <= names
    result = invoke("check", path)
    assert result.exit_code == 0, result.output
    assert "all checks passed" in result.output


@pytest.mark.parametrize("data", [
    example_profile(layer=None),
    {k: example_profile()[k] for k in ("schema_version", "created_at", "model", "environment")},
], ids=["no-layer-met-threshold", "header-only"])
def test_other_valid_profiles_pass(tmp_path, data):
    assert failed_names(G.check_profile(save(tmp_path, data))) == set()


def _set(*path_and_value):
    *path, value = path_and_value

    def mutate(d):
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value
    return mutate


def _swap_layers(d):
    rows = d["calibration"]["per_layer"]
    rows[0], rows[1] = rows[1], rows[0]


INCONSISTENCIES = [
    ("layer-not-first", _set("calibration", "layer", 7),
     {"calibration.layer", "evaluation.withdrawn.layer", "withdrawal.layer"}),
    ("layer-null-but-met", lambda d: (d["calibration"].update(layer=None), d["evaluation"]["withdrawn"].update(
        layer=None, accuracy=None), d.pop("withdrawal")), {"calibration.layer"}),
    ("layer-gap", lambda d: d["calibration"]["per_layer"].pop(2),
     {"calibration.per_layer.layers", "calibration.per_sample"}),
    ("layer-short", lambda d: d["calibration"]["per_layer"].pop(),
     {"calibration.per_layer.layers", "calibration.per_sample"}),
    ("layers-not-ascending", _swap_layers, {"calibration.per_layer.layers"}),
    ("ci-low-above-mean", _set("calibration", "per_layer", 2, "kl_ci_low", 0.06), {"calibration.per_layer.ci"}),
    ("ci-high-below-mean", _set("calibration", "per_layer", 2, "kl_ci_high", 0.04), {"calibration.per_layer.ci"}),
    ("max-below-mean", _set("calibration", "per_layer", 0, "kl_max", 1.0), {"calibration.per_layer.kl_max"}),
    ("dataset-layer", _set("calibration", "per_dataset", 0, "layer", 4),
     {"calibration.per_dataset[synthetic_color].layer"}),
    ("per-sample-length", lambda d: d["calibration"]["per_sample"][1]["kl"].pop(),
     {"calibration.per_sample"}),
    ("flops-reduction", _set("flops", "reduction", 0.41), {"flops.reduction"}),
    ("flops-components", _set("flops", "baseline", "lm_head", 50_001), {"flops.baseline.total"}),
    ("speedup", _set("latency", "speedup", "prefill", 1.7), {"latency.speedup.prefill"}),
    ("decode-speedup", _set("latency", "speedup", "decode_per_token", None), {"latency.speedup.decode_per_token"}),
    ("flops-ratio", _set("latency", "flops_ratio", 1.5), {"latency.flops_ratio"}),
    ("kv-reduction", _set("memory", "kv_cache_reduction", 0.5), {"memory.kv_cache_reduction"}),
    ("evaluation-layer", _set("evaluation", "withdrawn", "layer", 6), {"evaluation.withdrawn.layer"}),
    ("evaluation-null-accuracy", _set("evaluation", "withdrawn", "accuracy", None), {"evaluation.withdrawn.accuracy"}),
    ("withdrawal-layer", _set("withdrawal", "layer", 4), {"withdrawal.layer"}),
    ("withdrawal-out-of-range", _set("withdrawal", "layer", 9), {"withdrawal.layer"}),
    ("withdrawal-kinds", _set("withdrawal", "kinds", ["video"]), {"withdrawal.kinds"}),
    ("data-sha", _set("data", 0, "sha256", "abc123"), {"data[0].sha256"}),
    ("data-samples", _set("data", 0, "samples", 4), {"data[0].samples"}),
    ("model-sha", _set("model", "config_sha256", "not-a-hash"), {"model.config_sha256"}),
]


@pytest.mark.parametrize("mutate, expected", [(m, e) for _, m, e in INCONSISTENCIES],
                         ids=[i for i, _, _ in INCONSISTENCIES])
def test_check_catches_inconsistency(tmp_path, mutate, expected):
    data = example_profile()
    mutate(data)
    path = save(tmp_path, data)
    assert failed_names(G.check_profile(path)) == expected
    result = invoke("check", path)
    assert result.exit_code == 1
    assert isinstance(result.exception, CheckFailed) and result.exception.exit_code == 1
    message = str(result.exception)
    assert path in message and sorted(expected)[0] in message
    assert "FAIL" in result.output  # the report was printed before the failure


def test_check_failure_exit_code_and_one_line(tmp_path, capsys):
    data = example_profile()
    data["flops"]["reduction"] = 0.5
    path = save(tmp_path, data)
    code, out, err = run_main(["check", path], capsys)
    assert code == 1
    assert err.strip().count("\n") == 0
    assert f"{path}: flops.reduction: is 0.5 but 1 - withdrawn.total / baseline.total = 0.4" in err
    assert "flops.reduction" in out


def test_tolerances(tmp_path):
    data = example_profile()
    data["flops"]["reduction"] = 0.4 * (1 + 5e-7)           # within rel 1e-6
    data["latency"]["speedup"]["end_to_end"] = 1.333        # within rel 1e-3 of 1.3333...
    assert failed_names(G.check_profile(save(tmp_path, data))) == set()
    data["latency"]["speedup"]["end_to_end"] = 1.33
    assert failed_names(G.check_profile(save(tmp_path, data))) == {"latency.speedup.end_to_end"}


def test_check_max_accuracy_drop(tmp_path, capsys):
    path = save(tmp_path, example_profile())  # 95% -> 94%: 1 point
    assert invoke("check", path, "--max-accuracy-drop", "1").exit_code == 0
    result = invoke("check", path, "--max-accuracy-drop", "0.5")
    assert result.exit_code == 1 and "max-accuracy-drop" in str(result.exception)
    assert "drop 1.00 points > limit 0.5" in str(result.exception)
    header_only = save(tmp_path, {k: example_profile()[k] for k in ("schema_version", "created_at", "model",
                                                                    "environment")}, "h.yaml")
    code, _, err = run_main(["check", header_only, "--max-accuracy-drop", "5"], capsys)
    assert code == 1 and "needs an evaluation section" in err


def test_check_json_shape(tmp_path):
    good = save(tmp_path, example_profile(), "good.yaml")
    data = example_profile()
    data["memory"]["kv_cache_reduction"] = 0.1
    bad = save(tmp_path, data, "bad.yaml")
    result = invoke("check", good, bad, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and [f["file"] for f in report["files"]] == [good, bad]
    assert report["files"][0]["ok"] is True and report["files"][0]["error"] is None
    failed = [c for c in report["files"][1]["checks"] if c["status"] == "FAIL"]
    assert [c["name"] for c in failed] == ["memory.kv_cache_reduction"] and failed[0]["passed"] is False
    assert set(report["files"][1]["checks"][0]) == {"name", "status", "passed", "detail"}


def test_check_unreadable_file_exits_2(tmp_path, capsys):
    good = save(tmp_path, example_profile())
    broken = tmp_path / "broken.yaml"
    broken.write_text("schema_version: 1\nmodel: [\n")
    code, out, err = run_main(["check", good, str(broken)], capsys)
    assert code == 2 and str(broken) in err and err.strip().count("\n") == 0
    assert "ERROR" in out  # the good file was still checked and reported
    result = invoke("check", str(broken), "--json")
    assert isinstance(result.exception, VtwError) and result.exception.exit_code == 2
    assert json.loads(result.stdout)["files"][0]["error"].startswith(str(broken))


# ---------------------------------------------------------------------------------------- compare

def _worse_flops(d):
    d["flops"]["withdrawn"].update(total=700_000, language_model=400_000)   # +16.67%
    d["flops"]["reduction"] = 0.3


def _slower_prefill(d):
    d["latency"]["withdrawn"]["prefill_ms"]["median"] = 30.0                # +20%


def _bigger_kv(d):
    d["memory"]["withdrawn"]["kv_cache_bytes"] = 1_100_000                  # +10%


def _less_accurate(d):
    d["evaluation"]["withdrawn"]["accuracy"] = 0.92                         # 2 points below BASE's 0.94


def _other_layer(d):
    d["calibration"]["layer"] = 6


GATES = [
    # option, passing limit, failing limit, mutation of NEW, gate name, text in the failure
    ("--max-flops-increase", "20", "10", _worse_flops, "max-flops-increase", "(+16.67%) > limit +10%"),
    ("--max-latency-increase", "25", "10", _slower_prefill, "max-latency-increase (prefill)",
     "25.00 ms -> 30.00 ms (+20.00%) > limit +10%"),
    ("--max-memory-increase", "15", "5", _bigger_kv, "max-memory-increase (kv_cache)", "(+10.00%) > limit +5%"),
    ("--max-kl", "0.003", "0.001", None, "max-kl", "kl_mean at K=5 is 0.002 > limit 0.001"),
    ("--max-accuracy-drop", "2.5", "1.5", _less_accurate, "max-accuracy-drop", "drop 2.00 points > limit 1.5"),
]


@pytest.mark.parametrize("option, ok_limit, bad_limit, mutate, gate, text", GATES, ids=[g[0] for g in GATES])
def test_compare_gate_both_sides(tmp_path, option, ok_limit, bad_limit, mutate, gate, text):
    new = example_profile()
    if mutate:
        mutate(new)
    base_path, new_path = save(tmp_path, example_profile(), "base.yaml"), save(tmp_path, new, "new.yaml")
    passing = invoke("compare", base_path, new_path, option, ok_limit, "--json")
    assert passing.exit_code == 0, passing.output
    report = json.loads(passing.stdout)
    assert report["ok"] is True and all(g["status"] == "pass" for g in report["gates"])
    failing = invoke("compare", base_path, new_path, option, bad_limit, "--json")
    assert failing.exit_code == 1
    assert isinstance(failing.exception, CheckFailed)
    assert gate in str(failing.exception) and text in str(failing.exception)
    statuses = {g["name"]: g["status"] for g in json.loads(failing.stdout)["gates"]}
    assert statuses[gate] == "FAIL"


def test_compare_same_layer(tmp_path):
    base = save(tmp_path, example_profile(), "base.yaml")
    assert invoke("compare", base, base, "--same-layer").exit_code == 0
    new = example_profile()
    _other_layer(new)
    result = invoke("compare", base, save(tmp_path, new, "new.yaml"), "--same-layer")
    assert result.exit_code == 1 and "same-layer: K differs: BASE 5 vs NEW 6" in str(result.exception)


def test_compare_same_layer_also_requires_the_same_withdrawn_kinds(tmp_path):
    base = example_profile()
    new = example_profile()
    new["calibration"]["withdraw"] = ["image"]
    new["withdrawal"]["kinds"] = ["image"]
    result = invoke("compare", save(tmp_path, base), save(tmp_path, new, "new.yaml"), "--same-layer")
    assert result.exit_code == 1
    assert "the withdrawn tokens differ: BASE all vision vs NEW image" in str(result.exception)
    assert invoke("compare", save(tmp_path, new, "a.yaml"), save(tmp_path, new, "b.yaml"), "--same-layer").exit_code == 0


def test_compare_improvements_pass_every_gate(tmp_path):
    new = example_profile()
    new["flops"]["withdrawn"].update(total=500_000, language_model=200_000)
    new["latency"]["withdrawn"]["end_to_end_ms"]["median"] = 80.0
    new["memory"]["withdrawn"]["peak_rss_bytes"] = 800_000_000
    new["evaluation"]["withdrawn"]["accuracy"] = 0.95
    result = invoke("compare", save(tmp_path, example_profile(), "b.yaml"), save(tmp_path, new, "n.yaml"),
                    "--max-flops-increase", "0", "--max-latency-increase", "0", "--max-memory-increase", "0",
                    "--max-kl", "0.002", "--max-accuracy-drop", "0", "--same-layer", "--json")
    assert result.exit_code == 0, result.output
    gates = json.loads(result.stdout)["gates"]
    assert len(gates) == 9 and {g["status"] for g in gates} == {"pass"}


def test_compare_main_exit_codes(tmp_path, capsys):
    new = example_profile()
    _worse_flops(new)
    base_path, new_path = save(tmp_path, example_profile(), "base.yaml"), save(tmp_path, new, "new.yaml")
    code, out, err = run_main(["compare", base_path, new_path, "--max-flops-increase", "10"], capsys)
    assert code == 1 and err.strip().count("\n") == 0
    assert "max-flops-increase: withdrawn total FLOPs 600.000 kFLOPs -> 700.000 kFLOPs (+16.67%) > limit +10%" in err
    code, _, _ = run_main(["compare", base_path, new_path, "--max-flops-increase", "20"], capsys)
    assert code == 0
    code, _, err = run_main(["compare", base_path, str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "missing.yaml: no such profile file" in err


def test_gate_policy_absent_in_both_is_not_applicable(tmp_path):
    flops_only = example_profile()
    for section in ("latency", "memory", "calibration", "evaluation", "data"):
        flops_only.pop(section)
    path = save(tmp_path, flops_only)
    result = invoke("compare", path, path, "--max-latency-increase", "5", "--max-memory-increase", "5",
                    "--max-kl", "0.1", "--max-accuracy-drop", "1", "--max-flops-increase", "0", "--json")
    assert result.exit_code == 0, result.output
    statuses = {g["name"]: (g["status"], g["detail"]) for g in json.loads(result.stdout)["gates"]}
    assert statuses["max-flops-increase"][0] == "pass"
    assert statuses["max-kl"] == ("n/a", "not applicable: no calibration section in either profile")
    assert statuses["max-latency-increase (prefill)"][0] == "n/a"
    assert statuses["max-memory-increase (peak_rss)"][0] == "n/a" and statuses["max-accuracy-drop"][0] == "n/a"


@pytest.mark.parametrize("option, limit, section, expected", [
    ("--max-latency-increase", "5", "latency", "latency.withdrawn.prefill_ms.median is missing or null in NEW"),
    ("--max-memory-increase", "5", "memory", "memory.withdrawn.peak_rss_bytes is missing or null in NEW"),
    ("--max-flops-increase", "5", "flops", "flops.withdrawn.total is missing or null in NEW"),
    ("--max-kl", "1", "calibration", "NEW"),
    ("--max-accuracy-drop", "1", "evaluation", "evaluation.withdrawn.accuracy is missing or null in NEW"),
])
def test_gate_policy_missing_on_one_side_fails(tmp_path, option, limit, section, expected):
    new = example_profile()
    new.pop(section)
    result = invoke("compare", save(tmp_path, example_profile(), "b.yaml"), save(tmp_path, new, "n.yaml"),
                    option, limit)
    assert result.exit_code == 1
    assert expected in str(result.exception) and "n.yaml" in str(result.exception)


def test_compare_max_kl_without_layer_fails(tmp_path):
    result = invoke("compare", save(tmp_path, example_profile(), "b.yaml"),
                    save(tmp_path, example_profile(layer=None), "n.yaml"), "--max-kl", "1")
    assert result.exit_code == 1 and "no chosen layer" in str(result.exception)


def test_compare_notes_different_devices(tmp_path):
    new = example_profile()
    new["latency"]["device_name"] = "Other CPU"
    new["environment"]["device_name"] = "Other CPU"
    result = invoke("compare", save(tmp_path, example_profile(), "b.yaml"), save(tmp_path, new, "n.yaml"),
                    "--max-latency-increase", "5", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 0
    assert any("different devices" in note and "Other CPU" in note for note in report["notes"])
    assert all(g["detail"].endswith("(different devices)") for g in report["gates"])
    same = invoke("compare", save(tmp_path, example_profile(), "b.yaml"), save(tmp_path, example_profile(), "c.yaml"),
                  "--json")
    assert json.loads(same.stdout)["notes"] == []


def test_compare_json_shape(tmp_path):
    new = example_profile()
    _worse_flops(new)
    report = json.loads(invoke("compare", save(tmp_path, example_profile(), "b.yaml"),
                               save(tmp_path, new, "n.yaml"), "--format", "json").stdout)
    assert set(report) == {"base", "new", "ok", "rows", "gates", "notes"} and report["gates"] == []
    rows = {row["metric"]: row for row in report["rows"]}
    assert {"layer", "kl_at_layer", "accuracy.baseline", "accuracy.withdrawn", "flops.baseline", "flops.withdrawn",
            "flops.reduction", "latency.prefill.baseline", "latency.prefill.withdrawn",
            "latency.decode_per_token.withdrawn", "latency.end_to_end.withdrawn", "memory.peak_rss.withdrawn",
            "memory.kv_cache.baseline", "memory.kv_cache.withdrawn"} <= set(rows)
    flops = rows["flops.withdrawn"]
    assert (flops["base"], flops["new"], flops["delta"]) == (600_000, 700_000, 100_000)
    assert flops["delta_pct"] == pytest.approx(100 / 6)
    assert rows["layer"]["base"] == 5 and rows["kl_at_layer"]["new"] == 0.002
    assert rows["flops.reduction"]["delta"] == pytest.approx(-0.1) and rows["flops.reduction"]["delta_pct"] is None


def test_compare_markdown_shape(tmp_path):
    new = example_profile()
    _worse_flops(new)
    new["latency"]["device_name"] = "Other | CPU"
    result = invoke("compare", save(tmp_path, example_profile(), "b.yaml"), save(tmp_path, new, "n.yaml"),
                    "--format", "markdown", "--max-flops-increase", "10", "--max-kl", "1")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("### vtw compare: `")
    header = lines.index("| metric | BASE | NEW | Δ | Δ % |")
    assert lines[header + 1] == "|---|---:|---:|---:|---:|"
    body = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        body.append(line)
    assert len(body) == 20  # 17 figures + 3 speedups
    assert "| FLOPs, withdrawn | 600.000 kFLOPs | 700.000 kFLOPs | +100.000 kFLOPs | +16.67% |" in body
    assert all(line.count(" | ") == 4 for line in body)
    gates = lines.index("| gate | status | detail |")
    assert lines[gates + 1] == "|---|---|---|"
    assert lines[gates + 2].startswith("| max-flops-increase | ❌ FAIL | ")
    assert lines[gates + 3].startswith("| max-kl | ✅ pass | ")
    assert "**1 gate(s) failed.**" in lines
    assert any(line.startswith("> **Note:** latency was measured on different devices") and "Other \\| CPU" in line
               for line in lines)


def test_compare_table_default(tmp_path):
    path = save(tmp_path, example_profile())
    result = invoke("compare", path, path)
    assert result.exit_code == 0
    assert "vtw compare" in result.output and "no gates requested" in result.output


def test_compare_library_api():
    comparison = G.compare_profiles(example_profile(), example_profile(), G.GateLimits(max_kl=0.01, same_layer=True))
    assert comparison.passed and comparison.failure_message() is None
    assert [g.name for g in comparison.gates] == ["max-kl", "same-layer"]
    row = next(r for r in comparison.rows if r.key == "memory.kv_cache.withdrawn")
    assert G.format_value(row.base, row.unit) == "976.6 KiB" and G.format_delta(row) == ("+0 B", "+0.00%")


def test_documented_example_passes_check(tmp_path):
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "profile-schema.md").read_text()
    example = doc.split("## Example", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "example.yaml"
    path.write_text(example)
    assert failed_names(G.check_profile(path)) == set()
