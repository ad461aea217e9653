"""End to end through lmms-eval 0.7: the `vtw` plugin model and `vtw eval`, offline, on the bundled model.

Run by the optional CI job `.ci/lmms-eval` (`python -m pytest tests/lmms_eval_e2e.py`); the name does not
match `test_*.py`, so the default suite (which has no lmms-eval) does not collect it. Each lmms-eval run
takes about a minute on the build machine, most of it lmms-eval's start-up.

The reference is vtwcli's own evaluation of the same samples: ``greedy_answers`` (batch size 1, the task's
max_new_tokens, withdrawn with ``withdraw(model, layer=K)``) scored by ``score_answer``. lmms-eval must
report the same accuracy, and give the same answer to every document.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lmms_eval")

from vtwcli import bundled_model_path  # noqa: E402
from vtwcli.calibration import greedy_answers  # noqa: E402
from vtwcli.cli import main  # noqa: E402
from vtwcli.datasets import load_dataset, score_answer  # noqa: E402
from vtwcli.lmms_eval_plugin.local_task import DEFAULT_MAX_NEW_TOKENS, write_task  # noqa: E402
from vtwcli.loading import load_model  # noqa: E402
from vtwcli.profile import read_profile_dict, write_profile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_PROFILE = ROOT / "profiles" / "bundled.yaml"
DATASETS = ("synthetic_color", "synthetic_count", "synthetic_position", "synthetic_shape")
# llava_hf's default device_map "" is refused by transformers 5; the base model's own args say cpu.
BASE_ARGS = f"pretrained={bundled_model_path()},device_map=cpu"


@pytest.fixture(scope="module")
def vtw_answers():
    """answers[(dataset, K or None)] = vtwcli's greedy answers on every sample of the bundled dataset."""
    loaded = load_model(None, device="cpu", dtype="float32")
    cache = {}

    def answers(dataset: str, layer: int | None) -> list[str]:
        if (dataset, layer) not in cache:
            samples = load_dataset(dataset).samples
            cache[dataset, layer] = greedy_answers(loaded.model, loaded.processor, samples, batch_size=1,
                                                   max_new_tokens=DEFAULT_MAX_NEW_TOKENS, layer=layer)
        return cache[dataset, layer]

    return answers


