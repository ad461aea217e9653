"""The exactness suite of LLaVA-1.5, on every other supported family (tiny random configs, arch_models.py).

References are independent of the hooks: a row alone, no cache, no padding, layer by layer from the paper's
definition, with explicit float masks. The only thing taken from the model is what enters layer 0 and the
rotary tables each layer receives in an ordinary (unwithdrawn) forward of that row.
"""

from __future__ import annotations

import pytest
import torch
from arch_models import FAMILIES, family_batch, save_and_serve
from tiny_models import image_prompt, left_padded_batch, pixel_values, tiny_llava

from vtwcli import withdraw
from vtwcli.adapters import ADAPTERS, PLANNED, adapter_for, supported_architectures
from vtwcli.calibration import shared_prefix_kl

ATTN = ["eager", "sdpa"]
LAYERS = 4
NAMES = list(FAMILIES)


def explicit_mask(n: int, dtype, *, window: int | None = None, blocks: torch.Tensor | None = None) -> torch.Tensor:
    """Float mask (1, 1, n, n): causal; OR same image block (bidirectional); AND inside the sliding window."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    allowed = j <= i
    if blocks is not None:
        allowed |= (blocks[:, None] == blocks[None, :]) & (blocks[:, None] >= 0)
    if window is not None:
        allowed &= i - j < window
    mask = torch.zeros(n, n, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


@torch.no_grad()
def naive_withdrawn_logits(model, family, row: dict, layer: int) -> torch.Tensor:
    """Next-token logits of one unpadded row withdrawn at ``layer``, written out layer by layer."""
    text_model = getattr(model.model, "language_model", None) or model.model.text_model
    layers = text_model.layers
    text_config = model.config.text_config
    types = getattr(text_config, "layer_types", None) or ["full_attention"] * len(layers)
    seen = {}

    def capture(i):
        def hook(module, args, kwargs):
            seen[i] = (args[0] if args else kwargs["hidden_states"], kwargs.get("position_embeddings"),
                       kwargs.get("position_ids"))
        return hook

    hooks = [decoder_layer.register_forward_pre_hook(capture(i), with_kwargs=True) for i, decoder_layer in enumerate(layers)]
    try:
        model(**row)
    finally:
        for hook in hooks:
            hook.remove()
    ids = row["input_ids"][0]
    vision = torch.isin(ids, torch.tensor(family.vision_ids(model.config)))
    keep = (~vision).nonzero().squeeze(1)
    blocks = family.image_blocks(ids, model.config)
    hidden = seen[0][0]
    for i, decoder_layer in enumerate(layers):
        _, (cos, sin), positions = seen[i]
        if i >= layer:  # withdrawn: only the kept tokens, at their original positions, plain causal over them
            if i == layer:
                hidden = hidden[:, keep]
            cos, sin = cos[:, keep], sin[:, keep]
            positions = None if positions is None else positions[..., keep]
        window = text_config.sliding_window if types[i] == "sliding_attention" else None
        mask = explicit_mask(hidden.shape[1], hidden.dtype, window=window, blocks=blocks if i < layer else None)
        hidden = decoder_layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), position_ids=positions)
    return model.get_output_embeddings()(text_model.norm(hidden))[0, -1]


_MODELS: dict = {}


def model_of(name: str, attn: str, layers: int = LAYERS):
    key = (name, attn, layers)
    if key not in _MODELS:
        _MODELS[key] = FAMILIES[name].build(layers, attn, 0)
    return _MODELS[key]


_BATCHES: dict = {}


def batch_of(name: str):
    if name not in _BATCHES:
        _BATCHES[name] = family_batch(FAMILIES[name])
    return _BATCHES[name]


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", NAMES)
def test_layer_L_is_bit_identical(name, attn):
    model = model_of(name, attn)
    batch, _ = batch_of(name)
    with torch.no_grad():
        reference = model(**batch).logits
        with withdraw(model, layer=LAYERS):
            withdrawn = model(**batch).logits
    assert torch.equal(reference, withdrawn)


@pytest.mark.parametrize("layer", [1, 2, 3])
@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", NAMES)
def test_batched_padded_prefill_matches_naive_per_row(name, attn, layer):
    model = model_of(name, attn)
    batch, singles = batch_of(name)
    vision = torch.isin(batch["input_ids"], torch.tensor(FAMILIES[name].vision_ids(model.config)))
    counts = vision.sum(1)
    assert counts[0] != counts[1]  # rows carry different numbers of vision tokens
    with torch.no_grad(), withdraw(model, layer=layer):
        logits = model(**batch).logits[:, -1]
    for row, single in enumerate(singles):
        expected = naive_withdrawn_logits(model, FAMILIES[name], single, layer)
        torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=0)
    with torch.no_grad():
        full = model(**batch).logits[:, -1]
    assert (full - logits).abs().max() > 1e-3  # withdrawal changes the answer: the test is not vacuous


def _extend(inputs: dict, new_tokens: torch.Tensor) -> dict:
    """Append generated tokens: input_ids, the mask, and zeros (text) to every other per-token tensor."""
    out = dict(inputs)
    width = inputs["input_ids"].shape[1]
    for key, value in inputs.items():
        if key == "input_ids":
            out[key] = torch.cat([value, new_tokens], dim=1)
        elif key == "attention_mask":
            out[key] = torch.cat([value, torch.ones_like(new_tokens)], dim=1)
        elif isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == (new_tokens.shape[0], width):
            out[key] = torch.cat([value, torch.zeros_like(new_tokens, dtype=value.dtype)], dim=1)
    return out


def no_cache_logits(model, inputs: dict) -> torch.Tensor:
    """Last-position logits of a no-cache forward, positions numbered as generate() numbers them."""
    kwargs = dict(inputs)
    if adapter_for(model).positions_from_mask:
        mask = inputs["attention_mask"]
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    logits = model(**kwargs, use_cache=False).logits[:, -1]
    logits[:, model.generation_config.suppress_tokens] = -float("inf")
    return logits


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", NAMES)
def test_cached_greedy_generate_equals_no_cache_recompute(name, attn, cache_implementation):
    batch, _ = batch_of(name)
    assert_greedy_generate_equals_recompute(model_of(name, attn), batch, cache_implementation=cache_implementation)


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("name", NAMES)
def test_unpadded_row_generate_equals_no_cache_recompute(name, cache_implementation):
    """One row, no padding: generate() drops the all-ones mask, and with a dynamic cache the decode steps of
    layers >= K run without a mask (the model's own choice for sdpa); both stay exact."""
    _, singles = batch_of(name)
    row = dict(singles[1])
    row.setdefault("attention_mask", torch.ones_like(row["input_ids"]))
    assert_greedy_generate_equals_recompute(model_of(name, "sdpa"), row, cache_implementation=cache_implementation)


def assert_greedy_generate_equals_recompute(model, inputs: dict, **generate_kwargs):
    """Greedy generate() withdrawn at K = 2: every step's scores equal a no-cache recompute; returns the output."""
    new_tokens = 4
    with torch.no_grad(), withdraw(model, layer=2):
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, **generate_kwargs)
        running = dict(inputs)
        for step in range(new_tokens):
            logits = no_cache_logits(model, running)
            torch.testing.assert_close(out.scores[step], logits, atol=1e-4, rtol=0)
            running = _extend(running, logits.argmax(-1, keepdim=True))
    assert torch.equal(out.sequences, running["input_ids"])
    return out


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", NAMES)
def test_sampling_generate_equals_no_cache_recompute(name, attn):
    """Seeded multinomial sampling: generate() with the cache draws what a no-cache recompute draws."""
    model = model_of(name, attn)
    batch, _ = batch_of(name)
    new_tokens = 4
    with torch.no_grad(), withdraw(model, layer=2):
        torch.manual_seed(321)
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, top_k=0,
                             top_p=1.0, temperature=1.0)
        torch.manual_seed(321)
        running = dict(batch)
        for _ in range(new_tokens):
            logits = no_cache_logits(model, running)
            running = _extend(running, torch.multinomial(logits.float().softmax(-1), num_samples=1))
    assert torch.equal(out, running["input_ids"])


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("name", NAMES)
def test_beam_search_cached_equals_uncached(name, cache_implementation):
    """Beam search reorders the (withdrawn, shorter) cache every step: cached == recomputed without a cache."""
    model = model_of(name, "sdpa")
    batch, _ = batch_of(name)
    kwargs = dict(batch, max_new_tokens=4, min_new_tokens=4, num_beams=3, do_sample=False, output_scores=True,
                  return_dict_in_generate=True)
    with torch.no_grad(), withdraw(model, layer=2):
        cached = model.generate(**kwargs, cache_implementation=cache_implementation)
        uncached = model.generate(**kwargs, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=1e-4, rtol=0)


