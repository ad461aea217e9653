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
from vtwcli.adapters import ADAPTERS, NOT_APPLICABLE, PLANNED, adapter_for, supported_architectures
from vtwcli.calibration import shared_prefix_kl

ATTN = ["eager", "sdpa"]
LAYERS = 4
NAMES = list(FAMILIES)
# Layer types without attention: Gated DeltaNet (Qwen3.5) and short-conv (LFM2) layers mix tokens through a
# causal conv and a recurrent state. Alone, unpadded, they need no mask: the reference runs them plainly.
STATE_LAYER_TYPES = {"linear_attention", "conv"}


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
    import inspect

    text_model = getattr(model.model, "language_model", None) or model.model.text_model
    layers = text_model.layers
    text_config = model.config.text_config
    types = getattr(text_config, "layer_types", None) or ["full_attention"] * len(layers)
    seen = {}

    def capture(i):
        def hook(module, args, kwargs):
            # args[1:]: positional per-position inputs (Gemma 4's per-layer inputs), sliced like the hidden states
            seen[i] = (args[0] if args else kwargs["hidden_states"], kwargs.get("position_embeddings"),
                       kwargs.get("position_ids"), tuple(args[1:]))
        return hook

    hooks = [decoder_layer.register_forward_pre_hook(capture(i), with_kwargs=True) for i, decoder_layer in enumerate(layers)]
    hooks.append(text_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.__setitem__("text_model", kwargs), with_kwargs=True))
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
    injections = family.injections(seen["text_model"])  # DeepStack: features added inside the decoder
    # KV sharing (Gemma 4): layers store / reuse keys and values through one dict per forward
    shared = {}
    for i, decoder_layer in enumerate(layers):
        _, (cos, sin), positions, extra = seen[i]
        # past K an injection would only touch withdrawn tokens; one into layer 0 is already in seen[0]
        if i in injections and 0 < i <= layer:
            where, features = injections[i]
            hidden = hidden.clone()
            hidden[where] += features
        if i >= layer:  # withdrawn: only the kept tokens, at their original positions, plain causal over them
            if i == layer:
                hidden = hidden[:, keep]
            cos, sin = cos[:, keep], sin[:, keep]
            positions = None if positions is None else positions[..., keep]
            extra = tuple(a[:, keep] if isinstance(a, torch.Tensor) and a.shape[1] == len(ids) else a for a in extra)
        window = text_config.sliding_window if types[i] == "sliding_attention" else None
        block_types = family.image_block_layer_types
        bidirectional = i < layer and (block_types is None or types[i] in block_types)
        # prompt blocks that hold text (PaliGemma's prefix-LM) stay bidirectional among the kept tokens
        kept_blocks = blocks[keep] if blocks is not None and i >= layer and family.blocks_after_withdrawal else None
        mask = explicit_mask(hidden.shape[1], hidden.dtype, window=window,
                             blocks=blocks if bidirectional else kept_blocks)
        if types[i] in STATE_LAYER_TYPES:  # conv + recurrence over this (kept) sequence, from a zero state
            mask = None
        kwargs = dict(attention_mask=mask, position_embeddings=(cos, sin), position_ids=positions)
        if "shared_kv_states" in inspect.signature(decoder_layer.forward).parameters:
            kwargs["shared_kv_states"] = shared
        hidden = decoder_layer(hidden, *extra, **kwargs)
    norm = text_model.embedding_norm if hasattr(text_model, "embedding_norm") else text_model.norm  # LFM2's name
    return model.get_output_embeddings()(norm(hidden))[0, -1]


def exact_withdrawal_layers(text_config, num_layers: int) -> list[int]:
    """K in 1..L at which withdrawal can be exact, from the config's KV sharing: a layer that reuses keys/values
    reads the last earlier non-reusing layer of its type; K is exact unless such a reader >= K reads a layer < K."""
    modes = list(getattr(text_config, "kv_sharing_modes", None) or [None] * num_layers)
    types = getattr(text_config, "layer_types", None) or ["full_attention"] * num_layers
    source = {i: max(j for j in range(i) if modes[j] != "reuse" and types[j] == types[i])
              for i in range(num_layers) if modes[i] == "reuse"}
    return [k for k in range(1, num_layers + 1) if all(source[i] >= k for i in source if i >= k)]


def assert_refused_as_inexact(model, layer: int):
    """Withdrawal at an inexact K is a one-line error that names every K that is exact."""
    from vtwcli.errors import UnsupportedError

    exact = exact_withdrawal_layers(model.config.text_config, LAYERS)
    with pytest.raises(UnsupportedError) as error:
        withdraw(model, layer=layer)
    message = str(error.value)
    assert "\n" not in message and "KV sharing" in message
    assert message.endswith(f"use a layer in {exact[0]}..{exact[-2]}, {LAYERS} ({LAYERS} = no withdrawal)")


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
    if layer not in exact_withdrawal_layers(model.config.text_config, LAYERS):
        return assert_refused_as_inexact(model, layer)  # Gemma 4: layer 3 reuses layer 2's keys/values
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


def test_prefix_lm_blocks_stay_bidirectional_after_withdrawal():
    """PaliGemma: the kept text prompt still attends both ways in layers >= K. A causal-only kept mask gives
    logits farther from the withdrawn forward than the suite's tolerance: the per-row test would catch it."""
    from dataclasses import replace

    model = model_of("paligemma", "sdpa")
    batch, singles = batch_of("paligemma")
    with torch.no_grad(), withdraw(model, layer=1):
        logits = model(**batch).logits[0, -1]
    family = FAMILIES["paligemma"]
    causal_only = naive_withdrawn_logits(model, replace(family, blocks_after_withdrawal=False), singles[0], 1)
    torch.testing.assert_close(logits, naive_withdrawn_logits(model, family, singles[0], 1), atol=1e-4, rtol=0)
    assert (logits - causal_only).abs().max() > 5e-4


