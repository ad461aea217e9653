"""`vtw verify` and `--generic`: passes on every supported family's tiny model, fails (naming the check) on
broken adapters, derives adapters for unlisted architectures and refuses those it cannot handle exactly.

References here are independent of vtwcli.verify: vision token counts from the test's own family facts
(arch_models.Family.vision_ids), plain ``withdraw`` forwards, and the adapter entries the derivation must match.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from arch_models import FAMILIES, family_batch, save_and_serve
from generic_models import LIGHTON, PALIGEMMA, tiny_lighton_ocr, unlisted
from tiny_models import save_tiny_llava, tiny_llava, tiny_processor

from vtwcli import adapters, withdraw
from vtwcli.datasets import load_dataset, sample_dataset
from vtwcli.prompts import make_batch
from vtwcli.generic import derive_adapter
from vtwcli.verify import masked_reference_logits, recompute_reference_logits, tolerance, verify
from vtwcli.withdrawal import exact_layers
from cli_run import run_cli

torch.set_num_threads(1)
LAYERS = 4


@pytest.fixture(autouse=True)
def _no_derived_adapters(monkeypatch):
    """Adapters derived by --generic live for the process: every test starts and ends without any."""
    monkeypatch.setattr(adapters, "DERIVED", {})


@pytest.fixture(scope="module")
def photos():
    return sample_dataset(load_dataset("photo_vqa"), 2, 0)


# ----------------------------------------------------------------------------------------------- verify

@pytest.mark.parametrize("name", ["llava"] + list(FAMILIES))
def test_verify_passes_on_every_supported_family(name, photos):
    if name == "llava":
        model, processor, ids = tiny_llava(LAYERS), tiny_processor(), lambda config: [config.image_token_id]
    else:
        family = FAMILIES[name]
        model, processor, ids = family.build(LAYERS, "sdpa", 0), family.processor(), family.vision_ids
    result = verify(model, processor, photos, new_tokens=2)  # K = 1, 2, 3 where withdrawal can be exact
    assert result.passed, result.failure_message()
    # every tiny model's image features reach layer 0, so the pixel test (not its fallback) located them
    assert "no pixel change reaches layer 0" not in result.checks[0].detail
    adapter = adapters.adapter_for(model)
    exact = exact_layers(adapter, adapter.text_config(model.config), LAYERS)
    assert result.layers == [k for k in (1, 2, 3) if k in exact] and result.layers
    types = adapter.layer_types(adapter.text_config(model.config), LAYERS)
    attention_only = all(kind in ("full_attention", "sliding_attention", "chunked_attention") for kind in types)
    assert result.reference == ("attention masks" if attention_only else "per-row recompute")
    assert [c.name for c in result.checks] == ["vision tokens", "K = L bit-identical"] + [
        f"{check} at K={k}" for k in result.layers for check in ("removed", "reference", "generate")]
    # the counts it reports are the vision tokens the processor inserted (the test's own family facts)
    batch = make_batch(processor, photos)
    expected = torch.isin(batch["input_ids"], torch.tensor(ids(model.config))).sum(1).tolist()
    assert result.checks[0].detail.endswith("per prompt " + ", ".join(
        f"{n} ({n} per image)" for n in expected))
    # not vacuous: withdrawal moves the logits by far more than the tolerance the reference met
    batch = dict(batch)
    batch.pop("labels", None)
    with torch.no_grad():
        full = model(**batch).logits[:, -1]
        with withdraw(model, layer=result.layers[0]):
            withdrawn = model(**batch).logits[:, -1]
    reference = next(c for c in result.checks if c.name == f"reference at K={result.layers[0]}")
    assert (full - withdrawn).abs().max() > 10 * reference.tolerance > reference.max_abs_diff


@pytest.mark.parametrize("name", ["llava_next", "qwen2_vl", "gemma3"])
def test_recompute_reference_equals_masked_reference_and_plain_withdraw(name):
    """The per-row recompute (for recurrent layers) agrees with the masked reference on attention-only
    families: full and sliding layers, 1-D and M-RoPE positions; and both with a plain withdrawn forward."""
    family = FAMILIES[name]
    model = family.build(LAYERS, "eager", 0)
    _, singles = family_batch(family)
    row = singles[0]
    for layer in (1, 3):
        masked = masked_reference_logits(model, row, layer)
        recomputed = recompute_reference_logits(model, row, layer)
        with torch.no_grad(), withdraw(model, layer=layer):
            plain = model(**row).logits[0, -1]
        torch.testing.assert_close(recomputed, masked, atol=1e-5, rtol=0)
        torch.testing.assert_close(plain, masked, atol=1e-5, rtol=0)


def test_tolerance_scales_with_the_dtype():
    logits = torch.tensor([0.5, -20.0])
    assert tolerance(torch.float32, logits) == pytest.approx(20 * 1e-4)
    assert tolerance(torch.bfloat16, logits) == pytest.approx(20 * 5e-2)
    assert tolerance(torch.float16, torch.tensor([0.1])) == pytest.approx(1e-2)  # floor: max(1, |logit|)


def broken(monkeypatch, architecture: str, **changes):
    entry = adapters.adapter_for_architecture(architecture)
    monkeypatch.setattr(adapters, "ADAPTERS", tuple(dataclasses.replace(a, **changes) if a is entry else a
                                                    for a in adapters.ADAPTERS))


def test_verify_fails_on_a_wrong_vision_token_id_naming_the_check(tmp_path, monkeypatch, capsys):
    directory = save_tiny_llava(tmp_path / "model", num_layers=LAYERS)
    code, _, _ = run_cli(["verify", "--model", directory, "--device", "cpu", "--samples", "2", "--layer", "2",
                          "--new-tokens", "1"], capsys)
    assert code == 0
    # the adapter reads the vision id from a config key holding an ordinary text token's id
    broken(monkeypatch, "LlavaForConditionalGeneration", vision_token_id_keys=("pad_token_id",))
    output = tmp_path / "v.yaml"
    code, out, err = run_cli(["verify", "--model", directory, "--device", "cpu", "--samples", "2", "--layer", "2",
                              "--new-tokens", "1", "--output", str(output)], capsys)
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("error: withdrawal is not exact on this model: vision tokens: ")
    assert "FAIL" in out
    record = yaml.safe_load(output.read_text())["verification"]
    assert record["passed"] is False
    failed = {c["name"] for c in record["checks"] if not c["passed"]}
    assert {"vision tokens", "removed at K=2", "reference at K=2"} <= failed
    # vtw check reports the recorded failure (exit 1)
    code, _, err = run_cli(["check", str(output)], capsys)
    assert code == 1 and "verification" in err and "NOT exact" in err


def test_verify_fails_when_the_adapter_withdraws_too_much(monkeypatch, photos):
    """An adapter that also withdraws the delimiters (Qwen2-VL's vision start/end): the removal and reference
    checks see that more than the model's vision positions went."""
    family = FAMILIES["qwen2_vl"]
    model = family.build(LAYERS, "sdpa", 0)
    model.config.extra_token_id = model.config.vision_start_token_id
    broken(monkeypatch, "Qwen2VLForConditionalGeneration",
           vision_token_id_keys=("image_token_id", "video_token_id", "extra_token_id"))
    result = verify(model, family.processor(), photos, layers=[2], new_tokens=1)
    failed = {c.name for c in result.failed}
    assert {"vision tokens", "removed at K=2", "reference at K=2"} <= failed
    assert "mark" in result.checks[0].detail


def test_model_vision_tells_per_image_features_from_constant_vision_side_inputs(photos):
    """The model's own vision positions, against the tests' family facts: Ovis2 puts inputs from its visual
    table at <IMG_ATOM> (per-image features) and at the kept indicators (the same rows for any image); only
    the atoms change with the pixels. LLaVA-NeXT's <image> slots include its constant image_newline ones:
    the vision ids are per token id, so all of them are vision tokens. Gemma 3: all of its slots, by the
    normal path (not the fallback for features that reach only deeper layers)."""
    from arch_models import OVIS_ATOM, OVIS_INDICATORS

    from vtwcli.model_vision import model_vision

    for name, constant_ids in (("ovis2", set(OVIS_INDICATORS)), ("llava_next", set()), ("gemma3", set())):
        family = FAMILIES[name]
        model = family.build(LAYERS, "sdpa", 0)
        batch = dict(make_batch(family.processor(), photos))
        adapter = adapters.adapter_for(model)
        located = model_vision(model, adapter.decoder_layers(model), batch, adapter.pixel_input_keys)
        ids = batch["input_ids"]
        image = torch.isin(ids, torch.tensor(family.vision_ids(model.config)))
        assert located.ids == family.vision_ids(model.config)
        assert not (located.content & ~image).any() and located.content.any(1).all()
        assert not located.deep.any()
        assert {int(i) for i in ids[located.inserted & ~image].tolist()} == constant_ids
        if name == "ovis2":
            assert family.vision_ids(model.config) == [OVIS_ATOM]
            assert torch.equal(located.content, image)  # every atom carries this image's features
        elif name == "llava_next":  # a learned newline after each row of features: on <image> slots, the same
            assert (image & ~located.content).any()  # for any pixels
        else:  # Gemma 3: every image slot carries features (its tiny model has a random, non-zero projection)
            assert torch.equal(located.content, image)


def test_verify_locates_features_that_reach_only_deeper_layers(photos):
    """Granite 4 Vision zeroes its <image> placeholders and adds the features through DeepStack; with no injection
    into layer 0 nothing at the first layer changes with the pixels, and the vision tokens are read off the
    inserted (zeroed) inputs instead: verify still passes, and says so."""
    from transformers import Granite4VisionForConditionalGeneration

    from vtwcli.model_vision import model_vision

    family = FAMILIES["granite4_vision"]
    config = family.build(LAYERS, "sdpa", 0).config
    config.deepstack_layer_map = [(1, 1), (2, 2)]  # vision layer -> LLM layer: none into layer 0
    torch.manual_seed(0)
    model = Granite4VisionForConditionalGeneration(config).eval()
    processor = family.processor()
    batch = dict(make_batch(processor, photos))
    adapter = adapters.adapter_for(model)
    located = model_vision(model, adapter.decoder_layers(model), batch, adapter.pixel_input_keys)
    image = batch["input_ids"] == config.image_token_id
    assert located.deep.all() and not located.content.any() and torch.equal(located.inserted, image)
    result = verify(model, processor, photos, layers=[1, 3], new_tokens=1)
    assert result.passed, result.failure_message()
    assert "2 prompt(s) by the inserted inputs" in result.checks[0].detail


@pytest.mark.parametrize("breakage", ["indicators withdrawn too", "an indicator as the image id"])
def test_verify_fails_on_ovis2_with_a_broken_adapter(breakage, tmp_path, monkeypatch, capsys):
    """Ovis2's indicators take inputs from the vision side but are kept markers: an adapter that withdraws them
    (with the atoms, or instead of them) fails verify, exit 1, naming the vision-token check."""
    import json

    from arch_models import OVIS_INDICATORS

    directory = save_and_serve(FAMILIES["ovis2"], tmp_path / "model", monkeypatch, num_layers=LAYERS)
    args = ["verify", "--model", directory, "--device", "cpu", "--samples", "2", "--layer", "2",
            "--new-tokens", "1", "--json"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config.update({f"indicator_{i}_id": token for i, token in enumerate(OVIS_INDICATORS)})
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    indicators = tuple(f"indicator_{i}_id" for i in range(len(OVIS_INDICATORS)))
    keys = ("image_token_id", *indicators) if breakage == "indicators withdrawn too" else indicators[:1]
    broken(monkeypatch, "Ovis2ForConditionalGeneration", vision_token_id_keys=keys)
    code, out, err = run_cli(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("error: withdrawal is not exact on this model: vision tokens: ")
    checks = {c["name"]: c for c in json_output(out)["checks"]}
    assert not checks["vision tokens"]["passed"]
    expected = "same for any pixels" if breakage == "indicators withdrawn too" else "leave out"
    assert expected in checks["vision tokens"]["detail"]
    assert not checks["removed at K=2"]["passed"] and not checks["reference at K=2"]["passed"]


def test_verify_output_extends_a_profile_of_the_same_model_and_check_reads_it(tmp_path, capsys):
    from vtwcli.profile import load_profile

    directory = save_tiny_llava(tmp_path / "model", num_layers=LAYERS)
    calibration = tmp_path / "cal.yaml"
    code, _, _ = run_cli(["calibrate", "--model", directory, "--dataset", "photo_vqa", "--samples", "2", "--no-eval",
                          "--device", "cpu", "--output", str(calibration), "--threshold", "1e9"], capsys)
    assert code == 0
    before = yaml.safe_load(calibration.read_text())
    code, out, _ = run_cli(["verify", "--model", directory, "--device", "cpu", "--samples", "2", "--layer", "1",
                            "--layer", "3", "--new-tokens", "1", "--output", str(calibration), "--json"], capsys)
    assert code == 0
    after = yaml.safe_load(calibration.read_text())
    assert after["calibration"] == before["calibration"]  # the other sections stay
    import transformers

    import vtwcli
    record = after["verification"]
    assert record["passed"] and record["layers"] == [1, 3] and record["transformers"] == transformers.__version__
    assert record["vtwcli"] == vtwcli.__version__ and record["config_sha256"] == after["model"]["config_sha256"]
    import hashlib

    from safetensors.torch import load_file
    digest = hashlib.sha256()  # the weights as saved, hashed here independently (state_dict order)
    model = tiny_llava(LAYERS)
    saved = load_file(f"{directory}/model.safetensors")
    for key, value in model.state_dict().items():
        tensor = saved.get(key, value).contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    assert record["weights_sha256"] == digest.hexdigest()
    assert load_profile(calibration).verification.checks[0].name == "vision tokens"
    assert json_output(out)["passed"] is True
    code, out, _ = run_cli(["check", str(calibration), "--json"], capsys)
    assert code == 0
    checks = {c["name"]: c for c in json_output(out)["files"][0]["checks"]}
    assert checks["verification"]["status"] == "pass" and "K = 1, 3" in checks["verification"]["detail"]
    # a verification recorded for another config fails the check
    after["verification"]["config_sha256"] = "0" * 64
    calibration.write_text(yaml.safe_dump(after))
    code, _, err = run_cli(["check", str(calibration)], capsys)
    assert code == 1 and "verification.config_sha256" in err


def json_output(text: str) -> dict:
    import json

    return json.loads(text)


# ---------------------------------------------------------------------------------------------- generic

def test_generic_verifies_and_supports_an_unlisted_family(tmp_path, monkeypatch, capsys):
    unlisted(monkeypatch, "LightOnOcrForConditionalGeneration")
    directory = save_and_serve(LIGHTON, tmp_path / "model", monkeypatch, num_layers=LAYERS)
    code, _, err = run_cli(["verify", "--model", directory, "--device", "cpu", "--samples", "2"], capsys)
    assert code == 2 and "has no vtwcli adapter" in err
    output = tmp_path / "v.yaml"
    code, out, err = run_cli(["verify", "--model", directory, "--device", "cpu", "--samples", "2", "--generic",
                              "--output", str(output)], capsys)
    assert code == 0, err
    record = yaml.safe_load(output.read_text())["verification"]
    assert record["passed"] and record["adapter"]["derived"] is True and record["layers"] == [1, 2, 3]
    assert "model.language_model.layers" in record["adapter"]["notes"]
    # the derived adapter then withdraws exactly: a plain withdraw() forward equals the masked reference
    model = tiny_lighton_ocr(LAYERS)
    adapters.DERIVED[type(model).__name__] = derive_adapter(model)
    _, singles = family_batch(LIGHTON)
    with torch.no_grad(), withdraw(model, layer=2):
        got = model(**singles[0]).logits[0, -1]
    torch.testing.assert_close(got, masked_reference_logits(model, singles[0], 2), atol=1e-5, rtol=0)


def test_generic_calibrate_and_profile_verify_first(tmp_path, monkeypatch, capsys):
    unlisted(monkeypatch, "LightOnOcrForConditionalGeneration")
    directory = save_and_serve(LIGHTON, tmp_path / "model", monkeypatch, num_layers=LAYERS)
    output = tmp_path / "cal.yaml"
    code, _, err = run_cli(["calibrate", "--model", directory, "--device", "cpu", "--samples", "2", "--no-eval",
                            "--dataset", "photo_vqa", "--generic", "--output", str(output), "--threshold", "1e9"],
                           capsys)
    assert code == 0, err
    profile = yaml.safe_load(output.read_text())
    assert profile["model"]["architecture"] == "LightOnOcrForConditionalGeneration"
    assert profile["verification"]["passed"] is True and profile["verification"]["adapter"]["derived"] is True
    code, out, err = run_cli(["profile", "--model", directory, "--device", "cpu", "--layer", "2", "--generic",
                              "--json", "--image-size", "32x32", "--min-runs", "1", "--min-time", "0",
                              "--max-time", "0", "--warmup", "0", "--new-tokens", "2"], capsys)
    assert code == 0, err
    sections = json_output(out)
    assert sections["verification"]["passed"] is True
    assert sections["flops"]["withdrawn"]["language_model"] < sections["flops"]["baseline"]["language_model"]
    code, _, err = run_cli(["profile", "--model", directory, "--layer", "2", "--generic", "--flops-only"], capsys)
    assert code == 2 and "drop --flops-only" in err


def test_generic_refuses_a_prefix_lm_it_cannot_handle_exactly(tmp_path, monkeypatch, capsys):
    unlisted(monkeypatch, "PaliGemmaForConditionalGeneration")
    directory = save_and_serve(PALIGEMMA, tmp_path / "model", monkeypatch, num_layers=LAYERS)
    code, out, err = run_cli(["verify", "--model", directory, "--device", "cpu", "--samples", "2", "--generic",
                              "--layer", "1"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("error: --generic: PaliGemmaForConditionalGeneration cannot be handled exactly with "
                               "a derived adapter: reference at K=1: max |logit difference|")
    assert not adapters.DERIVED  # nothing stays registered
    code, _, err = run_cli(["calibrate", "--model", directory, "--device", "cpu", "--samples", "2", "--no-eval",
                            "--dataset", "photo_vqa", "--generic", "--output", str(tmp_path / "c.yaml")], capsys)
    assert code == 1 and "cannot be handled exactly" in err and not (tmp_path / "c.yaml").exists()


def test_derived_adapter_matches_the_entry_it_replaces(monkeypatch, photos):
    """With the LLaVA-NeXT and Gemma 3 entries removed, the derivation finds the same layers, norm, ids and
    layer types, and verify passes with it."""
    for name in ("llava_next", "gemma3"):
        family = FAMILIES[name]
        model = family.build(LAYERS, "sdpa", 0)
        entry = adapters.adapter_for(model)
        monkeypatch.setattr(adapters, "ADAPTERS", tuple(a for a in adapters.ADAPTERS if a is not entry))
        derived = derive_adapter(model)
        assert derived.decoder_layers(model) is entry.decoder_layers(model)
        assert derived.final_norm(model) is entry.final_norm(model)
        assert derived.vision_token_ids(model.config) == entry.vision_token_ids(model.config)
        text_config = derived.text_config(model.config)
        assert derived.layer_types(text_config, LAYERS) == entry.layer_types(entry.text_config(model.config), LAYERS)
        adapters.DERIVED[type(model).__name__] = derived
        assert verify(model, family.processor(), photos, layers=[1, 3], new_tokens=1).passed
        monkeypatch.undo()
        monkeypatch.setattr(adapters, "DERIVED", {})


def test_derivation_names_what_is_missing():
    from vtwcli.errors import UnsupportedError

    model = tiny_llava(LAYERS)
    model.config.image_token_id = None
    with pytest.raises(UnsupportedError, match="config names no vision token id"):
        derive_adapter(model)
    model = tiny_llava(LAYERS)
    model.model.language_model.norm = None
    with pytest.raises(UnsupportedError, match="has no standard text decoder"):
        derive_adapter(model)


@pytest.mark.parametrize("name", ["gemma3", "qwen2_vl"])
def test_verify_passes_with_eager_attention(name, photos):
    """Eager attention adds the explicit float masks of the reference itself (sdpa takes them as given)."""
    family = FAMILIES[name]
    result = verify(family.build(LAYERS, "eager", 0), family.processor(), photos, layers=[1, 3], new_tokens=1)
    assert result.passed, result.failure_message()


def test_verify_in_bfloat16_uses_the_bfloat16_tolerance_and_still_catches_a_wrong_id(photos, monkeypatch):
    model, processor = tiny_llava(LAYERS).to(torch.bfloat16), tiny_processor()
    result = verify(model, processor, photos, layers=[1, 2], new_tokens=1)
    assert result.passed, result.failure_message()
    reference = next(c for c in result.checks if c.name == "reference at K=1")
    assert reference.tolerance >= 5e-2  # bfloat16's floor: 5e-2 x max(1, |logit|)
    broken(monkeypatch, "LlavaForConditionalGeneration", vision_token_id_keys=("pad_token_id",))
    assert not verify(model, processor, photos, layers=[1], new_tokens=1).passed


@pytest.mark.parametrize("name", ["qwen2_vl", "llava_onevision"])
def test_verify_counts_and_withdraws_video_tokens(name, tmp_path):
    """Prompts with an image and a video: the video tokens are vision tokens too. One prompt per batch: the
    stand-in processors draw their random video pixels per call, so a row alone would get other pixels."""
    from test_architectures import write_video_dataset

    family = FAMILIES[name]
    samples = load_dataset(write_video_dataset(tmp_path)).samples
    model, processor = family.build(LAYERS, "sdpa", 0), family.processor()
    result = verify(model, processor, samples, layers=[1, 3], new_tokens=1, batch_size=1)
    assert result.passed, result.failure_message()
    counts = [int(torch.isin(make_batch(processor, [s])["input_ids"], torch.tensor(family.vision_ids(model.config)))
                  .sum()) for s in samples]
    assert result.checks[0].detail.endswith("per prompt " + ", ".join(map(str, counts)))
    assert all(int((make_batch(processor, [s])["input_ids"] == model.config.video_token_id).sum()) > 0 for s in samples)


def test_verify_checks_only_the_k_that_can_be_exact_with_kv_sharing(photos):
    """Gemma 4 with KV sharing (layer 3 reads layer 2's keys/values): K = 3 cannot be exact, so verify leaves it
    out of its defaults and refuses it when asked, in withdraw's own words."""
    from vtwcli.errors import UnsupportedError
    from vtwcli.verify import layers_to_check

    family = FAMILIES["gemma4"]
    model = family.build(LAYERS, "sdpa", 0)
    adapter = adapters.adapter_for(model)
    assert adapter.shared_kv_layers(adapter.text_config(model.config), LAYERS) == {3: 2}
    assert layers_to_check(model) == [1, 2]
    with pytest.raises(UnsupportedError, match="withdrawal at layer 3 cannot be exact on this model"):
        verify(model, family.processor(), photos, layers=[3], new_tokens=1)


def test_verify_fails_without_the_deepstack_trim(monkeypatch, photos):
    """Qwen3-VL's adapter hands the language model only the DeepStack injections of layers <= K; without that
    trim the withdrawn forward breaks at K <= 3 and verify names the check (exit 1 on the command line)."""
    family = next(f for f in FAMILIES.values() if f.architecture == "Qwen3VLForConditionalGeneration")
    model, processor = family.build(LAYERS, "sdpa", 0), family.processor()
    assert verify(model, processor, photos, layers=[1], new_tokens=1).passed
    broken(monkeypatch, "Qwen3VLForConditionalGeneration", deepstack=None)
    result = verify(model, processor, photos, layers=[1], new_tokens=1)
    assert not result.passed
    assert {"removed at K=1", "reference at K=1"} <= {c.name for c in result.failed}