def independent_kl(p_logits, q_logits):
    p = torch.softmax(p_logits.double(), -1)
    return (p * (torch.log(p) - torch.log_softmax(q_logits.double(), -1))).sum(-1)


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", NAMES)
def test_shared_prefix_kl_equals_plain_withdrawn_forward(name, attn):
    model = model_of(name, attn, layers=6)
    batch, _ = batch_of(name)
    layers = list(range(1, 7))
    fast = shared_prefix_kl(model, batch, layers).kl
    plain = dict(batch)
    if adapter_for(model).positions_from_mask:  # what shared_prefix_kl does: positions as generate() numbers them
        plain["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        full = model(**plain).logits[:, -1]
        for column, k in enumerate(layers):
            with withdraw(model, layer=k):
                withdrawn = model(**plain).logits[:, -1]
            torch.testing.assert_close(fast[:, column], independent_kl(withdrawn, full).float(), atol=1e-5, rtol=0)
    assert fast[:, :-1].min() > 0
    assert torch.equal(fast[:, -1], torch.zeros(len(fast)))


# ---------------------------------------------------------------------------------------------------------
# Video (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision): video tokens are withdrawn too, or kept with kinds=("image",)


def video_row(name: str):
    """One prompt with an image and a video. With torchvision, the family's real processor on 4 frames of
    16x16; without, the stand-in (its video is random features of the model's video input shape)."""
    import numpy as np
    from arch_models import HAS_TORCHVISION, QWEN_SPECIALS, QwenInputs, image, llava_onevision_processor, word_tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    frames = np.random.default_rng(9).integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    if name == "llava_onevision":
        text = "USER: describe <image>\nand <video>\nthis video ?\nASSISTANT:"
        if HAS_TORCHVISION:
            return llava_onevision_processor()(text=[text], images=[[image(24, 16, 5)]], videos=[frames],
                                               return_tensors="pt")
        return llava_onevision_processor()([text], images=[[image(24, 16, 5)]], videos=[1])
    if HAS_TORCHVISION:
        image_pad, video_pad = "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
        text = f"<|im_start|>user\ndescribe {image_pad} and {video_pad} this video ?<|im_end|>\n<|im_start|>assistant\n"
        return FAMILIES[name].processor()(text=[text], images=[[image(24, 16, 5)]], videos=[frames],
                                          return_tensors="pt")
    processor = QwenInputs(Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                                    size={"shortest_edge": 64, "longest_edge": 1024}),
                           word_tokenizer(QWEN_SPECIALS))
    image_pad, video_pad = "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
    text = f"<|im_start|>user\ndescribe {image_pad} and {video_pad} this video ?<|im_end|>\n<|im_start|>assistant\n"
    return processor([text], images=[[image(24, 16, 5)]], videos=[1])


