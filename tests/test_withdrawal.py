"""Exactness of withdrawal against independent references (not against the hooks themselves)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import (IMAGE_TOKEN_ID, image_prompt, left_padded_batch, pixel_values, tiny_llava)
from transformers import AutoModelForImageTextToText, DynamicCache

from vtwcli import UnsupportedError, withdraw

ATTN = ["eager", "sdpa"]
LAYERS = 4


def batch():
    """Two rows of different lengths, left padded; row 0 has two images, row 1 one."""
    rows = [image_prompt([1, 7, 8], 2, [9, 10, 11, 12]), image_prompt([1, 7], 1, [13, 14])]
    ids, mask = left_padded_batch(rows)
    return rows, ids, mask, pixel_values(3)


def causal_float_mask(n: int, dtype) -> torch.Tensor:
    mask = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype).triu(1)
    return mask[None, None]


@torch.no_grad()
def naive_withdrawn_logits(model, ids: list[int], pixels: torch.Tensor, layer: int) -> torch.Tensor:
    """One row alone, no cache, no padding: written from the paper's definition, layer by layer."""
    ids_t = torch.tensor(ids)[None]
    lm = model.model.language_model
    embeds = lm.embed_tokens(ids_t)
    vision = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1][:, 1:]
    features = model.model.multi_modal_projector(vision).reshape(-1, embeds.shape[-1])
    embeds = embeds.clone()
    embeds[0, ids_t[0] == IMAGE_TOKEN_ID] = features
    positions = torch.arange(len(ids))[None]
    hidden = embeds
    cos, sin = lm.rotary_emb(hidden, positions)
    for i, decoder_layer in enumerate(lm.layers):
        if i == layer:  # withdraw: keep the text tokens at their original positions
            keep = (ids_t[0] != IMAGE_TOKEN_ID).nonzero().squeeze(1)
            hidden, cos, sin, positions = hidden[:, keep], cos[:, keep], sin[:, keep], positions[:, keep]
        hidden = decoder_layer(hidden, attention_mask=causal_float_mask(hidden.shape[1], hidden.dtype),
                               position_embeddings=(cos, sin), position_ids=positions)
    return model.lm_head(lm.norm(hidden))[0, -1]


def image_slices(rows: list[list[int]], pixels: torch.Tensor) -> list[torch.Tensor]:
    counts = [sum(1 for a, b in zip(r, r[1:] + [None]) if a == IMAGE_TOKEN_ID and b != IMAGE_TOKEN_ID) for r in rows]
    starts = [sum(counts[:i]) for i in range(len(rows))]
    return [pixels[s:s + c] for s, c in zip(starts, counts)]


@pytest.mark.parametrize("attn", ATTN)
def test_layer_L_is_bit_identical(attn):
    model = tiny_llava(LAYERS, attn)
    _, ids, mask, pixels = batch()
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        with withdraw(model, layer=LAYERS):
            withdrawn = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    assert torch.equal(reference, withdrawn)


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("layer", [1, 2, 3])
def test_batched_padded_multi_image_matches_naive_per_row(attn, layer):
    model = tiny_llava(LAYERS, attn)
    rows, ids, mask, pixels = batch()
    with torch.no_grad(), withdraw(model, layer=layer):
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits[:, -1]
    for row, (tokens, row_pixels) in enumerate(zip(rows, image_slices(rows, pixels))):
        expected = naive_withdrawn_logits(model, tokens, row_pixels, layer)
        torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=0)
    # and withdrawal really changes the answer distribution (the test would be vacuous otherwise)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits[:, -1]
    assert (full - logits).abs().max() > 1e-3


def generate_positions(mask: torch.Tensor) -> torch.Tensor:
    # generate() derives positions from the mask cumsum; the no-cache recompute must do the same
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_cached_greedy_generate_equals_no_cache_recompute(attn, cache_implementation):
    model = tiny_llava(LAYERS, attn)
    _, ids, mask, pixels = batch()
    new_tokens = 6
    with torch.no_grad(), withdraw(model, layer=2):
        out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, cache_implementation=cache_implementation)
        sequence, running_mask = ids, mask
        for step in range(new_tokens):
            logits = model(input_ids=sequence, attention_mask=running_mask, pixel_values=pixels,
                           position_ids=generate_positions(running_mask), use_cache=False).logits[:, -1]
            logits[:, IMAGE_TOKEN_ID] = -float("inf")  # generate() suppresses it (see tiny_models)
            torch.testing.assert_close(out.scores[step], logits, atol=1e-4, rtol=0)
            next_token = logits.argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, next_token], dim=1)
            running_mask = torch.cat([running_mask, torch.ones_like(next_token)], dim=1)
    assert torch.equal(out.sequences, sequence)


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_unpadded_decode_steps_skip_the_mask_and_stay_exact(attn, cache_implementation, monkeypatch):
    """One unpadded row: with a dynamic cache the decode steps build no mask for layers >= K (the model
    passes none either); with a static cache they must (empty slots). Either way every step's scores equal
    the naive per-row reference of the whole sequence so far."""
    import vtwcli.withdrawal as engine

    model = tiny_llava(LAYERS, attn)
    row = image_prompt([1, 7, 8], 1, [9, 10, 11])
    ids, pixels = torch.tensor([row]), pixel_values(1)
    built = []
    real_builder = engine.withdrawn_masks
    monkeypatch.setattr(engine, "withdrawn_masks", lambda *a, **k: built.append(1) or real_builder(*a, **k))
    new_tokens = 5
    with torch.no_grad(), withdraw(model, layer=2):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, cache_implementation=cache_implementation)
    sequence = out.sequences[0].tolist()
    for step in range(new_tokens):
        expected = naive_withdrawn_logits(model, sequence[:len(row) + step], pixels, 2)
        expected[IMAGE_TOKEN_ID] = -float("inf")  # generate() suppresses it (see tiny_models)
        torch.testing.assert_close(out.scores[step][0], expected, atol=1e-4, rtol=0)
    decode_masks = len(built) - 1  # the prefill withdraws image tokens: it always builds its mask
    if cache_implementation == "dynamic" and attn == "sdpa":
        assert decode_masks == 0
    if cache_implementation == "static":
        assert decode_masks == new_tokens - 1