def _extend(inputs: dict, new_tokens: torch.Tensor, model) -> dict:
    """Append generated tokens: input_ids, the mask, and to every other per-token tensor the type of a generated
    token (zeros = text; PaliGemma's token_type_ids mark them 1, the suffix, as its generate() does)."""
    generated = next((f.generated_token_type for f in FAMILIES.values() if f.architecture == type(model).__name__), 0)
    out = dict(inputs)
    width = inputs["input_ids"].shape[1]
    for key, value in inputs.items():
        if key == "input_ids":
            out[key] = torch.cat([value, new_tokens], dim=1)
        elif key == "attention_mask":
            out[key] = torch.cat([value, torch.ones_like(new_tokens)], dim=1)
        elif isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == (new_tokens.shape[0], width):
            fill = generated if key == "token_type_ids" else 0
            out[key] = torch.cat([value, torch.full_like(new_tokens, fill, dtype=value.dtype)], dim=1)
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
            running = _extend(running, logits.argmax(-1, keepdim=True), model)
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
            running = _extend(running, torch.multinomial(logits.float().softmax(-1), num_samples=1), model)
    assert torch.equal(out, running["input_ids"])


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("name", NAMES)
def test_beam_search_cached_equals_uncached(name, cache_implementation):
    """Beam search reorders the (withdrawn, shorter) cache every step: cached == recomputed without a cache."""
    model = model_of(name, "sdpa")
    batch = beam_batch_of(name)
    kwargs = dict(batch, max_new_tokens=4, min_new_tokens=4, num_beams=3, do_sample=False, output_scores=True,
                  return_dict_in_generate=True)
    with torch.no_grad(), withdraw(model, layer=2):
        cached = model.generate(**kwargs, cache_implementation=cache_implementation)
        uncached = model.generate(**kwargs, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=1e-4, rtol=0)


def beam_batch_of(name: str) -> dict:
    """The test batch, or where upstream beam search cannot take it (Family.beam_rows_reason) the family's
    beam rows: still left-padded rows with different numbers of vision tokens."""
    family = FAMILIES[name]
    if family.beam_rows is None:
        return batch_of(name)[0]
    processor = family.processor()
    rows = family.beam_rows(processor)
    return dict(processor(text=[t for t, _ in rows], images=[imgs for _, imgs in rows], padding=True,
                          return_tensors="pt"))


@pytest.mark.parametrize("name", [name for name, family in FAMILIES.items() if family.beam_rows is not None])
def test_beam_rows_exemption_is_still_needed(name):
    """The exemption above is upstream's, not withdrawal's: WITHOUT withdrawal, the best beam's score of the
    two-image row differs from the log-probabilities of its own tokens recomputed without a cache. When
    transformers fixes it this test fails: then drop the family's beam_rows."""
    model = model_of(name, "sdpa")
    batch, _ = batch_of(name)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, num_beams=3, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, length_penalty=0.0)
        new = out.sequences[:, batch["input_ids"].shape[1]:]
        running, recomputed = dict(batch), torch.zeros(len(new))
        for step in range(new.shape[1]):
            log_probs = model(**running, use_cache=False).logits[:, -1].float().log_softmax(-1)
            recomputed += log_probs.gather(1, new[:, step:step + 1]).squeeze(1)
            running = _extend(running, new[:, step:step + 1], model)
    two_images = int(torch.isin(batch["input_ids"], torch.tensor(FAMILIES[name].vision_ids(model.config)))
                     .sum(1).argmax())
    assert abs(float(out.sequences_scores[two_images] - recomputed[two_images])) > 1e-3, FAMILIES[name].beam_rows_reason


def independent_kl(p_logits, q_logits):
    p = torch.softmax(p_logits.double(), -1)
    return (p * (torch.log(p) - torch.log_softmax(q_logits.double(), -1))).sum(-1)


def assert_curve_equals_plain_withdrawn_forwards(model, batch: dict, per_layer: list[dict], kinds=None):
    """Each stored layer's mean KL equals that of a plain forward withdrawn at that layer (<= 1e-5)."""
    with torch.no_grad():
        full = model(**batch).logits[:, -1]
        for entry in per_layer:
            with withdraw(model, layer=entry["layer"], kinds=kinds):
                withdrawn = model(**batch).logits[:, -1]
            assert entry["kl_mean"] == pytest.approx(float(independent_kl(withdrawn, full).mean()), abs=1e-5)


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", NAMES)
def test_shared_prefix_kl_equals_plain_withdrawn_forward(name, attn):
    model = model_of(name, attn, layers=6)
    batch, _ = batch_of(name)
    layers = exact_withdrawal_layers(model.config.text_config, 6)  # every K but where KV sharing forbids it
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


VIDEO_FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "llava_onevision", "llava_next_video",
                  "video_llava"]


def video_row(name: str):
    """One prompt with an image and a video: the family's real processor on 4 frames of 16x16 where it can be
    built (torchvision), else its stand-in (the video is random features of the model's video input shape)."""
    import numpy as np
    from arch_models import ShimProcessor, image

    if name.startswith("qwen"):
        image_pad, video_pad = "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
        text = f"<|im_start|>user\ndescribe {image_pad} and {video_pad} this video ?<|im_end|>\n<|im_start|>assistant\n"
    else:
        text = "USER: describe <image>\nand <video>\nthis video ?\nASSISTANT:"
    processor = FAMILIES[name].processor()
    if isinstance(processor, ShimProcessor):
        return processor([text], images=[[image(24, 16, 5)]], videos=[1])
    frames = np.random.default_rng(9).integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    return processor(text=[text], images=[[image(24, 16, 5)]], videos=[frames], return_tensors="pt")


