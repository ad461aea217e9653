"""evaluation.benchmarks, `vtw eval`'s arguments and results reading, the gates on benchmarks, and the lmms-eval
plugin's parts that need no lmms-eval (the end-to-end run is tests/lmms_eval_e2e.py, in .ci/lmms-eval)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from profile_fixtures import LAYER, example_profile
from tiny_models import tiny_llava

from vtwcli.benchmarks import (EvalOptions, _run, benchmark_entry, lmms_eval_command, merge_benchmarks,
                               parse_model_args, read_results, record_benchmarks)
from vtwcli.gates.benchmarks import drop_points
from vtwcli.errors import VtwError
from vtwcli.gates import GateLimits, check_profile_dict, compare_profiles
from vtwcli.lmms_eval_plugin import apply_to_wrapper, find_hf_model, split_model_args
from vtwcli.lmms_eval_plugin.local_task import LocalTask, write_task
from vtwcli.profile import load_profile, profile_to_dict, read_profile_dict, validate_profile_dict, write_profile

BUNDLED_PROFILE = Path(__file__).resolve().parent.parent / "profiles" / "bundled.yaml"


def entry(task="mme", metric="accuracy,none", full=0.80, withdrawn=0.78, samples=100, layer=LAYER, **extra):
    return benchmark_entry(task, metric, full, withdrawn, samples, layer, model="llava_hf", lmms_eval="0.7.3",
                           **extra)


def with_benchmarks(*entries, keep_dataset_accuracy=True) -> dict:
    data = example_profile()
    if not keep_dataset_accuracy:
        data["evaluation"] = {}
    return merge_benchmarks(data, list(entries))


# ------------------------------------------------------------------------------------------- the section

def test_benchmarks_validate_round_trip_and_are_typed(tmp_path):
    data = with_benchmarks(entry(), entry(task="pope", full=0.86, withdrawn=0.86, higher_is_better=True))
    path = write_profile(data, tmp_path / "p.yaml")
    assert read_profile_dict(path)["evaluation"]["benchmarks"] == data["evaluation"]["benchmarks"]
    profile = load_profile(path)
    first = profile.evaluation.benchmarks[0]
    assert (first.task, first.metric, first.full, first.withdrawn, first.samples, first.layer, first.lmms_eval) == \
        ("mme", "accuracy,none", 0.80, 0.78, 100, LAYER, "0.7.3")
    assert profile.evaluation.baseline.accuracy == example_profile()["evaluation"]["baseline"]["accuracy"]
    assert profile_to_dict(profile) == read_profile_dict(path)  # the typed view loses nothing


def test_an_evaluation_with_only_benchmarks_is_valid_and_samples_go_with_baseline(tmp_path):
    data = with_benchmarks(entry(), keep_dataset_accuracy=False)
    validate_profile_dict(data)
    profile = load_profile(write_profile(data, tmp_path / "p.yaml"))
    assert profile.evaluation.baseline is None and profile.evaluation.samples is None
    assert profile_to_dict(profile)["evaluation"] == {"benchmarks": [entry()]}
    broken = example_profile()
    del broken["evaluation"]["baseline"]
    with pytest.raises(VtwError, match=r"evaluation\.baseline: required key is missing \(it goes with samples\)"):
        validate_profile_dict(broken)
    with pytest.raises(VtwError, match="evaluation: expected a non-empty mapping"):
        validate_profile_dict({**example_profile(), "evaluation": {}})
    with pytest.raises(VtwError, match=r"evaluation\.benchmarks: expected a list of at least 1 item\(s\), got 0"):
        validate_profile_dict({**example_profile(), "evaluation": {"benchmarks": []}})
    bad = with_benchmarks(entry())
    del bad["evaluation"]["benchmarks"][0]["lmms_eval"]
    with pytest.raises(VtwError, match=r"evaluation\.benchmarks\[0\]\.lmms_eval: required key is missing"):
        validate_profile_dict(bad)


def test_merge_replaces_the_same_task_and_metric_and_keeps_the_rest():
    data = with_benchmarks(entry(task="mme"), entry(task="pope"))
    merged = merge_benchmarks(data, [entry(task="pope", full=0.5, withdrawn=0.4), entry(task="gqa")])
    assert [(e["task"], e["full"]) for e in merged["evaluation"]["benchmarks"]] == \
        [("mme", 0.80), ("pope", 0.5), ("gqa", 0.80)]
    assert merged["evaluation"]["baseline"] == data["evaluation"]["baseline"]
    assert data["evaluation"]["benchmarks"][1]["full"] == 0.80  # the input is not changed


def test_drop_points():
    assert drop_points(0.80, 0.78) == pytest.approx(2.0)          # fractions: percentage points
    assert drop_points(1500.0, 1480.0) == pytest.approx(20.0)     # scores: the metric's own units
    assert drop_points(0.10, 0.12, higher_is_better=False) == pytest.approx(2.0)
    assert drop_points(0.78, 0.80) == pytest.approx(-2.0)


def test_record_benchmarks_updates_the_profile_in_place_or_writes_output(tmp_path):
    source = write_profile(example_profile(), tmp_path / "p.yaml")
    record_benchmarks(source, [entry()])
    assert read_profile_dict(source)["evaluation"]["benchmarks"] == [entry()]
    out = record_benchmarks(source, [entry(task="pope")], tmp_path / "out.yaml")
    assert [e["task"] for e in read_profile_dict(out)["evaluation"]["benchmarks"]] == ["mme", "pope"]
    with pytest.raises(VtwError, match="exists; pass --force"):
        record_benchmarks(source, [entry()], out)


# ------------------------------------------------------------------------------------------------ gates

def test_check_max_accuracy_drop_gates_each_benchmark():
    data = with_benchmarks(entry(task="mme", full=0.80, withdrawn=0.78), entry(task="pope", full=0.90, withdrawn=0.85))
    by_name = {r.name: r for r in check_profile_dict(data, "p.yaml", max_accuracy_drop=3)}
    assert by_name["max-accuracy-drop (mme accuracy,none)"].passed
    assert "80.00% full -> 78.00% withdrawn on 100 samples: drop 2.00 <= limit 3" in \
        by_name["max-accuracy-drop (mme accuracy,none)"].detail
    assert not by_name["max-accuracy-drop (pope accuracy,none)"].passed  # 5 points > 3
    assert by_name["benchmark mme accuracy,none.layer"].passed
    assert by_name["max-accuracy-drop"].passed  # the calibration datasets' accuracy is still gated


def test_check_flags_a_benchmark_measured_at_another_layer():
    data = with_benchmarks(entry(layer=LAYER + 1))
    (row,) = [r for r in check_profile_dict(data, "p.yaml") if r.name.endswith(".layer") and "benchmark" in r.name]
    assert not row.passed and f"measured at layer {LAYER + 1} but the profile's layer is {LAYER}" in row.detail


def test_check_with_only_benchmarks():
    data = with_benchmarks(entry(full=0.8, withdrawn=0.7), keep_dataset_accuracy=False)
    results = check_profile_dict(data, "p.yaml", max_accuracy_drop=5)
    assert [r.name for r in results if not r.passed] == ["max-accuracy-drop (mme accuracy,none)"]


def test_compare_gates_withdrawn_benchmark_scores_new_against_base():
    base = with_benchmarks(entry(task="mme", withdrawn=0.78), entry(task="pope", withdrawn=0.85))
    new = with_benchmarks(entry(task="mme", withdrawn=0.77), entry(task="pope", withdrawn=0.80))
    gates = {g.name: g for g in compare_profiles(base, new, GateLimits(max_accuracy_drop=2)).gates}
    assert gates["max-accuracy-drop (mme accuracy,none)"].passed      # 1 point
    assert not gates["max-accuracy-drop (pope accuracy,none)"].passed  # 5 points
    assert "withdrawn 85.00% -> 80.00%: drop 5.00 > limit 2" in gates["max-accuracy-drop (pope accuracy,none)"].detail
    assert gates["max-accuracy-drop"].passed  # the datasets' accuracy, equal in both


def test_compare_fails_a_benchmark_missing_on_one_side_and_shows_rows():
    base = with_benchmarks(entry(task="mme"), keep_dataset_accuracy=False)
    new = with_benchmarks(entry(task="pope"), keep_dataset_accuracy=False)
    comparison = compare_profiles(base, new, GateLimits(max_accuracy_drop=2), base_source="b", new_source="n")
    gates = {g.name: g for g in comparison.gates}
    assert "max-accuracy-drop" not in gates  # no dataset accuracy on either side: only the benchmark gates
    assert "missing in NEW (n)" in gates["max-accuracy-drop (mme accuracy,none)"].detail
    assert "missing in BASE (b)" in gates["max-accuracy-drop (pope accuracy,none)"].detail
    rows = {r.key: (r.base, r.new) for r in comparison.rows}
    assert rows["benchmark.mme.accuracy,none.withdrawn"] == (0.78, None)
    assert rows["benchmark.pope.accuracy,none.full"] == (None, 0.80)


# --------------------------------------------------------------------------- `vtw eval` arguments, results

def test_parse_model_args():
    assert parse_model_args("pretrained=a/b, dtype=bfloat16,") == {"pretrained": "a/b", "dtype": "bfloat16"}
    assert parse_model_args("") == {}
    with pytest.raises(VtwError, match="'dtype' is not key=value"):
        parse_model_args("pretrained=a,dtype")
    with pytest.raises(VtwError, match="pretrained is given twice"):
        parse_model_args("pretrained=a,pretrained=b")


def test_the_two_lmms_eval_command_lines(tmp_path):
    options = EvalOptions(model="llava_hf", tasks=("mme", "pope"), model_args="pretrained=x,dtype=bfloat16",
                          limit=50, device="cuda:0", python="py")
    assert lmms_eval_command(options, tmp_path, None) == [
        "py", "-m", "lmms_eval", "--model", "llava_hf", "--tasks", "mme,pope", "--output_path", str(tmp_path),
        "--log_samples", "--model_args", "pretrained=x,dtype=bfloat16", "--limit", "50", "--device", "cuda:0"]
    profile = tmp_path / "p.yaml"
    withdrawn = lmms_eval_command(options, tmp_path, profile)
    assert withdrawn[3:5] == ["--model", "vtw"]
    assert withdrawn[withdrawn.index("--model_args") + 1] == \
        f"base=llava_hf,profile={profile},pretrained=x,dtype=bfloat16"
    loose = lmms_eval_command(EvalOptions(model="qwen2_5_vl", tasks=("mme",), strict=False), tmp_path, profile)
    assert loose[loose.index("--model_args") + 1] == f"base=qwen2_5_vl,profile={profile},strict=False"


def lmms_results(path: Path, task="mme", values=None, n=100) -> Path:
    """A results file in lmms-eval 0.7's layout (keys 'metric,filter', stderr beside each metric)."""
    values = values if values is not None else {"accuracy,none": 0.75, "accuracy_stderr,none": 0.04}
    path.write_text(json.dumps({"results": {task: {"alias": task, **values}},
                                "higher_is_better": {task: {k.split(",")[0]: True for k in values}},
                                "n-samples": {task: {"original": 2374, "effective": n}}}), encoding="utf-8")
    return path


