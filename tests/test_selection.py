"""How far to trust K (vtwcli.selection): the bootstrap distribution of K, the selection rules, the warnings,
Wilson intervals, the --samples auto stopping rule, and `vtw check` / `vtw compare` using them.

Every figure is checked against a recomputation or a hand calculation written here, never against the
code under test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from bootstrap_reference import reference_k_distribution
from profile_fixtures import example_profile
from typer.testing import CliRunner

from vtwcli import gates as G
from vtwcli.cli import app
from vtwcli.errors import VtwError
from vtwcli.profile import load_profile, write_profile
from vtwcli.selection import (AutoOptions, RoundFigures, Rule, auto_stop_reason, bootstrap_choices, k_bootstrap,
                              layer_choice, parse_rule, samples_auto, selection_warnings, stability_line,
                              wilson_interval)

runner = CliRunner()


# ------------------------------------------------------------------------------------ the K distribution

def test_k_bootstrap_matches_an_independent_recomputation_with_the_same_seed():
    rng = np.random.default_rng(7)
    layers = [2, 3, 4, 5]
    datasets = ["a"] * 6 + ["b"] * 4 + ["a"] * 2 + ["c"] * 5  # interleaved on purpose: strata, not runs
    # KL falling with depth, noisy around the threshold at layers 3 and 4
    kl = np.column_stack([rng.uniform(0.5, 1.0, 17), rng.exponential(0.004, 17), rng.exponential(0.0025, 17),
                          rng.exponential(0.0005, 17)])
    for seed in (0, 3):
        got = k_bootstrap(kl, datasets, layers, 0.003, resamples=500, seed=seed)
        expected = reference_k_distribution(kl, datasets, layers, 0.003, 500, seed)
        assert set(got) == set(expected)
        for key in expected:
            assert got[key] == pytest.approx(expected[key], abs=1e-12)
        assert sum(got.values()) == pytest.approx(1.0)
        assert len(got) >= 2  # the case is genuinely unstable, so the comparison means something
    assert list(got) == sorted((k for k in got if k != "none"), key=int) + (["none"] if "none" in got else [])


def test_k_bootstrap_is_stratified_exact_probabilities():
    """Dataset a = [3, 3, 0] at layer 1, dataset b = [0, 0, 0]; layer 2 is 0 everywhere; threshold 0.5.
    Layer 1 qualifies when the pooled mean c*3/6 <= 0.5, i.e. at most one '3' is drawn. Stratified, c is
    Binomial(3, 2/3): P = (1/3)^3 + 3 (2/3)(1/3)^2 = 7/27. (Unstratified it would be Binomial(6, 1/3):
    256/729 = 0.351, far from 7/27 = 0.259.)"""
    kl = np.array([[3.0, 0.0], [3.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    datasets = ["a", "a", "a", "b", "b", "b"]
    got = k_bootstrap(kl, datasets, [1, 2], 0.5, resamples=20000, seed=0)
    assert got["1"] == pytest.approx(7 / 27, abs=0.015)
    assert got["2"] == pytest.approx(20 / 27, abs=0.015)
    assert set(got) == {"1", "2"}


def test_no_layer_is_counted_as_none_and_a_constant_curve_is_certain():
    kl = np.array([[0.1, 0.05], [0.1, 0.05]])
    assert k_bootstrap(kl, ["a", "a"], [1, 2], 0.01, resamples=50, seed=0) == {"none": 1.0}
    assert k_bootstrap(kl, ["a", "b"], [1, 2], 0.06, resamples=50, seed=0) == {"2": 1.0}
    choices = bootstrap_choices(kl, ["a", "a"], [1, 2], 0.01, resamples=5, seed=0)
    assert choices.tolist() == [-1] * 5


def test_stability_line():
    assert stability_line({"3": 0.03, "4": 0.97}) == "K = 4 in 97% of resamples, 3 in 3%"
    assert stability_line({"4": 0.996, "5": 0.004}) == "K = 4 in >99% of resamples, 5 in <1%"
    assert stability_line({"2": 0.25, "none": 0.75}) == "no layer meets the threshold in 75% of resamples, 2 in 25%"


# ------------------------------------------------------------------------------------------------ rules

CURVE = [  # hand-built: the mean crosses 0.003 at layer 2, the upper bound only at layer 4
    {"layer": 1, "kl_mean": 0.5, "kl_ci_low": 0.4, "kl_ci_high": 0.7},
    {"layer": 2, "kl_mean": 0.0025, "kl_ci_low": 0.001, "kl_ci_high": 0.004},
    {"layer": 3, "kl_mean": 0.002, "kl_ci_low": 0.001, "kl_ci_high": 0.0035},
    {"layer": 4, "kl_mean": 0.001, "kl_ci_low": 0.0005, "kl_ci_high": 0.0028},
    {"layer": 5, "kl_mean": 0.0005, "kl_ci_low": 0.0001, "kl_ci_high": 0.0009},
]
SHARES = {"2": 0.6, "3": 0.3, "4": 0.08, "none": 0.02}


@pytest.mark.parametrize("rule, expected", [
    ("mean", 2), ("upper", 4), ("stable=0.5", 2), ("stable=0.6", 2), ("stable=0.9", 3), ("stable=0.95", 4),
    ("stable=0.98", 4), ("stable=0.99", None), ("stable=1", None),
])
def test_each_rule_on_a_hand_built_curve(rule, expected):
    assert layer_choice(parse_rule(rule), CURVE, 0.003, SHARES) == expected


def test_rules_with_nothing_under_the_threshold():
    assert layer_choice(Rule("mean"), CURVE, 0.0001, SHARES) is None
    assert layer_choice(Rule("upper"), CURVE, 0.0008, SHARES) is None
    assert layer_choice(Rule("stable", 0.5), CURVE, 0.003, {}) is None


@pytest.mark.parametrize("text", ["median", "stable", "stable=0", "stable=1.5", "stable=-0.1", "upper=0.9", ""])
def test_a_bad_rule_is_one_line(text):
    with pytest.raises(VtwError, match=r"is not a selection rule; use mean, upper or stable=P"):
        parse_rule(text)


def test_rule_text_round_trips():
    for text in ("mean", "upper", "stable=0.95", "stable=1"):
        assert str(parse_rule(text)) == text


# --------------------------------------------------------------------------------------------- warnings

def test_warnings_say_what_to_do():
    per_dataset = [{"name": "near", "layer": 3}, {"name": "far", "layer": 5}, {"name": "never", "layer": None}]
    found = selection_warnings(Rule("mean"), 2, CURVE, 0.003, SHARES, per_dataset)
    by_code = {}
    for warning in found:
        by_code.setdefault(warning["code"], []).append(warning["message"])
    # layer 2's interval 0.001 .. 0.004 straddles 0.003
    assert by_code["interval_straddles_threshold"] == [
        "the 95% interval of the mean KL at K=2 (0.001 .. 0.004) straddles the threshold 0.003: another draw of "
        "samples may choose another K; calibrate on more samples (--samples auto) or choose with --select upper"]
    # 60% of resamples choose K=2 (< 90%)
    assert len(by_code["k_share_low"]) == 1 and by_code["k_share_low"][0].startswith(
        "only 60% of bootstrap resamples choose K=2 (K = 2 in 60% of resamples")
    assert "--samples auto" in by_code["k_share_low"][0] and "--select stable=0.95" in by_code["k_share_low"][0]
    # 'near' differs by one layer: fine; 'far' by three and 'never' never qualifies: flagged
    assert len(by_code["dataset_disagrees"]) == 2
    assert by_code["dataset_disagrees"][0].startswith("dataset far: its own first layer under the threshold is 5, "
                                                      "pooled K=2")
    assert "--dataset never" in by_code["dataset_disagrees"][1]


def test_no_warning_for_a_stable_k_and_conservative_rules_count_earlier_layers():
    assert selection_warnings(Rule("mean"), 5, CURVE, 0.003, {"5": 0.95, "4": 0.05}, [{"name": "a", "layer": 4}]) == []
    # under stable=0.9, K=3 is backed by the 90% that choose 2 or 3: no share warning
    codes = [w["code"] for w in selection_warnings(Rule("stable", 0.9), 3, CURVE, 0.003, SHARES)]
    assert "k_share_low" not in codes and codes == ["interval_straddles_threshold"]
    assert selection_warnings(Rule("mean"), None, CURVE, 0.003, SHARES) == []


# --------------------------------------------------------------------------------------------- accuracy

@pytest.mark.parametrize("successes, n, low, high", [
    (0, 10, 0.0, 0.27753),          # textbook values of the Wilson score interval, z = 1.95996
    (5, 10, 0.23659, 0.76341),
    (10, 10, 0.72247, 1.0),
    (19, 20, 0.76387, 0.99112),     # by hand: centre 1.04604 / 1.19207, half-width 1.64418 * 0.069108
])
def test_wilson_interval_against_hand_computed_values(successes, n, low, high):
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_of_no_samples_is_everything():
    assert wilson_interval(0, 0) == (0.0, 1.0)


# ------------------------------------------------------------------------------------------ --samples auto

def run_auto(sequence, available, **options):
    """samples_auto over a hand-built sequence of round figures; returns (result, counts it asked for)."""
    asked = []

    def measure(counts):
        asked.append(counts)
        distribution, straddling = sequence[len(asked) - 1]
        return RoundFigures(distribution, straddling)

    return samples_auto(available, measure, AutoOptions(**options)), asked


SEQUENCE = [({"3": 0.6, "4": 0.4}, True), ({"3": 0.8, "4": 0.2}, False), ({"3": 0.92, "4": 0.08}, True),
            ({"4": 0.95, "5": 0.05}, False), ({"4": 0.97, "5": 0.03}, False)]


def test_samples_auto_stops_when_the_modal_share_reaches_the_target_with_a_clear_interval():
    result, asked = run_auto(SEQUENCE, [40, 40], target=0.8, step=5)
    assert asked == [[5, 5], [10, 10]]
    assert result.stopped == "stable" and result.counts == [10, 10]
    assert [(r.samples, r.modal_k, r.modal_share, r.straddles) for r in result.rounds] == [
        (10, "3", 0.6, True), (20, "3", 0.8, False)]


def test_samples_auto_does_not_stop_while_the_interval_straddles():
    # round 3 reaches 92% >= 90% but its interval straddles the threshold: one more round
    result, asked = run_auto(SEQUENCE, [40, 40], target=0.9, step=5)
    assert asked == [[5, 5], [10, 10], [15, 15], [20, 20]]
    assert result.stopped == "stable" and result.distribution == SEQUENCE[3][0]
    assert result.rounds[-1].modal_k == "4"


def test_samples_auto_stops_when_the_data_runs_out():
    result, asked = run_auto(SEQUENCE, [12, 7], target=0.99, step=5)
    assert asked == [[5, 5], [10, 7], [12, 7]]
    assert result.stopped == "data" and result.counts == [12, 7] and result.distribution == SEQUENCE[2][0]


def test_samples_auto_stops_at_the_budget():
    result, asked = run_auto(SEQUENCE, [40, 40], target=0.99, step=4, budget=10)
    assert asked == [[4, 4], [8, 8], [10, 10]]
    assert result.stopped == "budget"


def test_auto_stop_reason_order():
    options = AutoOptions(target=0.9, step=5, budget=5)
    assert auto_stop_reason(0.95, False, [5], [5], options) == "stable"  # stable wins over data and budget
    assert auto_stop_reason(0.95, True, [5], [5], options) == "data"
    assert auto_stop_reason(0.5, False, [5], [5], options) == "data"
    assert auto_stop_reason(0.5, False, [5], [9], options) == "budget"
    assert auto_stop_reason(0.5, False, [4], [9], options) is None


@pytest.mark.parametrize("options, message", [
    (AutoOptions(target=0), "--auto-target 0 is not a share"),
    (AutoOptions(target=1.5), "--auto-target 1.5 is not a share"),
    (AutoOptions(step=0), "--auto-step 0: draw at least 1 sample"),
    (AutoOptions(budget=0), "--auto-budget 0: allow at least 1 sample"),
])
def test_auto_options_are_validated(options, message):
    with pytest.raises(VtwError, match=message):
        options.validate()


# ---------------------------------------------------------------------------------- vtw check / compare

def save(tmp_path, data, name="p.yaml"):
    return str(write_profile(data, tmp_path / name, force=True))


def failed(results):
    return {r.name: r.detail for r in results if not r.passed}


def with_selection(rule="mean", k=None):
    """example_profile (3 identical samples: every resample's mean is the curve, so K = 5 always) with a
    selection block."""
    data = example_profile()
    data["calibration"]["selection"] = {"rule": rule, "k_bootstrap": k if k is not None else {"5": 1.0},
                                        "warnings": []}
    return data


def test_check_accepts_a_consistent_selection_and_an_old_profile_without_one(tmp_path):
    assert failed(G.check_profile(save(tmp_path, with_selection()))) == {}
    names = [r.name for r in G.check_profile(save(tmp_path, with_selection()))]
    assert "calibration.selection.k_bootstrap" in names
    old = example_profile()
    assert "selection" not in old["calibration"]
    assert failed(G.check_profile(save(tmp_path, old, "old.yaml"))) == {}
    assert load_profile(save(tmp_path, old, "old.yaml")).calibration.selection is None


def test_check_catches_a_tampered_k_distribution(tmp_path):
    results = G.check_profile(save(tmp_path, with_selection(k={"5": 0.9, "6": 0.1})))
    assert set(failed(results)) == {"calibration.selection.k_bootstrap"}
    assert "K=5: stored 0.9, recomputed 1" in failed(results)["calibration.selection.k_bootstrap"]
    bad_sum = G.check_profile(save(tmp_path, with_selection(k={"5": 0.7})))
    assert "fractions sum to 0.7" in failed(bad_sum)["calibration.selection.k_bootstrap"]


def test_check_catches_tampered_per_sample_kl(tmp_path):
    data = with_selection()
    data["calibration"]["per_sample"][0]["kl"][4] = 0.02  # layer 5 now fails in resamples that draw it
    assert "calibration.selection.k_bootstrap" in failed(G.check_profile(save(tmp_path, data)))


def _upper_profile(layer):
    """threshold 0.0022: the mean rule gives 5 (0.002); upper bounds are mean x 1.25, so the first under
    0.0022 is layer 7 (0.000625)."""
    data = with_selection(rule="upper", k={"5": 1.0})
    cal = data["calibration"]
    cal["threshold"] = 0.0022
    cal["layer"] = layer
    data["evaluation"]["withdrawn"]["layer"] = layer
    data["withdrawal"]["layer"] = layer
    return data


def test_check_recomputes_the_layer_under_the_recorded_rule(tmp_path):
    assert failed(G.check_profile(save(tmp_path, _upper_profile(7)))) == {}
    wrong = failed(G.check_profile(save(tmp_path, _upper_profile(5))))
    assert set(wrong) == {"calibration.layer"}
    assert "profile says 5 but layer 7 is the first layer whose bootstrap upper bound" in wrong["calibration.layer"]
    stable = with_selection(rule="stable=0.95", k={"5": 0.5, "6": 0.3, "7": 0.2})
    stable["calibration"]["per_sample"] = stable["calibration"]["per_sample"][:0]  # nothing to recompute from
    assert failed(G.check_profile(save(tmp_path, stable))) == {
        "calibration.layer": "profile says 5 but layer 7 is the smallest layer that at least 95% of the bootstrap "
                             "resamples choose or beat, at mean KL <= 0.003 (rule stable=0.95)"}


def test_check_refuses_an_unknown_rule_text(tmp_path):
    data = with_selection(rule="stable=7")
    assert "calibration.selection.rule" in failed(G.check_profile(save(tmp_path, data)))


def test_check_recomputes_accuracy_intervals(tmp_path):
    data = example_profile()  # 80 samples: baseline 0.95 = 76/80, withdrawn 0.94 -> 75/80
    data["evaluation"]["baseline"]["accuracy_ci"] = list(wilson_interval(76, 80))
    data["evaluation"]["withdrawn"]["accuracy_ci"] = list(wilson_interval(75, 80))
    assert failed(G.check_profile(save(tmp_path, data))) == {}
    data["evaluation"]["withdrawn"]["accuracy_ci"] = [0.9, 0.99]
    assert set(failed(G.check_profile(save(tmp_path, data)))) == {"evaluation.withdrawn.accuracy_ci"}


def test_compare_says_when_an_accuracy_drop_is_within_the_interval(tmp_path):
    base, new = example_profile(), example_profile()
    new["evaluation"]["withdrawn"]["accuracy"] = 0.9  # 4 points below BASE's 0.94
    paths = save(tmp_path, base, "base.yaml"), save(tmp_path, new, "new.yaml")
    result = runner.invoke(app, ["compare", *paths, "--max-accuracy-drop", "5", "--json"])
    assert result.exit_code == 0, result.output
    gate = json.loads(result.stdout)["gates"][0]
    low, high = wilson_interval(72, 80)  # NEW: 0.9 of 80 samples
    assert low < 0.94 < high  # so BASE's 94% is inside NEW's interval
    assert f"within the 95% interval of 80 samples ({low * 100:.1f}%..{high * 100:.1f}%)" in gate["detail"]
    assert "not distinguishable from sampling noise" in gate["detail"]
    half = (high - low) / 2 * 100
    assert half > 5  # 80 samples cannot resolve 5 points:
    assert f"below the interval's half-width ({half:.1f} points)" in gate["detail"]
    # a large sample: 0.94 -> 0.90 on 5000 samples is outside NEW's interval, and the limit is above its half-width
    for data in (base, new):
        data["evaluation"]["samples"] = 5000
    paths = save(tmp_path, base, "base.yaml"), save(tmp_path, new, "new.yaml")
    detail = json.loads(runner.invoke(app, ["compare", *paths, "--max-accuracy-drop", "5", "--json"]).stdout
                        )["gates"][0]["detail"]
    assert "outside the 95% interval of 5000 samples" in detail and "half-width" not in detail



def test_rules_read_typed_profiles_too(tmp_path):
    calibration = load_profile(save(tmp_path, _upper_profile(7))).calibration  # typed LayerKL entries
    assert layer_choice(Rule("mean"), calibration.per_layer, calibration.threshold) == 5
    assert layer_choice(Rule("upper"), calibration.per_layer, calibration.threshold) == 7
    assert calibration.selection.rule == "upper" and calibration.selection.k_bootstrap == {"5": 1.0}