class ImagesOnly:
    """Reference family for kinds=("image",): video tokens stay."""
    vision_ids = staticmethod(lambda config: [config.image_token_id])
    image_blocks = staticmethod(lambda ids, config: None)


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "llava_onevision"])
def test_video_tokens_are_withdrawn(name, attn):
    model = model_of(name, attn)
    row = dict(video_row(name))
    ids = row["input_ids"]
    assert (ids == model.config.video_token_id).sum() > 0 and (ids == model.config.image_token_id).sum() > 0
    with torch.no_grad():
        with withdraw(model, layer=2):
            both = model(**row).logits[0, -1]
        with withdraw(model, layer=2, kinds=("image",)):
            images_only = model(**row).logits[0, -1]
        with withdraw(model, layer=2, kinds=("video",)):
            videos_only = model(**row).logits[0, -1]
    torch.testing.assert_close(both, naive_withdrawn_logits(model, FAMILIES[name], row, 2), atol=1e-4, rtol=0)
    torch.testing.assert_close(images_only, naive_withdrawn_logits(model, ImagesOnly, row, 2), atol=1e-4, rtol=0)
    assert (both - images_only).abs().max() > 1e-3 and (both - videos_only).abs().max() > 1e-3


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "llava_onevision"])
def test_generate_with_video_equals_no_cache_recompute(name, attn):
    """A prompt with an image and a video: cached greedy generate() (both kinds withdrawn) == no-cache recompute."""
    model = model_of(name, attn)
    row = dict(video_row(name))
    row.setdefault("attention_mask", torch.ones_like(row["input_ids"]))
    out = assert_greedy_generate_equals_recompute(model, row)
    with torch.no_grad():
        unwithdrawn = model.generate(**row, max_new_tokens=1, do_sample=False, output_scores=True,
                                     return_dict_in_generate=True)
    finite = out.scores[0].isfinite()  # suppressed tokens are -inf in both
    assert (unwithdrawn.scores[0] - out.scores[0])[finite].abs().max() > 1e-3  # withdrawal changed the answer