def test_read_results(tmp_path):
    path = lmms_results(tmp_path / "r.json")
    assert read_results(path, "mme", None) == ("accuracy,none", 0.75, 100, True)
    assert read_results(path, "mme", "accuracy") == ("accuracy,none", 0.75, 100, True)
    two = lmms_results(tmp_path / "two.json", values={"perception,none": 1500.0, "cognition,none": 300.0,
                                                      "perception_stderr,none": "N/A"})
    with pytest.raises(VtwError, match=r"task mme reports 2 metrics \(perception,none, cognition,none\); choose one "
                                       "with --metric"):
        read_results(two, "mme", None)
    assert read_results(two, "mme", "cognition")[1] == 300.0
    with pytest.raises(VtwError, match="task mme has no metric 'f1'"):
        read_results(two, "mme", "f1")
    with pytest.raises(VtwError, match=r"no results for task 'pope' \(results for: mme\)"):
        read_results(path, "pope", None)


def test_a_failed_lmms_eval_run_is_one_line_with_the_log(tmp_path):
    log = tmp_path / "run.log"
    command = [sys.executable, "-c", "import sys; print('loading...'); "
               "sys.exit('vtwcli.errors.VtwError: p.yaml was made for another model (bundled)')"]
    with pytest.raises(VtwError) as caught:
        _run(command, tmp_path, log, "with the profile (K = 4)")
    message = str(caught.value)
    assert message == (f"lmms-eval with the profile (K = 4) failed (exit 1): p.yaml was made for another model "
                       f"(bundled); full log: {log}")
    with pytest.raises(VtwError, match=r"lmms-eval without the profile failed \(exit 3\): last words; full log"):
        _run([sys.executable, "-c", "import sys; print('last words'); sys.exit(3)"], tmp_path, log,
             "without the profile")


