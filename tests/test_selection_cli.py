"""`vtw calibrate --select` and `--samples auto` end to end on a tiny saved model.

The figures in the written profile are recomputed here from its own curve and per-sample KL (rules by hand,
the K distribution by tests/bootstrap_reference.py), and `--samples auto` is checked to stop on the same
samples a fixed `--samples n` takes.
"""

from __future__ import annotations

import pytest
import yaml
from bootstrap_reference import reference_k_distribution
from tiny_models import save_tiny_llava

from vtwcli import gates as G
from vtwcli.cli import main
from vtwcli.datasets import load_dataset, sample_dataset
from vtwcli.selection import wilson_interval
from cli_run import run_cli

SETS = ("photo_vqa", "photo_mc")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), num_layers=4)


run = run_cli


def calibrate(model_dir, output, capsys, *extra):
    args = ["calibrate", "--model", model_dir, "--dataset", SETS[0], "--dataset", SETS[1], "--device", "cpu",
            "--output", output, "--force", *extra]
    code, out, err = run(args, capsys)
    return code, out, err, yaml.safe_load(open(output))


def first(entries, key, threshold):
    return next((e["layer"] for e in entries if e[key] <= threshold), None)


@pytest.fixture(scope="module")
def curve(model_dir, tmp_path_factory):
    """The tiny model's curve on 6 + 6 samples, and a threshold at which the mean and upper rules disagree."""
    output = tmp_path_factory.mktemp("curve") / "c.yaml"
    main_args = ["calibrate", "--model", model_dir, "--dataset", SETS[0], "--dataset", SETS[1], "--samples", "6",
                 "--no-eval", "--threshold", "1e9", "--device", "cpu", "--output", str(output)]
    try:
        main(main_args)
    except SystemExit as exit:
        assert not exit.code
    per_layer = yaml.safe_load(output.read_text())["calibration"]["per_layer"]
    for entry in per_layer:  # a threshold between a layer's mean and its upper bound
        threshold = (entry["kl_mean"] + entry["kl_ci_high"]) / 2
        if first(per_layer, "kl_mean", threshold) != first(per_layer, "kl_ci_high", threshold):
            return per_layer, threshold
    pytest.fail("the tiny model's curve has no threshold where the mean and upper rules differ")


def test_each_rule_chooses_what_its_definition_says(model_dir, curve, tmp_path, capsys):
    _, threshold = curve
    chosen = {}
    for rule in ("mean", "upper", "stable=0.95"):
        code, out, err, profile = calibrate(model_dir, tmp_path / f"{rule}.yaml", capsys, "--samples", "6",
                                            "--threshold", repr(threshold), "--select", rule)
        calibration = profile["calibration"]
        selection = calibration["selection"]
        assert selection["rule"] == rule
        per_layer = calibration["per_layer"]
        shares = selection["k_bootstrap"]
        cumulative, quantile = 0.0, None
        for entry in per_layer:
            cumulative += shares.get(str(entry["layer"]), 0.0)
            if cumulative >= 0.95 - 1e-9:
                quantile = entry["layer"]
                break
        expected = {"mean": first(per_layer, "kl_mean", threshold),
                    "upper": first(per_layer, "kl_ci_high", threshold), "stable=0.95": quantile}[rule]
        assert calibration["layer"] == expected
        assert code == (0 if expected is not None else 1)
        chosen[rule] = calibration["layer"]

        # the K distribution: the stratified bootstrap of the stored per-sample KL, recomputed independently
        samples = calibration["per_sample"]
        reference = reference_k_distribution([s["kl"] for s in samples], [s["dataset"] for s in samples],
                                             [e["layer"] for e in per_layer], threshold, 1000, 0)
        assert shares == pytest.approx(reference, abs=1e-12)
        assert "K stability: K = " in out and "of resamples" in out
        # warnings: on stderr, one line each, the same as in the profile
        printed = [line.removeprefix("warning: ") for line in err.splitlines() if line.startswith("warning: ")]
        assert printed == [w["message"] for w in selection["warnings"]]
        # accuracy intervals: Wilson of the stored accuracy on the stored sample count
        evaluation = profile["evaluation"]
        n = evaluation["samples"]
        assert evaluation["baseline"]["accuracy_ci"] == pytest.approx(
            list(wilson_interval(round(evaluation["baseline"]["accuracy"] * n), n)), abs=1e-12)
        assert evaluation["interval"] == {"method": "wilson", "confidence": 0.95}
        assert not [r for r in G.check_profile(tmp_path / f"{rule}.yaml") if not r.passed]
    assert chosen["mean"] != chosen["upper"]  # the threshold was picked so that they differ