# ---------------------------------------------------------------------------------------------------------
# Layers placed by accelerate hooks (device_map / offload) keep withdrawal exact


def test_dispatched_model_with_offloaded_layers_is_exact():
    from accelerate import dispatch_model

    rows = [image_prompt([1, 7, 8], 2, [9, 10, 11, 12]), image_prompt([1, 7], 1, [13, 14])]
    ids, mask = left_padded_batch(rows)
    pixels = pixel_values(3)
    kwargs = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    with torch.no_grad():
        plain = tiny_llava(LAYERS, "sdpa")
        with withdraw(plain, layer=2):
            expected = plain(**kwargs).logits
            expected_generate = plain.generate(**kwargs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        dispatched = tiny_llava(LAYERS, "sdpa")
        # Half the decoder layers offloaded: their weights live elsewhere and accelerate's hooks move them (and
        # the layer's inputs) at call time; the rest runs on the main device.
        device_map = {"model.vision_tower": "cpu", "model.multi_modal_projector": "cpu",
                      "model.language_model.embed_tokens": "cpu", "model.language_model.norm": "cpu",
                      "model.language_model.rotary_emb": "cpu", "lm_head": "cpu",
                      **{f"model.language_model.layers.{i}": ("cpu" if i < LAYERS // 2 else "disk")
                         for i in range(LAYERS)}}
        import tempfile

        with tempfile.TemporaryDirectory() as offload:
            dispatch_model(dispatched, device_map=device_map, main_device="cpu", offload_dir=offload)
            assert hasattr(dispatched.model.language_model.layers[LAYERS - 1], "_hf_hook")
            with withdraw(dispatched, layer=2):
                got = dispatched(**kwargs).logits
                got_generate = dispatched.generate(**kwargs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert torch.equal(got_generate, expected_generate)


# ---------------------------------------------------------------------------------------------------------
# The family list and `vtw calibrate` end to end on saved tiny models


def test_every_tested_family_is_supported_and_listed():
    supported = set(supported_architectures())
    for family in FAMILIES.values():
        assert family.architecture in supported
        assert adapter_for(model_of(next(k for k, f in FAMILIES.items() if f is family), "sdpa")).family
    planned = {c.strip() for classes in PLANNED.values() for c in classes.split(",")}
    assert not planned & supported  # a family is either supported or planned, never both
    assert len({a.family for a in ADAPTERS}) == len(ADAPTERS)


def test_unsupported_model_error_lists_the_supported_families():
    from vtwcli.errors import UnsupportedError

    with pytest.raises(UnsupportedError) as error:
        withdraw(model_of("llava_next", "sdpa").model.language_model, layer=2)
    message = str(error.value)
    assert "\n" not in message
    for family in FAMILIES.values():
        assert family.architecture in message


@pytest.mark.parametrize("name", NAMES)
def test_vtw_calibrate_runs_end_to_end(name, tmp_path, monkeypatch):
    """`vtw calibrate --model <saved tiny model>` on the bundled photographs writes a full profile.

    Where the family's processor cannot be built here (Qwen2-VL, LLaVA-OneVision, Mistral3 and InternVL
    processors need torchvision), AutoProcessor serves arch_models' stand-in that prepares the same inputs;
    everything else (loading the saved model, prompts, batches, the KL search, the profile) is the real path.
    """
    import yaml

    from vtwcli.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory = save_and_serve(FAMILIES[name], tmp_path / "model", monkeypatch, num_layers=LAYERS)
    output = tmp_path / "profile.yaml"
    try:
        main(["calibrate", "--model", directory, "--samples", "3", "--dataset", "photo_vqa", "--output", str(output),
              "--no-eval", "--device", "cpu"])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    assert code in (0, 1, None)  # 1: no layer met the threshold (random weights)
    profile = yaml.safe_load(output.read_text())
    assert [entry["layer"] for entry in profile["calibration"]["per_layer"]] == list(range(1, LAYERS))
    assert profile["model"]["architecture"] == FAMILIES[name].architecture


@pytest.mark.parametrize("name", ["qwen2_vl", "gemma3"])
def test_teacher_forced_inputs_keep_per_token_types_aligned(name):
    """Appending answers re-pads the rows: mm_token_type_ids / token_type_ids must move with the tokens."""
    from types import SimpleNamespace

    from vtwcli.calibration import _with_answers

    model = model_of(name, "sdpa", layers=6)
    batch, _ = batch_of(name)
    processor = FAMILIES[name].processor()
    samples = [SimpleNamespace(answer_text="red blue", where=lambda: "s0"),
               SimpleNamespace(answer_text="green", where=lambda: "s1")]
    extended, score = _with_answers(processor, batch, samples)
    key = "mm_token_type_ids" if "mm_token_type_ids" in batch else "token_type_ids"
    vision = torch.isin(extended["input_ids"], torch.tensor(FAMILIES[name].vision_ids(model.config)))
    assert torch.equal(extended[key] != 0, vision)
    fast = shared_prefix_kl(model, extended, [2, 4], score_mask=score).kl
    plain = dict(extended)
    if adapter_for(model).positions_from_mask:
        plain["position_ids"] = (extended["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        full = model(**plain).logits
        for column, k in enumerate([2, 4]):
            with withdraw(model, layer=k) as handle:
                withdrawn = model(**plain).logits  # kept tokens only; handle.kept_index maps slots back
            expected = []
            for i in range(2):
                positions = score[i].nonzero().squeeze(1)
                slots = [int((handle.kept_index[i] == p).nonzero()[-1]) for p in positions]
                expected.append(independent_kl(withdrawn[i, slots], full[i, positions]).mean())
            expected = torch.stack(expected)
            torch.testing.assert_close(fast[:, column], expected.float(), atol=1e-5, rtol=0)


def test_vtw_models_lists_every_family_as_supported(capsys):
    import json

    from vtwcli.cli import main

    try:
        main(["models", "--json"])
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    rows = json.loads(capsys.readouterr().out)
    status = {arch: row["status"] for row in rows for arch in row["architectures"]}
    for family in FAMILIES.values():
        assert status[family.architecture] == "supported"
    assert status["LlavaForConditionalGeneration"] == "supported"
    inputs = {arch: row["inputs"] for row in rows for arch in row["architectures"]}
    assert {arch for arch, kinds in inputs.items() if "video" in kinds} == {
        "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration", "LlavaOnevisionForConditionalGeneration"}
    assert all("image" in kinds for kinds in inputs.values())
    flops_only = {arch for row in rows if row["flops_only"] for arch in row["architectures"]}
    assert flops_only == {arch for a in ADAPTERS if a.fixed_image_layout or a.image_tokens is not None
                          for arch in a.architectures}
    assert {"LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
            "Gemma3ForConditionalGeneration", "InternVLForConditionalGeneration"} <= flops_only


def write_video_dataset(directory, frames: int = 4) -> str:
    """Two samples, each one image and one video of ``frames`` frames (16x16 PNGs), as a JSONL dataset."""
    import json

    from arch_models import image

    lines = []
    for sample in range(2):
        image(24, 16, 10 + sample).save(directory / f"img{sample}.png")
        names = []
        for frame in range(frames):
            image(16, 16, 100 * sample + frame).save(directory / f"v{sample}_{frame}.png")
            names.append(f"v{sample}_{frame}.png")
        lines.append(json.dumps({"id": f"s{sample}", "image": f"img{sample}.png", "video": names,
                                 "question": "describe this video", "answer": "red"}))
    (directory / "data.jsonl").write_text("\n".join(lines) + "\n")
    return str(directory / "data.jsonl")


@pytest.mark.parametrize("name", ["qwen2_vl", "llava_onevision"])
def test_vtw_calibrate_on_video_samples_withdraws_the_selected_kinds(name, tmp_path, monkeypatch):
    """Samples with an image and a video; `--withdraw image` / `video` / both give three different curves,
    each equal to the KL of plain `withdraw(..., kinds=...)` forwards on the same batch."""
    import transformers
    import yaml

    from vtwcli import apply_profile
    from vtwcli.cli import main
    from vtwcli.datasets import load_dataset
    from vtwcli.prompts import make_batch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory = save_and_serve(FAMILIES[name], tmp_path / "model", monkeypatch, num_layers=LAYERS)
    (tmp_path / "data").mkdir()
    dataset = write_video_dataset(tmp_path / "data")
    model = transformers.AutoModelForImageTextToText.from_pretrained(directory).eval()
    processor = transformers.AutoProcessor.from_pretrained(directory)
    batch = dict(make_batch(processor, load_dataset(dataset).samples))
    assert (batch["input_ids"] == model.config.video_token_id).sum() > 0
    if adapter_for(model).positions_from_mask:
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    curves = {}
    for kinds in ("image", "video", "image,video"):
        output = tmp_path / f"{kinds}.yaml"
        try:
            main(["calibrate", "--model", directory, "--dataset", dataset, "--withdraw", kinds, "--output", str(output),
                  "--no-eval", "--device", "cpu", "--threshold", "1e9"])
        except SystemExit as exit_:
            assert exit_.code in (0, None)
        calibration = yaml.safe_load(output.read_text())["calibration"]
        assert calibration["withdraw"] == kinds.split(",")
        handle = apply_profile(model, output)  # the profile's kinds travel with it
        ids = {"image": model.config.image_token_id, "video": model.config.video_token_id}
        assert sorted(handle.vision_token_ids) == sorted(ids[k] for k in kinds.split(","))
        handle.remove()
        curves[kinds] = [entry["kl_mean"] for entry in calibration["per_layer"]]
        with torch.no_grad():
            full = model(**batch).logits[:, -1]
            for entry in calibration["per_layer"]:
                with withdraw(model, layer=entry["layer"], kinds=tuple(kinds.split(","))):
                    withdrawn = model(**batch).logits[:, -1]
                expected = independent_kl(withdrawn, full).mean()
                assert entry["kl_mean"] == pytest.approx(float(expected), abs=1e-5)
    assert len({tuple(curve) for curve in curves.values()}) == 3