def images_only(family):
    """Reference family for kinds=("image",): video tokens stay (and keep their DeepStack injections)."""
    from dataclasses import replace

    return replace(family, vision_ids=lambda config: [config.image_token_id])


def deepstack_depth(model) -> int:
    """The deepest decoder layer a DeepStack injection of the tiny model reaches (0: none)."""
    return len(getattr(model.config.vision_config, "deepstack_visual_indexes", []))


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", VIDEO_FAMILIES)
def test_video_tokens_are_withdrawn(name, attn):
    model = model_of(name, attn)
    row = dict(video_row(name))
    ids = row["input_ids"]
    assert (ids == model.config.video_token_id).sum() > 0 and (ids == model.config.image_token_id).sum() > 0
    # one kind kept: with DeepStack only from the layer its last injection reaches on (see the refusal test)
    single = max(2, deepstack_depth(model))
    with torch.no_grad():
        with withdraw(model, layer=2):
            both = model(**row).logits[0, -1]
        with withdraw(model, layer=single, kinds=("image",)):
            kept_videos = model(**row).logits[0, -1]
        with withdraw(model, layer=single, kinds=("video",)):
            kept_images = model(**row).logits[0, -1]
        with withdraw(model, layer=single):
            both_at_single = model(**row).logits[0, -1]
    family = FAMILIES[name]
    torch.testing.assert_close(both, naive_withdrawn_logits(model, family, row, 2), atol=1e-4, rtol=0)
    torch.testing.assert_close(kept_videos, naive_withdrawn_logits(model, images_only(family), row, single), atol=1e-4,
                               rtol=0)
    assert (both_at_single - kept_videos).abs().max() > 1e-3 and (both_at_single - kept_images).abs().max() > 1e-3


@pytest.mark.parametrize("attn", ATTN)
def test_glm_video_frames_are_withdrawn_with_the_images(attn):
    """GLM-4V's video frames carry the image token (one kind): a video prompt, its frames withdrawn, against the
    per-row reference; cached greedy generate() against a no-cache recompute. (An image AND a video in one
    prompt fail in transformers 5.24's GLM-4V itself: its placeholder check counts the frames as images.)"""
    import numpy as np

    model = model_of("glm4v", attn)
    text = "<|user|>\ndescribe <|begin_of_video|><|video|><|end_of_video|> this video ?\n<|assistant|>\n"
    frames = np.random.default_rng(9).integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    row = dict(FAMILIES["glm4v"].processor()(text=[text], videos=[frames], return_tensors="pt"))
    assert (row["mm_token_type_ids"] == 2).sum() == (row["input_ids"] == model.config.image_token_id).sum() > 0
    with torch.no_grad():
        with withdraw(model, layer=2):
            logits = model(**row).logits[0, -1]
        full = model(**row).logits[0, -1]
    torch.testing.assert_close(logits, naive_withdrawn_logits(model, FAMILIES["glm4v"], row, 2), atol=1e-4, rtol=0)
    assert (logits - full).abs().max() > 1e-3
    assert_greedy_generate_equals_recompute(model, row)


@pytest.mark.parametrize("kinds", [("image",), ("video",)])
def test_deepstack_into_kept_vision_tokens_is_refused_below_its_depth(kinds):
    """Qwen3-VL adds DeepStack features to image AND video tokens in layers 1..3: keeping one kind at K = 2
    would need the injection into layer 3 on the short sequence. One-line error naming the layer that works."""
    from vtwcli.errors import UnsupportedError

    model = model_of("qwen3_vl", "sdpa")
    row = dict(video_row("qwen3_vl"))
    with torch.no_grad(), withdraw(model, layer=2, kinds=kinds), pytest.raises(UnsupportedError) as error:
        model(**row)
    assert str(error.value) == (
        "Qwen3-VL / Qwen3-VL-MoE adds DeepStack vision features to every vision token up to decoder layer 3, and "
        f"this call keeps some (--withdraw {kinds[0]}); withdraw every vision kind of the prompt or use a layer >= 3")
    batch, _ = batch_of("qwen3_vl")  # images only: --withdraw image keeps no vision token, so it is allowed
    with torch.no_grad():
        with withdraw(model, layer=2, kinds=("image",)):
            images = model(**batch).logits
        with withdraw(model, layer=2):
            every = model(**batch).logits
    assert torch.equal(images, every)


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", VIDEO_FAMILIES)
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


def test_dispatched_gemma4_with_offloaded_layers_is_exact():
    """Gemma 4 with its KV-producing layer 2 and the KV-sharing layer 3 offloaded (accelerate moves their weights,
    per-layer inputs and the shared keys/values at call time): same withdrawn logits and generations."""
    import tempfile

    from accelerate import dispatch_model

    family = FAMILIES["gemma4"]
    batch, _ = batch_of("gemma4")
    with torch.no_grad():
        plain = family.build(LAYERS, "sdpa", 0)
        with withdraw(plain, layer=2):
            expected = plain(**batch).logits
            expected_generate = plain.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        dispatched = family.build(LAYERS, "sdpa", 0)
        text = dispatched.model.language_model
        device_map = {"model.vision_tower": "cpu", "model.embed_vision": "cpu", "lm_head": "cpu",
                      **{f"model.language_model.{name}": "cpu"
                         for name, _ in text.named_children() if name != "layers"},
                      **{f"model.language_model.layers.{i}": ("cpu" if i < 2 else "disk") for i in range(LAYERS)}}
        with tempfile.TemporaryDirectory() as offload:
            dispatch_model(dispatched, device_map=device_map, main_device="cpu", offload_dir=offload)
            assert hasattr(text.layers[LAYERS - 1], "_hf_hook")
            with withdraw(dispatched, layer=2):
                got = dispatched(**batch).logits
                got_generate = dispatched.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert torch.equal(got_generate, expected_generate)