def test_samples_auto_draws_rounds_and_stops_on_the_samples_a_fixed_draw_takes(model_dir, curve, tmp_path, capsys):
    _, threshold = curve
    code, out, _, profile = calibrate(model_dir, tmp_path / "auto.yaml", capsys, "--samples", "auto",
                                      "--auto-step", "2", "--auto-budget", "6", "--auto-target", "1",
                                      "--threshold", repr(threshold), "--no-eval")
    assert code == 0
    record = profile["calibration"]["selection"]["samples_auto"]
    counts = [entry["samples"] for entry in profile["data"]]
    assert record["samples"] == sum(counts) == len(profile["calibration"]["per_sample"])
    assert [r["samples"] for r in record["rounds"]] == [4 * (i + 1) for i in range(len(record["rounds"]))]
    assert counts == [2 * len(record["rounds"])] * 2
    last = record["rounds"][-1]
    if record["stopped"] == "stable":
        assert last["modal_share"] == 1.0 and not last["straddles"]
    else:
        assert record["stopped"] == "budget" and counts == [6, 6]
    assert all(r["modal_share"] < 1.0 or r["straddles"] for r in record["rounds"][:-1])  # earlier rounds went on
    assert "--samples auto: " in out and f"{sum(counts)} samples over 2 dataset(s)" in out

    # the same samples, in the same order, as `--samples n` with the same seed, and the same KL
    for entry, name in zip(profile["data"], SETS):
        assert entry["sample_ids"] == [s.id for s in sample_dataset(load_dataset(name), entry["samples"], 0)]
    _, _, _, fixed = calibrate(model_dir, tmp_path / "fixed.yaml", capsys, "--samples", str(counts[0]),
                               "--threshold", repr(threshold), "--no-eval")
    assert [(s["dataset"], s["id"]) for s in fixed["calibration"]["per_sample"]] == \
        [(s["dataset"], s["id"]) for s in profile["calibration"]["per_sample"]]
    for a, b in zip(fixed["calibration"]["per_sample"], profile["calibration"]["per_sample"]):
        assert a["kl"] == pytest.approx(b["kl"], abs=1e-6)  # other batches, other padding: float32 rounding
    assert not [r for r in G.check_profile(tmp_path / "auto.yaml") if not r.passed]


def test_samples_auto_resumes_from_its_checkpoint_without_measuring_again(curve, tmp_path, monkeypatch):
    import vtwcli.calibration as calibration_module
    from tiny_models import tiny_llava, tiny_processor

    from vtwcli.calibration import CalibrationOptions, DatasetSelection, calibrate
    from vtwcli.checkpoint import CheckpointStore
    from vtwcli.datasets import draw_order
    from vtwcli.selection import AutoOptions

    _, threshold = curve
    model, processor = tiny_llava(4, "sdpa"), tiny_processor()
    sets = [load_dataset(name) for name in SETS]
    selections = [DatasetSelection(d, draw_order(d, 0), 0) for d in sets]
    options = CalibrationOptions(threshold=threshold, evaluate=False, batch_size=3,
                                 auto=AutoOptions(target=1.0, step=2, budget=6))
    path, settings = tmp_path / "run.partial.jsonl", {"run": "auto"}
    first = calibrate(model, processor, selections, options, store=CheckpointStore(path, settings, resume=False))

    def measured_again(*args, **kwargs):
        raise AssertionError("a batch was measured again instead of read from the checkpoint")

    monkeypatch.setattr(calibration_module, "shared_prefix_kl", measured_again)
    again = calibrate(model, processor, selections, options, store=CheckpointStore(path, settings, resume=True))
    assert again.per_sample == first.per_sample and again.selection == first.selection
    assert again.layer == first.layer