@pytest.mark.parametrize("attn", ATTN)
def test_sampling_generate_equals_no_cache_recompute(attn):
    model = tiny_llava(LAYERS, attn)
    _, ids, mask, pixels = batch()
    new_tokens = 5
    with torch.no_grad(), withdraw(model, layer=3):
        torch.manual_seed(123)
        out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
        torch.manual_seed(123)
        sequence, running_mask = ids, mask
        for _ in range(new_tokens):
            logits = model(input_ids=sequence, attention_mask=running_mask, pixel_values=pixels,
                           position_ids=generate_positions(running_mask), use_cache=False).logits[:, -1]
            logits[:, IMAGE_TOKEN_ID] = -float("inf")  # generate() suppresses it (see tiny_models)
            next_token = torch.multinomial(logits.float().softmax(-1), num_samples=1)
            sequence = torch.cat([sequence, next_token], dim=1)
            running_mask = torch.cat([running_mask, torch.ones_like(next_token)], dim=1)
    assert torch.equal(out, sequence)


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_beam_search_cached_equals_uncached(attn, cache_implementation):
    model = tiny_llava(LAYERS, attn)
    _, ids, mask, pixels = batch()
    kwargs = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=5, min_new_tokens=5,
                  num_beams=3, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad(), withdraw(model, layer=2):
        cached = model.generate(**kwargs, cache_implementation=cache_implementation)
        uncached = model.generate(**kwargs, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=1e-4, rtol=0)


def test_withdrawal_shrinks_the_kv_cache_of_layers_from_K():
    model = tiny_llava(LAYERS, "sdpa")
    rows, ids, mask, pixels = batch()
    cache = DynamicCache(config=model.config.text_config)
    with torch.no_grad(), withdraw(model, layer=2):
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels, cache=cache, use_cache=True)
    kept = max(sum(1 for t in r if t != IMAGE_TOKEN_ID) for r in rows)
    assert [cache.layers[i].keys.shape[-2] for i in range(LAYERS)] == [ids.shape[1]] * 2 + [kept] * 2


def test_remove_restores_the_unmodified_model():
    model = tiny_llava(LAYERS, "sdpa")
    _, ids, mask, pixels = batch()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        handle = withdraw(model, layer=1)
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        handle.remove()
        after = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    assert torch.equal(before, after)
    assert "prepare_inputs_for_generation" not in vars(model)
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert all(not layer._forward_pre_hooks for layer in model.model.language_model.layers)


def test_inputs_embeds_with_explicit_vision_mask_matches_input_ids_call():
    model = tiny_llava(LAYERS, "sdpa")
    _, ids, mask, pixels = batch()
    with torch.no_grad():
        with withdraw(model, layer=2):
            from_ids = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        embeds = model.model.get_input_embeddings()(ids)
        features = model.model.get_image_features(pixel_values=pixels).pooler_output
        features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features.reshape(-1, embeds.shape[-1])
        embeds = embeds.masked_scatter((ids == IMAGE_TOKEN_ID)[..., None], features)
        with pytest.raises(UnsupportedError, match="vision_mask"):
            with withdraw(model, layer=2):
                model(inputs_embeds=embeds, attention_mask=mask)
        with withdraw(model, layer=2, vision_mask=ids == IMAGE_TOKEN_ID):
            from_embeds = model(inputs_embeds=embeds, attention_mask=mask).logits
    torch.testing.assert_close(from_embeds, from_ids, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer,match", [(0, "layer 0"), (5, "out of range"), (-1, "out of range"), (1.5, "integer")])
def test_invalid_layers_are_refused(layer, match):
    with pytest.raises(UnsupportedError, match=match):
        withdraw(tiny_llava(LAYERS), layer=layer)


def test_refusals_name_what_is_unsupported():
    model = tiny_llava(LAYERS)
    _, ids, mask, pixels = batch()
    with withdraw(model, layer=2):
        with pytest.raises(UnsupportedError, match="labels"):
            model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=ids)
        model.train()
        with pytest.raises(UnsupportedError, match="train mode"):
            model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        model.eval()
        with torch.no_grad(), pytest.raises(UnsupportedError, match="chunked prefill"):
            cache = DynamicCache(config=model.config.text_config)
            model(input_ids=ids[:, :3], attention_mask=mask[:, :3], cache=cache, use_cache=True)
            model(input_ids=ids, attention_mask=mask, pixel_values=pixels, cache=cache, use_cache=True)
    model.config.image_token_id = None
    with pytest.raises(UnsupportedError, match="no vision token id"):
        withdraw(model, layer=2)
    with pytest.raises(UnsupportedError, match="no vtwcli adapter.*LlavaForConditionalGeneration"):
        withdraw(model.model.language_model, layer=2)


def test_save_pretrained_round_trip_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_llava(LAYERS).save_pretrained(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    _, ids, mask, pixels = batch()
    with torch.no_grad(), withdraw(model, layer=2):
        out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=3,
                             min_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, ids.shape[1] + 3)