# ---------------------------------------------------------------------------------------------------------
# The family list and `vtw calibrate` end to end on saved tiny models


def test_every_tested_family_is_supported_and_listed():
    supported = set(supported_architectures())
    for family in FAMILIES.values():
        assert family.architecture in supported
        assert adapter_for(model_of(next(k for k, f in FAMILIES.items() if f is family), "sdpa")).family
    planned = {c for entry in PLANNED.values() for c in entry.architectures}
    not_applicable = {c for entry in NOT_APPLICABLE.values() for c in entry.architectures}
    # a family is supported, planned or not applicable, never two of them
    assert not planned & supported and not not_applicable & supported and not planned & not_applicable
    assert len({a.family for a in ADAPTERS}) == len(ADAPTERS)
    assert all(entry.reason for entry in [*PLANNED.values(), *NOT_APPLICABLE.values()])


def test_every_image_text_to_text_family_has_a_status_in_vtw_models_and_the_docs():
    """Item 5 of issue 12: every class of transformers' image-text-to-text mapping is supported, planned (with
    the reason) or not applicable, and docs/architectures.md names each of them."""
    from pathlib import Path

    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    known = set(supported_architectures()) | {c for entries in (PLANNED, NOT_APPLICABLE) for entry in entries.values()
                                              for c in entry.architectures}
    mapping = set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values())
    assert mapping - known == set()
    docs = (Path(__file__).resolve().parent.parent / "docs" / "architectures.md").read_text()
    assert [c for c in sorted(known) if f"`{c}`" not in docs] == []


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
    config = transformers_config(directory)
    candidates = [k for k in exact_withdrawal_layers(config.text_config, LAYERS) if k < LAYERS]
    assert [entry["layer"] for entry in profile["calibration"]["per_layer"]] == candidates
    assert profile["model"]["architecture"] == FAMILIES[name].architecture
    # Windowed (Gemma 3) and conv / recurrent layers (Qwen3.5, LFM2) recompute the text prefix per K
    all_full = all(kind == "full_attention" for kind in getattr(model_of(name, "sdpa").config.text_config,
                                                                "layer_types", None) or ["full_attention"])
    assert profile["calibration"]["cost"]["shared_prefix"] is all_full


def transformers_config(directory):
    import transformers

    return transformers.AutoConfig.from_pretrained(directory)


@pytest.mark.parametrize("name", ["gemma4"])
def test_vtw_calibrate_with_kv_sharing_stops_at_the_last_exact_layer(name, tmp_path, monkeypatch, capsys):
    """Gemma 4 with KV sharing: the search covers exactly the K that can be exact, the profile and the screen
    say where and why it stops, `vtw check` accepts the profile, and every KL equals that of plain withdraw()
    forwards on the same batch (<= 1e-5)."""
    import transformers
    import yaml

    from vtwcli.cli import main
    from vtwcli.datasets import load_dataset, make_batch, sample_dataset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory = save_and_serve(FAMILIES[name], tmp_path / "model", monkeypatch, num_layers=LAYERS)
    output = tmp_path / "profile.yaml"
    try:
        main(["calibrate", "--model", directory, "--samples", "3", "--dataset", "photo_vqa", "--output", str(output),
              "--no-eval", "--device", "cpu", "--threshold", "1e9"])
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    out = capsys.readouterr().out
    calibration = yaml.safe_load(output.read_text())["calibration"]
    model = transformers.AutoModelForImageTextToText.from_pretrained(directory).eval()
    candidates = [k for k in exact_withdrawal_layers(model.config.text_config, LAYERS) if k < LAYERS]
    assert candidates == [1, 2]  # layer 3 reuses the keys/values of layer 2
    assert [entry["layer"] for entry in calibration["per_layer"]] == candidates
    assert calibration["max_layer"] == 2
    assert "layer 3 reuses the keys/values of layer 2" in calibration["max_layer_reason"]
    assert "candidates stop at layer 2" in " ".join(out.split())
    try:
        main(["check", str(output)])
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    processor = transformers.AutoProcessor.from_pretrained(directory)
    data = load_dataset("photo_vqa")
    batch = dict(make_batch(processor, sample_dataset(data, 3, 0)))
    batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)  # as generate() numbers them
    assert_curve_equals_plain_withdrawn_forwards(model, batch, calibration["per_layer"])
    assert min(entry["kl_mean"] for entry in calibration["per_layer"]) > 0