def test_an_lmms_eval_run_that_exits_0_without_new_results_failed(tmp_path):
    """lmms-eval 0.7 logs an evaluation error and exits 0; only a results file written by this run counts."""
    log = tmp_path / "run.log"
    (tmp_path / "old_results.json").write_text("{}", encoding="utf-8")  # an earlier run's, in the same folder
    logged = ("\x1b[31mERROR\x1b[0m | lmms_eval.__main__:cli_evaluate:614 - Error during evaluation: No module named "
              "'decord'. Please set `--verbosity=DEBUG` to get more information.")
    with pytest.raises(VtwError) as caught:
        _run([sys.executable, "-c", f"print({logged!r})"], tmp_path, log, "without the profile")
    assert str(caught.value) == (f"lmms-eval without the profile failed (no results written): No module named "
                                 f"'decord'; full log: {log}")
    fresh = tmp_path / "sub" / "20261130_results.json"
    writer = f"import pathlib; p = pathlib.Path({str(fresh)!r}); p.parent.mkdir(); p.write_text('{{}}')"
    assert _run([sys.executable, "-c", writer], tmp_path, log, "without the profile") == fresh


# ------------------------------------------------------------------------------------------- the plugin

def test_split_model_args():
    assert split_model_args({"base": "llava_hf", "profile": "p.yaml", "pretrained": "x", "batch_size": 1}) == \
        ("llava_hf", "p.yaml", True, {"pretrained": "x", "batch_size": 1})
    assert split_model_args({"base": "llava_hf", "profile": "p.yaml", "strict": "False"})[2] is False
    with pytest.raises(VtwError, match="needs base=<lmms-eval model name>"):
        split_model_args({"profile": "p.yaml"})
    with pytest.raises(VtwError, match=r"needs profile=<profile.yaml>"):
        split_model_args({"base": "llava_hf"})
    with pytest.raises(VtwError, match="base=vtw would wrap itself"):
        split_model_args({"base": "vtw", "profile": "p.yaml"})
    with pytest.raises(VtwError, match="strict='maybe' is not a boolean"):
        split_model_args({"base": "llava_hf", "profile": "p.yaml", "strict": "maybe"})