def vtw_accuracy(dataset: str, answers: list[str]) -> float:
    samples = load_dataset(dataset).samples
    return sum(score_answer(a, s) for a, s in zip(answers, samples)) / len(samples)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def lmms_answers(run_dir: Path, task: str) -> dict[int, str]:
    """doc_id -> the answer lmms-eval logged for ``task`` under ``run_dir``."""
    (path,) = run_dir.rglob(f"*_samples_{task}.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {row["doc_id"]: row["filtered_resps"] for row in rows}


def same_answers(logged: dict[int, str], reference: list[str]) -> None:
    assert sorted(logged) == list(range(len(reference)))
    different = {i: (logged[i], reference[i].strip()) for i in logged if logged[i].strip() != reference[i].strip()}
    assert not different, different


def vtw_eval(profile: Path, work: Path, capsys, *datasets: str) -> tuple[int, str, str]:
    args = ["eval", str(profile), "--model", "llava_hf", "--model-args", BASE_ARGS, "--device", "cpu",
            "--work-dir", str(work)]
    for name in datasets:
        args += ["--dataset", name]
    return run_cli(args, capsys)


def test_vtw_eval_on_the_bundled_profile_matches_vtw_accuracy(tmp_path, capsys, vtw_answers):
    profile = tmp_path / "bundled.yaml"
    profile.write_text(BUNDLED_PROFILE.read_text(encoding="utf-8"), encoding="utf-8")
    code, out, err = vtw_eval(profile, tmp_path / "work", capsys, *DATASETS)
    assert code == 0, err + out
    layer = read_profile_dict(BUNDLED_PROFILE)["calibration"]["layer"]
    entries = {e["task"]: e for e in read_profile_dict(profile)["evaluation"]["benchmarks"]}
    assert sorted(entries) == sorted(f"vtw_{name}" for name in DATASETS)
    for name in DATASETS:
        entry = entries[f"vtw_{name}"]
        full, withdrawn = vtw_answers(name, None), vtw_answers(name, layer)
        assert entry["metric"] == "accuracy,none"
        assert entry["samples"] == len(load_dataset(name).samples) == 40
        assert entry["layer"] == layer
        assert entry["lmms_eval"] == "0.7.3"
        assert entry["full"] == pytest.approx(vtw_accuracy(name, full), abs=1e-12)
        assert entry["withdrawn"] == pytest.approx(vtw_accuracy(name, withdrawn), abs=1e-12)
        same_answers(lmms_answers(tmp_path / "work" / "full", f"vtw_{name}"), full)
        same_answers(lmms_answers(tmp_path / "work" / "withdrawn", f"vtw_{name}"), withdrawn)
    # The rest of the profile is untouched, and the gate reads the new section.
    before, after = read_profile_dict(BUNDLED_PROFILE), read_profile_dict(profile)
    assert {k: v for k, v in after.items() if k != "evaluation"} == {k: v for k, v in before.items()
                                                                       if k != "evaluation"}
    assert after["evaluation"]["baseline"] == before["evaluation"]["baseline"]
    worst = max((e["full"] - e["withdrawn"]) * 100 for e in entries.values())
    assert run_cli(["check", str(profile), "--max-accuracy-drop", str(max(worst, 0) + 0.01)], capsys)[0] == 0
    if worst > 0:
        assert run_cli(["check", str(profile), "--max-accuracy-drop", str(worst - 0.01)], capsys)[0] == 1


def test_a_profile_at_layer_1_changes_the_answers_lmms_eval_sees(tmp_path, capsys, vtw_answers):
    """K = 1 withdraws the image before the model has read it: accuracy collapses, in lmms-eval as in vtw."""
    data = read_profile_dict(BUNDLED_PROFILE)
    data = {key: value for key, value in data.items() if key not in ("calibration", "evaluation", "flops",
                                                                       "latency", "memory")}
    data["withdrawal"] = {"layer": 1}
    profile = write_profile(data, tmp_path / "layer1.yaml")
    code, out, err = vtw_eval(profile, tmp_path / "work", capsys, "synthetic_color")
    assert code == 0, err + out
    (entry,) = read_profile_dict(profile)["evaluation"]["benchmarks"]
    full, withdrawn = vtw_answers("synthetic_color", None), vtw_answers("synthetic_color", 1)
    assert entry["layer"] == 1
    assert entry["withdrawn"] == pytest.approx(vtw_accuracy("synthetic_color", withdrawn), abs=1e-12)
    assert entry["full"] == pytest.approx(vtw_accuracy("synthetic_color", full), abs=1e-12)
    assert entry["full"] - entry["withdrawn"] > 0.3
    same_answers(lmms_answers(tmp_path / "work" / "withdrawn", "vtw_synthetic_color"), withdrawn)


def test_the_simple_class_and_what_lmms_eval_records(tmp_path, vtw_answers):
    """`lmms-eval --model vtw --force_simple` wraps llava_hf's simple class; the results name the profile and K."""
    tasks = tmp_path / "tasks"
    task = write_task(tasks, "synthetic_shape")
    command = [sys.executable, "-m", "lmms_eval", "--model", "vtw", "--force_simple", "--model_args",
               f"base=llava_hf,profile={BUNDLED_PROFILE},{BASE_ARGS}", "--tasks", task, "--include_path", str(tasks),
               "--device", "cpu", "--output_path", str(tmp_path / "out"), "--log_samples"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    layer = read_profile_dict(BUNDLED_PROFILE)["calibration"]["layer"]
    assert f"vtw: profile {BUNDLED_PROFILE} applied to llava_hf (LlavaForConditionalGeneration): vision tokens " \
           f"withdrawn at layer K = {layer} of 8" in done.stdout + done.stderr
    (results_file,) = (tmp_path / "out").rglob("*_results.json")
    results = json.loads(results_file.read_text(encoding="utf-8"))
    assert results["config"]["model_backend"] == "vtwcli.lmms_eval_plugin.model.Vtw (simple)"
    assert f"profile={BUNDLED_PROFILE}" in results["config"]["model_args"]
    assert results["throughput"]["avg_vtw_layer"] == layer
    reference = vtw_answers("synthetic_shape", layer)
    assert results["results"][task]["accuracy,none"] == pytest.approx(vtw_accuracy("synthetic_shape", reference),
                                                                      abs=1e-12)
    same_answers(lmms_answers(tmp_path / "out", task), reference)


def test_a_profile_for_another_model_is_refused_inside_lmms_eval(tmp_path, capsys):
    data = read_profile_dict(BUNDLED_PROFILE)
    data["model"]["config_sha256"] = "0" * 64
    profile = write_profile(data, tmp_path / "other.yaml")
    code, _, err = vtw_eval(profile, tmp_path / "work", capsys, "synthetic_color")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "lmms-eval with the profile (K = 4) failed" in lines[0]
    assert "was made for another model (bundled): config_sha256 profile=0000" in lines[0]
    assert yaml.safe_load(profile.read_text(encoding="utf-8"))["model"]["config_sha256"] == "0" * 64
    assert "benchmarks" not in (read_profile_dict(profile).get("evaluation") or {})


# lmms-eval's transformers-based wrappers of the families vtwcli supports: (tiny family, lmms-eval model, whether
# lmms-eval has a chat class for it). `huggingface` (chat, generic) is left out: for Idefics3 / SmolVLM it
# loads the bare Idefics3Model, which has no output head to withdraw for.
WRAPPERS = [("llava_next", "llava_hf", True), ("llava_onevision", "llava_hf", True), ("qwen2_vl", "qwen2_vl", False),
            ("qwen2_5_vl", "qwen2_5_vl", True), ("gemma3", "gemma3", False), ("mistral3", "mistral3_vl", False),
            ("internvl", "internvl_hf", True)]


@pytest.mark.parametrize("chat", [False, True], ids=["simple", "chat"])
@pytest.mark.parametrize("family,base,has_chat", WRAPPERS, ids=[f"{f}-{b}" for f, b, _ in WRAPPERS])
def test_the_plugin_wraps_each_wrapper_of_our_families(tmp_path_factory, family, base, has_chat, chat):
    """The vtw model builds each lmms-eval wrapper (tiny models of the family, saved with their real processors)
    and withdraws inside the Hugging Face model it holds: its logits equal a plain withdraw() at the same K."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import arch_models
    from vtwcli import withdraw
    from vtwcli.lmms_eval_plugin.model import Vtw, VtwChat
    from vtwcli.loading import model_section
    from vtwcli.profile import new_profile

    assert arch_models.HAS_TORCHVISION
    spec = arch_models.FAMILIES[family]
    directory = tmp_path_factory.mktemp(family)
    arch_models.save_family(spec, directory)
    loaded = load_model(str(directory), device="cpu", dtype="float32")
    data = new_profile(model_section(loaded), "cpu")
    data["withdrawal"] = {"layer": 2}
    profile = write_profile(data, directory / "profile.yaml")

    wrapper = (VtwChat if chat else Vtw)(base=base, profile=str(profile), pretrained=str(directory), device="cpu",
                                         device_map="cpu")
    assert wrapper.vtw_layer == 2
    # lmms-eval's own choice: the chat class where it has one (or when --force_simple finds no simple class).
    assert wrapper.is_simple == (not (chat and has_chat) and base != "internvl_hf")
    model = wrapper.model
    assert type(model).__name__ == spec.architecture
    model.float()
    inputs, _ = arch_models.family_batch(spec)  # the family's test batch: several images, left padding
    with torch.no_grad():
        hooked = model(**inputs).logits[:, -1]
    wrapper._handle.remove()
    with torch.no_grad(), withdraw(model, layer=2):
        reference = model(**inputs).logits[:, -1]
    with torch.no_grad():
        full = model(**inputs).logits[:, -1]
    assert torch.equal(hooked, reference)
    assert not torch.equal(full, reference)