@pytest.mark.parametrize("name", ["qwen2_vl", "gemma3", "gemma4"])
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
    layers = [k for k in (2, 4) if k in exact_withdrawal_layers(model.config.text_config, 6)]  # Gemma 4: [2]
    fast = shared_prefix_kl(model, extended, layers, score_mask=score).kl
    plain = dict(extended)
    if adapter_for(model).positions_from_mask:
        plain["position_ids"] = (extended["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        full = model(**plain).logits
        for column, k in enumerate(layers):
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
        "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration",
        "Qwen3VLMoeForConditionalGeneration", "LlavaOnevisionForConditionalGeneration",
        "LlavaNextVideoForConditionalGeneration", "VideoLlavaForConditionalGeneration", "Gemma4ForConditionalGeneration",
        "Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"}
    assert all("image" in kinds or kinds == ["vision_mask"] for arch, kinds in inputs.items()
               if status[arch] not in ("planned", "not applicable"))
    notes = {arch: row["notes"] for row in rows for arch in row["architectures"]}
    assert status["MllamaForConditionalGeneration"] == "not applicable" and "cross-attention" in notes[
        "MllamaForConditionalGeneration"]
    assert status["Gemma3nForConditionalGeneration"] == "planned" and "per-layer inputs" in notes[
        "Gemma3nForConditionalGeneration"]
    flops_only = {arch for row in rows if row["flops_only"] for arch in row["architectures"]}
    assert flops_only == {arch for a in ADAPTERS if a.fixed_image_layout or a.image_tokens is not None
                          for arch in a.architectures}
    assert {"LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
            "Gemma3ForConditionalGeneration", "InternVLForConditionalGeneration"} <= flops_only
    with_videos = {arch for row in rows if row["flops_only_videos"] for arch in row["architectures"]}
    assert {"Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
            "LlavaOnevisionForConditionalGeneration", "Qwen3VLForConditionalGeneration",
            "Qwen3VLMoeForConditionalGeneration", "Qwen3_5ForConditionalGeneration",
            "Qwen3_5MoeForConditionalGeneration", "Glm4vForConditionalGeneration", "Glm4vMoeForConditionalGeneration",
            "Glm46VForConditionalGeneration", "Gemma4ForConditionalGeneration"} <= with_videos <= flops_only


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
        assert_curve_equals_plain_withdrawn_forwards(model, batch, calibration["per_layer"], tuple(kinds.split(",")))
    assert len({tuple(curve) for curve in curves.values()}) == 3


# ---------------------------------------------------------------------------------------------------------
# Llama 4: the family's own forward is broken upstream (transformers 5.24), so withdrawal is refused on it with
# one line and runs on its language model with inputs_embeds + vision_mask; exact there (chunked attention,
# NoPE layer, MoE layers).

_LLAMA4: dict = {}


def llama4_of(attn: str):
    from arch_models import LLAMA4_ROWS, llama4_embeds, tiny_llama4

    if attn not in _LLAMA4:
        model = tiny_llama4(LAYERS, attn)
        _LLAMA4[attn] = (model, *llama4_embeds(model, LLAMA4_ROWS))
    return _LLAMA4[attn]


def chunked_mask(n: int, dtype, chunk: int | None) -> torch.Tensor:
    """Float mask (1, 1, n, n): causal, and where ``chunk`` is set, only inside the query's chunk of ``chunk``
    consecutive tokens counted from the row's first token."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    allowed = j <= i
    if chunk is not None:
        allowed &= (i // chunk) == (j // chunk)
    return torch.zeros(n, n, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


@torch.no_grad()
def naive_llama4_logits(language_model, embeds: torch.Tensor, vision: torch.Tensor, layer: int) -> torch.Tensor:
    """One unpadded row (1, n, d) of inputs_embeds withdrawn at ``layer``: layers < K on every token, layers >= K
    on the non-vision tokens at their original rotary positions; chunks count the tokens each layer sees."""
    config = language_model.config
    n = embeds.shape[1]
    positions = torch.arange(n)[None]
    freqs = language_model.model.rotary_emb(embeds, positions)  # complex (1, n, head_dim / 2)
    keep = (~vision[0]).nonzero().squeeze(1)
    hidden = embeds
    for i, decoder_layer in enumerate(language_model.model.layers):
        if i == layer:
            hidden, freqs, positions = hidden[:, keep], freqs[:, keep], positions[:, keep]
        chunk = config.attention_chunk_size if config.layer_types[i] == "chunked_attention" else None
        mask = chunked_mask(hidden.shape[1], hidden.dtype, chunk)
        hidden = decoder_layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=freqs)
    return language_model.lm_head(language_model.model.norm(hidden))[0, -1]


def test_llama4_forward_is_broken_upstream_and_withdrawal_says_so_in_one_line():
    from vtwcli.adapters import adapter_for_architecture
    from vtwcli.errors import UnsupportedError

    model, embeds, mask, vision = llama4_of("sdpa")
    architecture = "Llama4ForConditionalGeneration"
    defect = adapter_for_architecture(architecture).upstream_defect(architecture)
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 7, 8]]))
        broken = False
    except AttributeError as error:
        broken = "image_outputs" in str(error)
    assert broken == (defect is not None)  # the probe reports exactly what the installed transformers does
    if not broken:
        pytest.skip("the installed transformers fixed Llama4ForConditionalGeneration.forward")
    with pytest.raises(UnsupportedError) as error:
        withdraw(model, layer=2)
    message = str(error.value)
    import transformers

    assert "\n" not in message and f"transformers {transformers.__version__}" in message and "upstream bug" in message
    assert "withdraw(model.language_model, layer=K, vision_mask=...)" in message


@pytest.mark.parametrize("attn", ATTN)
def test_llama4_language_model_layer_L_is_bit_identical(attn):
    model, embeds, mask, vision = llama4_of(attn)
    language_model = model.language_model
    with torch.no_grad():
        reference = language_model(inputs_embeds=embeds, attention_mask=mask).logits
        with withdraw(language_model, layer=LAYERS, vision_mask=vision):
            withdrawn = language_model(inputs_embeds=embeds, attention_mask=mask).logits
    assert torch.equal(reference, withdrawn)


@pytest.mark.parametrize("layer", [1, 2, 3])
@pytest.mark.parametrize("attn", ATTN)
def test_llama4_batched_padded_prefill_matches_naive_per_row(attn, layer):
    model, embeds, mask, vision = llama4_of(attn)
    language_model = model.language_model
    assert vision.sum(1)[0] != vision.sum(1)[1]  # rows carry different numbers of vision tokens
    assert (mask.sum(1) > model.config.text_config.attention_chunk_size).all()  # chunks matter in every row
    with torch.no_grad(), withdraw(language_model, layer=layer, vision_mask=vision):
        logits = language_model(inputs_embeds=embeds, attention_mask=mask).logits[:, -1]
    for row in range(len(embeds)):
        real = mask[row].bool()
        expected = naive_llama4_logits(language_model, embeds[row:row + 1, real], vision[row:row + 1, real], layer)
        torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=0)
    with torch.no_grad():
        full = language_model(inputs_embeds=embeds, attention_mask=mask).logits[:, -1]
    assert (full - logits).abs().max() > 1e-3


def llama4_recompute(language_model, embeds, mask, vision, new_tokens: torch.Tensor, layer: int = 2,
                     suppress: bool = True) -> torch.Tensor:
    """Last-position logits, withdrawn at ``layer``, without a cache, of the prompt embeddings + the embedded
    generated tokens (text: the vision mask grows with False), positions numbered as generate() numbers them."""
    running = torch.cat([embeds, language_model.get_input_embeddings()(new_tokens)], dim=1)
    running_mask = torch.cat([mask, torch.ones_like(new_tokens)], dim=1)
    running_vision = torch.cat([vision, torch.zeros_like(new_tokens, dtype=torch.bool)], dim=1)
    positions = (running_mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad(), withdraw(language_model, layer=layer, vision_mask=running_vision):
        logits = language_model(inputs_embeds=running, attention_mask=running_mask, position_ids=positions,
                                use_cache=False).logits[:, -1]
    if suppress:
        logits[:, language_model.generation_config.suppress_tokens] = -float("inf")
    return logits


def beam_search_by_recompute(language_model, embeds, mask, vision, *, beams: int, steps: int) -> torch.Tensor:
    """Beam search written out, each step a no-cache withdrawn recompute of every beam: keep the ``beams``
    best (beam, token) continuations by summed log-probability (log-softmax first, then suppressed tokens
    removed, as generate() does); no end token, so the best final beam is the highest sum. Returns the new tokens."""
    best = []
    for row in range(len(embeds)):
        sequences, scores = torch.empty(1, 0, dtype=torch.long), torch.zeros(1)
        for _ in range(steps):
            count = len(sequences)
            logits = llama4_recompute(language_model, embeds[row:row + 1].expand(count, -1, -1),
                                      mask[row:row + 1].expand(count, -1), vision[row:row + 1].expand(count, -1),
                                      sequences, suppress=False)
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            log_probs[:, language_model.generation_config.suppress_tokens] = -float("inf")
            total = (scores[:, None] + log_probs).flatten()
            top = total.topk(beams)
            vocab = log_probs.shape[-1]
            sequences = torch.cat([sequences[top.indices // vocab], (top.indices % vocab)[:, None]], dim=1)
            scores = top.values
        best.append(sequences[0])
    return torch.stack(best)


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("attn", ATTN)
def test_llama4_cached_greedy_generate_equals_no_cache_recompute(attn, cache_implementation):
    model, embeds, mask, vision = llama4_of(attn)
    language_model = model.language_model
    steps = 4
    with torch.no_grad(), withdraw(language_model, layer=2, vision_mask=vision):
        out = language_model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=steps,
                                      min_new_tokens=steps, do_sample=False, output_scores=True,
                                      return_dict_in_generate=True, cache_implementation=cache_implementation)
    new = out.sequences[:, -steps:]
    for step in range(steps):
        logits = llama4_recompute(language_model, embeds, mask, vision, new[:, :step])
        torch.testing.assert_close(out.scores[step], logits, atol=1e-4, rtol=0)
        assert torch.equal(new[:, step], logits.argmax(-1))


def test_llama4_sampling_and_beam_search_equal_no_cache_recompute():
    model, embeds, mask, vision = llama4_of("sdpa")
    language_model = model.language_model
    kwargs = dict(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4, min_new_tokens=4)
    with torch.no_grad(), withdraw(language_model, layer=2, vision_mask=vision):
        torch.manual_seed(321)
        sampled = language_model.generate(**kwargs, do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
    torch.manual_seed(321)
    drawn = torch.empty(len(embeds), 0, dtype=torch.long)
    for _ in range(4):
        logits = llama4_recompute(language_model, embeds, mask, vision, drawn)
        drawn = torch.cat([drawn, torch.multinomial(logits.float().softmax(-1), num_samples=1)], dim=1)
    assert torch.equal(sampled[:, -4:], drawn)
    # beam search without a cache recomputes every step on inputs_embeds + generated ids: no vision mask of
    # that length exists then, so the beams are compared with the cached run against the recompute above
    for cache_implementation in ("dynamic", "static"):
        beams = dict(kwargs, num_beams=3, do_sample=False, output_scores=True, return_dict_in_generate=True)
        with torch.no_grad(), withdraw(language_model, layer=2, vision_mask=vision):
            cached = language_model.generate(**beams, cache_implementation=cache_implementation)
        expected = beam_search_by_recompute(language_model, embeds, mask, vision, beams=3, steps=4)
        assert torch.equal(cached.sequences[:, -4:], expected)


def test_vtw_models_shows_llama4_as_blocked_upstream_and_its_language_model_as_withdraw_only(capsys):
    import json

    from vtwcli.adapters import adapter_for_architecture
    from vtwcli.cli import main

    try:
        main(["models", "--json"])
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    rows = {arch: row for row in json.loads(capsys.readouterr().out) for arch in row["architectures"]}
    broken = adapter_for_architecture("Llama4ForConditionalGeneration").upstream_defect(
        "Llama4ForConditionalGeneration") is not None
    assert rows["Llama4ForConditionalGeneration"]["status"] == ("blocked upstream" if broken else "supported")
    assert rows["Llama4ForCausalLM"]["status"] == "withdraw() only"
    assert rows["Llama4ForCausalLM"]["inputs"] == ["vision_mask"]


@pytest.mark.parametrize("layer", [1, 3])
def test_llama4_nope_temperature_counts_the_positions_each_layer_sees(layer):
    """With floor_scale 1 (and a large attn_scale, to make it visible in a random model) the NoPE layer's
    attention temperature changes with every position (the released models: 1.0 below 8192). transformers
    computes it from the layer's cache length and the query index, so in layers >= K it counts kept tokens:
    one unpadded row equals the reference that runs those layers on the kept sequence with its own positions
    (docs/architectures.md, Llama 4)."""
    from arch_models import LLAMA4_ROWS, llama4_embeds, tiny_llama4

    model = tiny_llama4(LAYERS, "sdpa", floor_scale=1, attn_scale=20.0)
    embeds, mask, vision = llama4_embeds(model, LLAMA4_ROWS[:1])
    language_model = model.language_model
    with torch.no_grad():
        with withdraw(language_model, layer=layer, vision_mask=vision):
            logits = language_model(inputs_embeds=embeds, attention_mask=mask).logits[0, -1]
        untuned = tiny_llama4(LAYERS, "sdpa")  # same weights, temperature 1
        with withdraw(untuned.language_model, layer=layer, vision_mask=vision):
            plain = untuned.language_model(inputs_embeds=embeds, attention_mask=mask).logits[0, -1]
    torch.testing.assert_close(logits, naive_llama4_logits(language_model, embeds, vision, layer), atol=1e-4, rtol=0)
    assert (logits - plain).abs().max() > 1e-3  # the temperature is active


# ---------------------------------------------------------------------------------------------------------
# Gemma 4 video: frames are blocks of video soft tokens (bidirectional on sliding layers like images); image and
# video tokens are withdrawn together, and a selection that would keep one kind is refused


def gemma4_video_row() -> dict:
    import numpy as np
    from arch_models import image

    frames = np.random.default_rng(9).integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    text = "<|turn>user\ndescribe <|image|> and <|video|> this video ?<turn|>\n<|turn>model\n"
    return dict(FAMILIES["gemma4"].processor()(text=[text], images=[[image(24, 16, 5)]], videos=[frames],
                                               return_tensors="pt"))


@pytest.mark.parametrize("attn", ATTN)
def test_gemma4_video_tokens_are_withdrawn_with_the_images(attn):
    from vtwcli.errors import UnsupportedError

    model = model_of("gemma4", attn)
    row = gemma4_video_row()
    ids = row["input_ids"]
    video = (ids[0] == model.config.video_token_id).int()
    frames = int(video[0] + (video[1:] > video[:-1]).sum())  # runs of video tokens
    assert frames == 2 and (ids == model.config.image_token_id).sum() > 0  # two frame blocks and an image
    with torch.no_grad(), withdraw(model, layer=2):
        logits = model(**row).logits[0, -1]
    torch.testing.assert_close(logits, naive_withdrawn_logits(model, FAMILIES["gemma4"], row, 2), atol=1e-4, rtol=0)
    for kinds, kept in ((("image",), "video"), (("video",), "image")):
        with withdraw(model, layer=2, kinds=kinds), pytest.raises(UnsupportedError) as error:
            model(**row)
        message = str(error.value)
        assert "\n" not in message and f"the kept {kept} tokens attend bidirectionally" in message
        assert message.endswith("withdraw image,video (the default)")


def test_gemma4_generate_with_video_equals_no_cache_recompute():
    row = gemma4_video_row()
    row.setdefault("attention_mask", torch.ones_like(row["input_ids"]))
    assert_greedy_generate_equals_recompute(model_of("gemma4", "sdpa"), row)


def test_vtw_calibrate_gemma4_on_video_samples_equals_plain_withdrawn_forwards(tmp_path, monkeypatch):
    """Samples with an image and a 4-frame video on Gemma 4: every KL of `vtw calibrate` equals that of plain
    withdraw() forwards on the same batch (<= 1e-5)."""
    import transformers
    import yaml

    from vtwcli.cli import main
    from vtwcli.datasets import load_dataset, make_batch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory = save_and_serve(FAMILIES["gemma4"], tmp_path / "model", monkeypatch, num_layers=LAYERS)
    (tmp_path / "data").mkdir()
    dataset = write_video_dataset(tmp_path / "data")
    output = tmp_path / "profile.yaml"
    try:
        main(["calibrate", "--model", directory, "--dataset", dataset, "--output", str(output), "--no-eval",
              "--device", "cpu", "--threshold", "1e9"])
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    calibration = yaml.safe_load(output.read_text())["calibration"]
    model = transformers.AutoModelForImageTextToText.from_pretrained(directory).eval()
    batch = dict(make_batch(transformers.AutoProcessor.from_pretrained(directory), load_dataset(dataset).samples))
    assert (batch["input_ids"] == model.config.video_token_id).sum() > 0
    batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    assert [entry["layer"] for entry in calibration["per_layer"]] == [1, 2]
    assert_curve_equals_plain_withdrawn_forwards(model, batch, calibration["per_layer"])
    assert min(entry["kl_mean"] for entry in calibration["per_layer"]) > 0


# ---------------------------------------------------------------------------------------------------------
# Families with conv / recurrent layers (Qwen3.5 Gated DeltaNet, LFM2 short conv): what a KV cache does not show

STATE_FAMILIES = ["qwen3_5", "qwen3_5_moe", "lfm2_vl"]


def _decode_inputs(model, running: dict, cache, new: torch.Tensor, positions: bool = True) -> dict:
    """A continuation of ``running`` by the tokens ``new`` (B, n): ids, the grown mask, the cache and (unless
    ``positions`` is False) the new tokens' original positions, as generate() numbers them (M-RoPE: the text
    row, then t/h/w shifted by the rope deltas of the prefill; Qwen3.5 itself cannot derive them from the mask
    in a continuation: transformers 5.24 numbers the whole mask)."""
    mask = torch.cat([running["attention_mask"], torch.ones_like(new)], dim=1)
    inputs = dict(input_ids=new, attention_mask=mask, cache=cache, use_cache=True)
    if positions:
        text = running["attention_mask"].sum(-1, keepdim=True) + torch.arange(new.shape[1])
        if not adapter_for(model).positions_from_mask:
            text = torch.cat([text[None], (text + model.model.rope_deltas)[None].expand(3, -1, -1)])
        inputs["position_ids"] = text
    return inputs


@pytest.mark.parametrize("name", ["qwen3_5", "lfm2_vl"])
def test_multi_token_continuation_carries_the_state_exactly(name):
    """Prefill under withdrawal, then two tokens in one call: the conv / recurrent state after layer K holds the
    kept prompt only and continues from it; equals a no-cache recompute of the whole sequence."""
    from transformers import DynamicCache

    model = model_of(name, "sdpa")
    batch, _ = batch_of(name)
    new = torch.tensor([[30, 31], [32, 33]])
    with torch.no_grad(), withdraw(model, layer=1):
        cache = DynamicCache(config=model.config.text_config)
        prefill = dict(batch)
        if adapter_for(model).positions_from_mask:
            prefill["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)
        model(**prefill, cache=cache, use_cache=True)
        got = model(**_decode_inputs(model, batch, cache, new)).logits[:, -1]
        expected = no_cache_logits(model, _extend(batch, new, model))
    finite = expected.isfinite()
    torch.testing.assert_close(got[finite], expected[finite], atol=1e-4, rtol=0)


def test_padding_inside_a_continuation_is_refused():
    """Filler in a continuation would reach a state that already holds the prompt: a one-line refusal."""
    from transformers import DynamicCache

    from vtwcli.errors import UnsupportedError

    model = model_of("qwen3_5", "sdpa")
    batch, _ = batch_of("qwen3_5")
    with torch.no_grad(), withdraw(model, layer=1):
        cache = DynamicCache(config=model.config.text_config)
        model(**batch, cache=cache, use_cache=True)
        inputs = _decode_inputs(model, batch, cache, torch.tensor([[0, 30], [31, 32]]))
        inputs["attention_mask"][0, -2] = 0  # row 0's first new token is padding
        with pytest.raises(UnsupportedError, match="padding inside a continuation") as error:
            model(**inputs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("layer", [1, 3])  # Qwen3.5 tiny: attention at layer 2; only Gated DeltaNet after K = 3
def test_cache_filled_without_withdrawal_is_refused(layer):
    from transformers import DynamicCache

    from vtwcli.errors import UnsupportedError

    model = model_of("qwen3_5", "sdpa")
    batch, _ = batch_of("qwen3_5")
    with torch.no_grad():
        cache = DynamicCache(config=model.config.text_config)
        model(**batch, cache=cache, use_cache=True)
        with withdraw(model, layer=layer), pytest.raises(UnsupportedError, match="not filled under the same withdrawal"):
            model(**_decode_inputs(model, batch, cache, torch.tensor([[30], [31]])))


def test_continuation_without_positions_is_refused_where_the_model_would_count_kept_tokens():
    """LFM2 tiny: conv at layer 0, attention at layer 1. Withdrawn at K = 1, transformers would number a
    continuation from layer 1's cache (kept tokens only): without position_ids that is refused; with them exact."""
    from transformers import DynamicCache

    from vtwcli.errors import UnsupportedError

    model = model_of("lfm2_vl", "sdpa")
    batch, _ = batch_of("lfm2_vl")
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    new = torch.tensor([[30], [31]])
    with torch.no_grad(), withdraw(model, layer=1):
        cache = DynamicCache(config=model.config.text_config)
        model(**batch, position_ids=positions, cache=cache, use_cache=True)
        with pytest.raises(UnsupportedError, match="needs position_ids=") as error:
            model(**_decode_inputs(model, batch, cache, new, positions=False))
        assert "\n" not in str(error.value)
        got = model(**_decode_inputs(model, batch, cache, new)).logits[:, -1]
        expected = no_cache_logits(model, _extend(batch, new, model))
    finite = expected.isfinite()
    torch.testing.assert_close(got[finite], expected[finite], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["qwen3_5", "lfm2_vl"])