class DataParallelLike(torch.nn.Module):
    """What accelerate's prepare_model returns: the model under `.module`."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def test_find_hf_model_in_lmms_eval_style_wrappers():
    model = tiny_llava(num_layers=2)
    assert find_hf_model(types.SimpleNamespace(model=model)) is model
    assert find_hf_model(types.SimpleNamespace(_model=DataParallelLike(model))) is model
    with pytest.raises(VtwError, match="lmms-eval model SimpleNamespace holds no Hugging Face model"):
        find_hf_model(types.SimpleNamespace(client="an API model"))


def test_apply_to_wrapper_refuses_a_profile_for_another_model(tmp_path):
    other = types.SimpleNamespace(_model=tiny_llava(num_layers=8))
    with pytest.raises(VtwError, match=r"bundled.yaml was made for another model \(bundled\): config_sha256 profile="):
        apply_to_wrapper(other, BUNDLED_PROFILE)
    with pytest.warns(UserWarning, match="applying layer 4 anyway"):
        handle, profile, _ = apply_to_wrapper(other, BUNDLED_PROFILE, strict=False)
    handle.remove()


def test_apply_to_wrapper_withdraws_the_bundled_model_like_withdraw():
    from vtwcli import withdraw
    from vtwcli.datasets import load_dataset, make_batch
    from vtwcli.loading import load_model

    loaded = load_model(None, device="cpu", dtype="float32")
    inputs = make_batch(loaded.processor, load_dataset("synthetic_color").samples[:2])
    with torch.no_grad(), withdraw(loaded.model, layer=4):
        reference = loaded.model(**inputs).logits[:, -1]
    handle, profile, model = apply_to_wrapper(types.SimpleNamespace(model=loaded.model), BUNDLED_PROFILE)
    try:
        assert model is loaded.model and profile.layer == 4
        with torch.no_grad():
            got = loaded.model(**inputs).logits[:, -1]
    finally:
        handle.remove()
    assert torch.equal(got, reference)
    with torch.no_grad():
        full = loaded.model(**inputs).logits[:, -1]
    assert not torch.equal(full, reference)  # removed: the full model again


def test_the_plugin_package_imports_no_lmms_eval():
    import subprocess

    code = ("import sys, vtwcli.lmms_eval_plugin, vtwcli.lmms_eval_plugin.local_task, vtwcli.benchmarks; "
            "print(sorted(m for m in sys.modules if m.startswith('lmms_eval')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------- local tasks

def test_write_task_and_its_callbacks(tmp_path):
    from vtwcli.datasets import load_dataset, question_text

    name = write_task(tmp_path, "photo_mc")
    assert name == "vtw_photo_mc"
    loader = type("L", (yaml.SafeLoader,), {})
    loader.add_constructor("!function", lambda lo, node: ("function", lo.construct_scalar(node)))
    config = yaml.load((tmp_path / "vtw_photo_mc.yaml").read_text(encoding="utf-8"), Loader=loader)  # noqa: S506
    dataset = load_dataset("photo_mc")
    assert config["task"] == name and config["dataset_path"] == "json"
    assert config["dataset_kwargs"]["data_files"]["test"] == str(Path(dataset.path).resolve())
    assert config["process_results"] == ("function", "vtw_photo_mc_utils.process_results")
    assert (tmp_path / "vtw_photo_mc_utils.py").is_file()

    task = LocalTask(dataset.path)
    sample = dataset.samples[0]
    doc = json.loads(Path(dataset.path).read_text(encoding="utf-8").splitlines()[0])
    assert task.doc_to_text(doc) == question_text(sample)
    assert "Answer with the option's letter." in task.doc_to_text(doc)
    images = task.doc_to_visual(doc)
    assert len(images) == 1 and images[0].mode == "RGB"
    (message,) = task.doc_to_messages(doc)
    assert [item["type"] for item in message["content"]] == ["image", "text"]
    assert task.process_results(doc, [sample.answer]) == {"accuracy": 1.0}
    wrong = next(letter for letter in "ABCD" if letter != sample.answer)
    assert task.process_results(doc, [wrong]) == {"accuracy": 0.0}
    with pytest.raises(VtwError, match="lmms-eval document 'nope' is not in the dataset"):
        task.doc_to_text({"id": "nope"})