def test_calibration_recomputes_the_prefix_of_state_layers_and_counts_it(name):
    """The full forward keeps only the state after the whole prompt, so candidates cannot start from a state
    after the shared text prefix: each K re-runs every kept token from column 0, and the cost says so."""
    model = model_of(name, "sdpa", layers=6)
    batch, _ = batch_of(name)
    layers = [1, 2, 3, 4, 5]
    result = shared_prefix_kl(model, batch, layers)
    vision = torch.isin(batch["input_ids"], torch.tensor(FAMILIES[name].vision_ids(model.config)))
    kept_from_column_0 = int((~vision & batch["attention_mask"].bool()).sum())
    assert result.token_layers_candidates == sum(6 - k for k in layers) * kept_from_column_0
    assert result.token_layers_full == 6 * int(batch["attention_mask"].sum())


def test_diagnose_labels_the_attention_layers_of_a_model_with_conv_layers(tmp_path, monkeypatch):
    """--diagnose on LFM2-VL (conv layers 0, 2; attention 1, 3): one attention share per attention layer,
    labelled with that layer, each the last token's attention split into system / vision / text (sum 1)."""
    import yaml

    from vtwcli.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory = save_and_serve(FAMILIES["lfm2_vl"], tmp_path / "model", monkeypatch, num_layers=LAYERS)
    output = tmp_path / "profile.yaml"
    try:
        main(["calibrate", "--model", directory, "--samples", "2", "--dataset", "photo_vqa", "--output", str(output),
              "--no-eval", "--device", "cpu", "--attn", "eager", "--diagnose", "--threshold", "1e9"])
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    diagnose = yaml.safe_load(output.read_text())["calibration"]["diagnose"]
    assert [entry["layer"] for entry in diagnose] == [1, 3]
    for entry in diagnose:
        assert entry["system"] + entry["vision"] + entry["text"] == pytest.approx(1.0, abs=1e-5)
        assert entry["vision"] > 0
