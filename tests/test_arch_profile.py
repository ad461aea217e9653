"""`vtw profile` on every supported family: counted FLOPs per component, the closed form of the text part,
decode FLOPs, KV-cache memory, all from the real CLI on saved tiny models (arch_models.py).

References are written here from the definitions, not taken from vtwcli: the decoder-layer matmul count
of a Llama-style layer (q, k, v, o projections with GQA, QK^T and AV over the full grid, a 3-matrix MLP),
and the KV cache of layers >= K holding the text tokens only.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from arch_models import FAMILIES, HAS_TORCHVISION, save_and_serve

from cli_run import run_cli

LAYERS, K, TEXT = 4, 2, 40


def decoder_layer_flops(text_config, queries: int, keys: int, layer: int = 0) -> int:
    hidden, heads = text_config.hidden_size, text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or hidden // heads
    kv_heads = text_config.num_key_value_heads
    q_and_o = 2 * (2 * queries * hidden * heads * head_dim)
    k_and_v = 2 * (2 * queries * hidden * kv_heads * head_dim)
    scores_and_mix = heads * 2 * (2 * queries * head_dim * keys)
    return q_and_o + k_and_v + scores_and_mix + mlp_flops(text_config, queries, layer)


def mlp_flops(text_config, queries: int, layer: int) -> int:
    """A gated 3-matrix MLP; in a sparse (MoE) layer the router plus the experts each token is routed to
    (top-k) and the shared experts: the active experts only, not all of them."""
    hidden = text_config.hidden_size
    experts = getattr(text_config, "num_experts", None) or getattr(text_config, "n_routed_experts", None)
    sparse = experts is not None and layer >= getattr(text_config, "first_k_dense_replace", 0) and \
        layer not in (getattr(text_config, "mlp_only_layers", None) or []) and \
        (layer + 1) % getattr(text_config, "decoder_sparse_step", 1) == 0
    if not sparse:
        return 3 * (2 * queries * hidden * text_config.intermediate_size)
    routed = text_config.num_experts_per_tok + (getattr(text_config, "n_shared_experts", None) or 0)
    return 2 * queries * hidden * experts + routed * 3 * (2 * queries * hidden * text_config.moe_intermediate_size)


def language_model_flops(text_config, tokens_per_layer: list[int]) -> int:
    """Prefill: layer i runs tokens_per_layer[i] queries over as many keys."""
    return sum(decoder_layer_flops(text_config, n, n, i) for i, n in enumerate(tokens_per_layer))


def sliding_windows(text_config) -> list:
    types = getattr(text_config, "layer_types", None) or [
        "sliding_attention" if getattr(text_config, "sliding_window", None) else "full_attention"] * LAYERS
    return [text_config.sliding_window if kind == "sliding_attention" else None for kind in types[:LAYERS]]


def cache_length(tokens: int, window) -> int:
    return tokens if window is None else min(tokens, window - 1)


def run_json(args: list[str], capsys) -> tuple[int, dict | None, str]:
    code, out, err = run_cli(args, capsys)
    return code, (json.loads(out) if code == 0 else None), err


@pytest.fixture
def saved(tmp_path, monkeypatch):
    """name -> (saved tiny model directory, its config); AutoProcessor serves the stand-in where needed."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def save(name: str):
        directory = save_and_serve(FAMILIES[name], tmp_path / name, monkeypatch, num_layers=LAYERS)
        return directory, transformers.AutoConfig.from_pretrained(directory)

    return save


# Families whose decoder layers are not Llama-shaped have a test of their own below: Gemma 4, and those with
# conv / recurrent layers.
STATE_FAMILIES = ["qwen3_5", "qwen3_5_moe", "lfm2_vl"]
OWN_REFERENCE = {"gemma4", *STATE_FAMILIES}


@pytest.mark.parametrize("name", [name for name in FAMILIES if name not in OWN_REFERENCE])
def test_profile_counts_every_family_per_component(name, saved, capsys):
    directory, config = saved(name)
    code, data, err = run_json(["profile", "--model", directory, "--layer", str(K), "--json", "--device", "cpu",
                                "--text-tokens", str(TEXT), "--image-size", "32x24", "--images", "1", "--new-tokens",
                                "2", "--min-runs", "1", "--min-time", "0", "--max-time", "0", "--warmup", "0"], capsys)
    assert code == 0, err
    flops = data["flops"]
    vision, text = flops["tokens"]["vision"], flops["tokens"]["text"]
    assert text == TEXT and vision > 0 and flops["tokens"]["images"] == 1
    n = vision + text
    text_config = config.text_config
    expected_full = language_model_flops(text_config, [n] * LAYERS)
    expected_withdrawn = language_model_flops(text_config, [n] * K + [text] * (LAYERS - K))
    head = 2 * text_config.hidden_size * text_config.vocab_size  # last position only (logits_to_keep=1)
    base, new = flops["baseline"], flops["withdrawn"]
    assert base["language_model"] == expected_full and new["language_model"] == expected_withdrawn
    assert base["lm_head"] == new["lm_head"] == head
    for variant in (base, new):  # every FLOP is attributed to one component
        assert variant["total"] == variant["vision_tower"] + variant["projector"] + variant["language_model"] + \
            variant["lm_head"]
    assert base["vision_tower"] > 0 and base["projector"] > 0
    assert (new["vision_tower"], new["projector"]) == (base["vision_tower"], base["projector"])
    assert flops["reduction"] == pytest.approx(1 - new["total"] / base["total"])
    # the closed form covers the text part (MoE: the active experts, the dense layers' MLP), and agrees exactly
    assert flops["analytic"]["covers"] == ["language_model", "lm_head"]
    assert flops["analytic"]["baseline"] == {"total": expected_full + head, "language_model": expected_full,
                                             "lm_head": head}
    assert flops["analytic"]["withdrawn"]["language_model"] == expected_withdrawn
    # what each layer caches after prefill: all n tokens, or the text tokens in layers >= K after withdrawal;
    # a sliding-window layer (Gemma 3) keeps only its last window - 1
    windows = sliding_windows(text_config)
    cached = {"baseline": [cache_length(n, w) for w in windows],
              "withdrawn": [cache_length(n if i < K else text, w) for i, w in enumerate(windows)]}
    # one decode step attends over each layer's cache + the new token
    decode = flops["decode_per_token"]
    assert decode["context_tokens"] == {"baseline": cached["baseline"][-1], "withdrawn": cached["withdrawn"][-1]}
    for variant in ("baseline", "withdrawn"):
        expected = sum(decoder_layer_flops(text_config, 1, keys + 1, i)
                       for i, keys in enumerate(cached[variant])) + head
        assert decode[variant] == expected == flops["analytic"]["decode_per_token"][variant], variant
    assert data["memory"]["kv_cache_reduction"] == pytest.approx(1 - sum(cached["withdrawn"]) / sum(cached["baseline"]))
    assert data["latency"]["baseline"]["prefill_ms"]["runs"] >= 1


def test_larger_images_give_anyres_families_more_vision_tokens(saved, capsys):
    directory, _ = saved("qwen2_vl")
    counts = []
    for size in ("16x16", "32x24"):  # both within the tiny processor's pixel bounds: not resized
        code, data, err = run_json(["profile", "--model", directory, "--layer", str(K), "--json", "--device", "cpu",
                                    "--image-size", size, "--images", "2", "--new-tokens", "2", "--min-runs", "1",
                                    "--max-time", "0",
                                    "--min-time", "0", "--warmup", "0"], capsys)
        assert code == 0, err
        counts.append(data["flops"]["tokens"]["vision"])
    # Qwen2-VL: (h/4 * w/4) patches merged 2x2 per image, two images
    assert counts == [2 * (4 * 4) // 4, 2 * (8 * 6) // 4]


@pytest.mark.parametrize("name", ["qwen2_vl", "llava_onevision"])
@pytest.mark.parametrize("kinds", ["image", "video", "image,video"])
def test_profile_with_a_video_withdraws_the_selected_kinds(name, kinds, saved, capsys):
    """An image and a video of 5 frames (--frames) in the prompt; --withdraw picks which are withdrawn. The KV
    cache of layers >= K loses exactly the withdrawn kind's tokens, counted here from the ids of a plain
    processor call on a 5-frame video."""
    import numpy as np
    from PIL import Image

    from vtwcli.prompts import chat_prompt

    directory, config = saved(name)
    code, data, err = run_json(["profile", "--model", directory, "--layer", str(K), "--json", "--device", "cpu",
                                "--images", "1", "--videos", "1", "--frames", "5", "--image-size", "16x16",
                                "--withdraw", kinds,
                                "--new-tokens", "2", "--min-runs", "1", "--min-time", "0", "--max-time", "0",
                                "--warmup", "0"], capsys)
    assert code == 0, err
    assert data["withdrawal"] == {"layer": K, "kinds": kinds.split(",")}
    tokens = data["flops"]["tokens"]
    assert tokens["images"] == 1 and tokens["videos"] == 1 and tokens["frames"] == 5
    # an independent count of each kind's tokens in the same prompt
    processor = transformers.AutoProcessor.from_pretrained(directory)
    frames = np.zeros((5, 16, 16, 3), dtype=np.uint8)
    ids = processor(text=[chat_prompt(processor, 1, "the", videos=1)], images=[[Image.new("RGB", (16, 16))]],
                    videos=[frames], return_tensors="pt")["input_ids"][0]
    per_kind = {"image": int((ids == config.image_token_id).sum()), "video": int((ids == config.video_token_id).sum())}
    assert per_kind["image"] > 0 and per_kind["video"] > 0
    withdrawn = sum(per_kind[k] for k in kinds.split(","))
    assert tokens["vision"] == withdrawn
    n = tokens["vision"] + tokens["text"]
    assert data["flops"]["decode_per_token"]["context_tokens"] == {"baseline": n, "withdrawn": n - withdrawn}
    assert data["memory"]["kv_cache_reduction"] == pytest.approx((LAYERS - K) / LAYERS * withdrawn / n)


# What the real processors write for two temporal patches / four frames sampled 0.5 s apart (2 fps): Qwen3-VL the mean
# time of each patch's two frames (0.25, 1.25 s), GLM-4.1V / 4.5V the whole second of each patch's first frame,
# GLM-4.6V with one decimal, Gemma 4 mm:ss per frame. At the 24 fps the processors assume without metadata, every
# one of these would read 0.
VIDEO_TIMESTAMPS = {"qwen3_vl": ["<0.2 seconds>", "<1.2 seconds>"], "qwen3_5": ["<0.2 seconds>", "<1.2 seconds>"],
                    "glm4v": ["<|end_of_image|>0", "<|end_of_image|>1"],
                    "glm46v": ["<|end_of_image|>0.0 seconds", "<|end_of_image|>1.0 seconds"],
                    "gemma4": ["00:00 <|image>", "00:01 <|image>"]}


@pytest.mark.skipif(not HAS_TORCHVISION, reason="the real video processors need torchvision, which does not import "
                    "here (.ci/real-processors runs this)")
@pytest.mark.parametrize("name", list(VIDEO_TIMESTAMPS))
def test_profile_hands_the_real_processor_a_sampled_video(name, tmp_path, capsys, monkeypatch):
    """`vtw profile --videos 1 --frames 4` on a saved tiny model whose real video processor samples frames by default,
    as published (GLM-4V at 2 fps from the video's metadata, which pre-sampled frames lack; Qwen3-VL at 2 fps;
    Gemma 4 32 frames): the run succeeds, all 4 frames reach the model (the vision tokens are what the processor
    makes of the 4 frames taken as given), and the prompt's timestamps are those of frames 0.5 s apart. GLM-4V
    takes the video alone (--images 0): its forward takes images or videos."""
    import numpy as np
    from arch_models import save_family
    from PIL import Image

    from vtwcli.prompts import chat_prompt

    directory, shim = save_family(FAMILIES[name], tmp_path / name, num_layers=LAYERS)
    assert shim is None
    path = tmp_path / name / "processor_config.json"
    files = json.loads(path.read_text())
    files["video_processor"].pop("do_sample_frames")  # the class default, as the published files leave it
    path.write_text(json.dumps(files))
    processor = transformers.AutoProcessor.from_pretrained(directory)
    assert processor.video_processor.do_sample_frames
    texts, tokenize = [], type(processor.tokenizer).__call__

    def recorded(self, *args, **kwargs):
        texts.append(args[0] if args else kwargs.get("text"))
        return tokenize(self, *args, **kwargs)

    monkeypatch.setattr(type(processor.tokenizer), "__call__", recorded)
    images = 0 if name.startswith("glm") else 1
    code, data, err = run_json(["profile", "--model", directory, "--layer", str(K), "--json", "--device", "cpu",
                                "--images", str(images), "--videos", "1", "--frames", "4", "--image-size", "32x24",
                                "--new-tokens", "2", "--min-runs", "1", "--min-time", "0", "--max-time", "0",
                                "--warmup", "0"], capsys)
    assert code == 0, err
    prompt = "".join(str(text) for text in texts)
    for stamp in VIDEO_TIMESTAMPS[name]:
        assert stamp in prompt
    config = transformers.AutoConfig.from_pretrained(directory)
    media = {"images": [[Image.new("RGB", (32, 24))]]} if images else {}
    ids = processor(text=[chat_prompt(processor, images, "the", videos=1)], videos=[np.zeros((4, 24, 32, 3), np.uint8)],
                    do_sample_frames=False, return_tensors="pt", **media)["input_ids"][0]
    assert data["flops"]["tokens"]["frames"] == 4
    assert data["flops"]["tokens"]["vision"] == int(torch.isin(ids, torch.tensor(FAMILIES[name].vision_ids(config))).sum())


def test_withdraw_video_on_a_family_without_video_is_refused(saved, capsys):
    directory, _ = saved("gemma3")
    code, _, err = run_json(["profile", "--model", directory, "--layer", str(K), "--withdraw", "video",
                             "--device", "cpu"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1
    assert "--withdraw video: Gemma 3 has no such tokens; its vision tokens are image" in lines[0]


def gemma4_layer_flops(text_config, queries: int, keys: int, *, own_kv: bool) -> int:
    """A Gemma 4 decoder layer: q and o projections; k and v only where the layer computes its own keys/values
    (a KV-sharing layer reuses another layer's); QK^T and AV over the full grid; a 3-matrix MLP; the per-layer
    input gate (hidden -> ple) and projection (ple -> hidden)."""
    hidden, heads, head_dim = text_config.hidden_size, text_config.num_attention_heads, text_config.head_dim
    kv_heads, ple = text_config.num_key_value_heads, text_config.hidden_size_per_layer_input
    projections = 2 * (2 * queries * hidden * heads * head_dim)
    if own_kv:
        projections += 2 * (2 * queries * hidden * kv_heads * head_dim)
    scores_and_mix = heads * 2 * (2 * queries * head_dim * keys)
    mlp = 3 * (2 * queries * hidden * text_config.intermediate_size)
    per_layer_input = 2 * (2 * queries * hidden * ple)
    return projections + scores_and_mix + mlp + per_layer_input


def test_profile_gemma4_counts_per_layer_inputs_and_kv_shared_layers(saved, capsys):
    """Gemma 4 (layers S S F F, layer 3 reuses layer 2's keys/values): prefill keeps only the last query from the
    KV-shared layer on (generate()'s logits_to_keep=1), withdrawn or not; the shared layer computes no keys or
    values and holds no cache; per-layer inputs cost a model-level projection plus a gate and a projection per
    layer. Written from these definitions, then checked against `vtw profile`'s counts."""
    directory, config = saved("gemma4")
    code, data, err = run_json(["profile", "--model", directory, "--layer", str(K), "--json", "--device", "cpu",
                                "--text-tokens", str(TEXT), "--image-size", "32x24", "--images", "1", "--new-tokens",
                                "2", "--min-runs", "1", "--min-time", "0", "--max-time", "0", "--warmup", "0"],
                               capsys)
    assert code == 0, err
    text_config = config.text_config
    assert text_config.layer_types == ["sliding_attention", "sliding_attention", "full_attention", "full_attention"]
    assert text_config.num_kv_shared_layers == 1
    flops = data["flops"]
    vision, text = flops["tokens"]["vision"], flops["tokens"]["text"]
    assert text == TEXT and vision > 0
    n = vision + text
    ple_projection = lambda tokens: 2 * tokens * text_config.hidden_size * LAYERS * \
        text_config.hidden_size_per_layer_input  # noqa: E731

    def prefill(kept_from: int) -> int:
        # layers < kept_from on all n tokens, layers >= kept_from (< 3) on the text;
        # layer 3: one query over layer 2's keys
        total = ple_projection(n)
        for i in range(3):
            tokens = n if i < kept_from else text
            total += gemma4_layer_flops(text_config, tokens, tokens, own_kv=True)
        keys_of_layer_2 = n if kept_from > 2 else text
        return total + gemma4_layer_flops(text_config, 1, keys_of_layer_2, own_kv=False)

    head = 2 * text_config.hidden_size * text_config.vocab_size
    base, new = flops["baseline"], flops["withdrawn"]
    assert base["language_model"] == prefill(LAYERS) and new["language_model"] == prefill(K)
    assert base["lm_head"] == new["lm_head"] == head
    for variant in (base, new):
        assert variant["total"] == variant["vision_tower"] + variant["projector"] + variant["language_model"] + \
            variant["lm_head"]
    assert base["vision_tower"] > 0 and base["projector"] > 0
    assert (new["vision_tower"], new["projector"]) == (base["vision_tower"], base["projector"])
    # caches after prefill: sliding layers keep window - 1, layer 2 all tokens (the text after withdrawal),
    # layer 3 none of its own
    window = text_config.sliding_window
    cached = {"baseline": [min(n, window - 1), min(n, window - 1), n],
              "withdrawn": [min(n, window - 1), min(n, window - 1), text]}
    decode = flops["decode_per_token"]
    assert decode["context_tokens"] == {"baseline": n, "withdrawn": text}
    for variant in ("baseline", "withdrawn"):
        keys = [c + 1 for c in cached[variant]]
        expected = ple_projection(1) + sum(gemma4_layer_flops(text_config, 1, k, own_kv=True) for k in keys) + \
            gemma4_layer_flops(text_config, 1, keys[2], own_kv=False) + head
        assert decode[variant] == expected, variant
    assert data["memory"]["kv_cache_reduction"] == pytest.approx(1 - sum(cached["withdrawn"]) / sum(cached["baseline"]))
    for variant in ("baseline", "withdrawn"):  # the closed form (vtwcli.measure.text_layers) says the same
        assert flops["analytic"][variant]["language_model"] == flops[variant]["language_model"]


# ---------------------------------------------------------------------------------------------------------
# Families with conv / recurrent layers (Qwen3.5 Gated DeltaNet, Qwen3.5-MoE, LFM2 short conv)


def _mm(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


CHUNK = 64  # transformers' torch_chunk_gated_delta_rule: the prompt in chunks of 64 tokens, padded to a multiple


def closed_form_layer(text, kind: str, tokens: int, keys: int, step: bool = False) -> int:
    """One decoder layer written from the definitions (2 x MACs, matmul work only) and from what transformers'
    torch path multiplies: a prefill into an empty cache, or (``step``) one decode step against a filled one."""
    hidden = text.hidden_size
    if kind in ("linear_attention", "conv"):
        # causal depthwise conv, every output computed counted: prefill pads the input to at least `taps`, then
        # convolves with taps - 1 zeros on both sides; a decode step convolves the cached taps + the new token
        taps = text.linear_conv_kernel_dim if kind == "linear_attention" else text.conv_L_cache
        outputs = 2 if step else max(tokens, taps) + taps - 1
    if kind == "linear_attention":  # Gated DeltaNet: q, k, v, z, a, b, o projections, the conv, the delta rule
        heads, d_k, d_v = text.linear_num_value_heads, text.linear_key_head_dim, text.linear_value_head_dim
        keys_w, values_w = text.linear_num_key_heads * d_k, heads * d_v
        channels = 2 * keys_w + values_w
        if step:  # the recurrence, per value head: read S^T k, write k x delta, output S^T q
            delta_rule = heads * 3 * _mm(1, d_k, d_v)
        else:  # chunked over the padded length P: per chunk of C, k_beta k^T and q k^T (C x C x d_k each), two
            # triangular solves of the C x C system (as the C x C product by the inverse: d_v and d_k columns), the
            # intra-chunk attention times v_new (C x C x d_v), two reads of the state (C x d_k x d_v) and its update
            padded = -(-tokens // CHUNK) * CHUNK
            delta_rule = 2 * heads * padded * (3 * CHUNK * d_k + 2 * CHUNK * d_v + 3 * d_k * d_v)
        mixer = (_mm(tokens, hidden, channels + values_w + 2 * heads) + _mm(tokens, values_w, hidden)
                 + _mm(outputs, channels, taps) + delta_rule)
    elif kind == "conv":  # LFM2 short conv: B, C, x from one projection, depthwise conv, output projection
        mixer = _mm(tokens, hidden, 3 * hidden) + _mm(outputs, hidden, taps) + _mm(tokens, hidden, hidden)
    else:
        heads, kv_heads = text.num_attention_heads, text.num_key_value_heads
        head_dim = getattr(text, "head_dim", None) or hidden // heads
        query_width = heads * head_dim * (2 if text.model_type.startswith("qwen3_5") else 1)  # Qwen3.5: gated query
        mixer = (_mm(tokens, hidden, query_width) + 2 * _mm(tokens, hidden, kv_heads * head_dim)
                 + _mm(tokens, heads * head_dim, hidden) + 2 * heads * _mm(tokens, head_dim, keys))
    if getattr(text, "num_experts", None):  # active experts only: router, top-k routed, shared expert + its gate
        mlp = (_mm(tokens, hidden, text.num_experts) + text.num_experts_per_tok * 3 * _mm(tokens, hidden,
               text.moe_intermediate_size) + 3 * _mm(tokens, hidden, text.shared_expert_intermediate_size)
               + _mm(tokens, hidden, 1))
    else:
        mlp = 3 * _mm(tokens, hidden, text.intermediate_size)  # the tiny LFM2 does not auto-adjust its MLP width
    return mixer + mlp


@torch.no_grad()
def counted_layer(model, index: int, tokens: int) -> int:
    """torch's own FlopCounterMode on decoder layer ``index`` alone, on ``tokens`` tokens from an empty cache
    (MoE experts run by their eager per-expert loop, which torch's counter sees; CPU's fused SDPA kernel gets
    torch's own SDPA formula, and the triangular solve of the chunked Gated DeltaNet A X = B the product by the
    inverse, 2 x (n x n) x columns: the counter has formulas for neither)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
    from transformers import DynamicCache

    def sdpa(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    def solve(a, b, *args, out_shape=None, **kwargs):
        *batch, n, columns = b
        return 2 * int(torch.Size(batch).numel()) * n * n * columns

    text_model = model.model.language_model
    hidden = torch.randn(1, tokens, model.config.text_config.hidden_size)
    positions = torch.arange(tokens)[None]
    if model.config.text_config.model_type.startswith("qwen3_5"):
        positions = positions[None].expand(3, 1, -1)  # M-RoPE's t, h, w rows
    rotary = text_model.rotary_emb(hidden, positions)
    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa, torch.ops.aten.linalg_solve_triangular: solve})
    with counter:
        text_model.layers[index](hidden, position_embeddings=rotary, attention_mask=None,
                                 cache=DynamicCache(config=model.config.text_config))
    return counter.get_total_flops()


# 60 text tokens: with the 12 vision tokens of a 32 x 24 image, Qwen3.5's Gated DeltaNet runs 2 chunks of 64 on the
# whole prompt and 1 on the kept tokens, so withdrawal changes the padding
STATE_TEXT = 60


@pytest.mark.parametrize("name", STATE_FAMILIES)
def test_profile_of_families_with_conv_or_recurrent_layers(name, saved, capsys):
    directory, config = saved(name)
    code, data, err = run_json(["profile", "--model", directory, "--layer", str(K), "--json", "--device", "cpu",
                                "--text-tokens", str(STATE_TEXT), "--image-size", "32x24", "--images", "1",
                                "--new-tokens", "2", "--min-runs", "1", "--min-time", "0", "--max-time", "0",
                                "--warmup", "0"], capsys)
    assert code == 0, err
    flops, text_config = data["flops"], config.text_config
    vision, text = flops["tokens"]["vision"], flops["tokens"]["text"]
    assert text == STATE_TEXT and vision > 0
    n = vision + text
    types = text_config.layer_types[:LAYERS]
    attention = [i for i, kind in enumerate(types) if kind not in ("linear_attention", "conv")]
    assert attention and any(i < K for i, kind in enumerate(types) if kind in ("linear_attention", "conv"))
    if name != "lfm2_vl":
        assert -(-n // CHUNK) == 2 and -(-text // CHUNK) == 1

    # counted prefill: every decoder layer as it costs alone, layers >= K on the text tokens only
    model = transformers.AutoModelForImageTextToText.from_pretrained(directory, experts_implementation="eager").eval()
    per_layer = {tokens: [counted_layer(model, i, tokens) for i in range(LAYERS)] for tokens in (n, text)}
    base, new = flops["baseline"], flops["withdrawn"]
    assert base["language_model"] == sum(per_layer[n])
    assert new["language_model"] == sum(per_layer[n][:K]) + sum(per_layer[text][K:])
    head = 2 * text_config.hidden_size * text_config.vocab_size
    assert base["lm_head"] == new["lm_head"] == head
    assert (new["vision_tower"], new["projector"]) == (base["vision_tower"], base["projector"]) and base["projector"] > 0

    # the closed form (Gated DeltaNet chunked as transformers' torch kernel runs it, short conv, MoE each by their
    # own formula) equals the counted language model, baseline and withdrawn
    analytic = flops["analytic"]
    assert analytic["covers"] == ["language_model", "lm_head"]
    closed = {"baseline": sum(closed_form_layer(text_config, kind, n, n) for kind in types),
              "withdrawn": sum(closed_form_layer(text_config, kind, n if i < K else text, n if i < K else text)
                               for i, kind in enumerate(types))}
    for variant, counted in (("baseline", base), ("withdrawn", new)):
        assert analytic[variant]["language_model"] == counted["language_model"] == closed[variant], variant

    # decode: conv / recurrent layers cost the same whatever the context; attention layers >= K attend over
    # the text only (QK^T and AV: 2 x 2 x heads x head_dim per withdrawn key). The recurrent step's three products
    # per value head are elementwise multiply + sum in transformers: in the closed form, 0 in torch's counter
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    saved_per_step = sum(2 * _mm(1, head_dim, vision) * heads for i in attention if i >= K)
    decode = flops["decode_per_token"]
    assert decode["context_tokens"] == {"baseline": n, "withdrawn": text}  # the last attention layer is >= K
    assert decode["baseline"] - decode["withdrawn"] == saved_per_step
    uncounted = sum(3 * 2 * text_config.linear_key_head_dim * text_config.linear_value_head_dim
                    * text_config.linear_num_value_heads for kind in types if kind == "linear_attention")
    assert (uncounted > 0) == (name != "lfm2_vl")
    for variant, context in (("baseline", [n] * LAYERS), ("withdrawn", [n] * K + [text] * (LAYERS - K))):
        step = sum(closed_form_layer(text_config, kind, 1, context[i] + 1, step=True) for i, kind in enumerate(types))
        assert analytic["decode_per_token"][variant] == step + head, variant
        assert decode[variant] == step + head - uncounted, variant
    # the convention says what these figures assume (transformers' torch kernels)
    assert "causal depthwise convs" in flops["convention"]
    assert ("Gated DeltaNet" in flops["convention"]) == (name != "lfm2_vl")

    # memory: the KV cache of the attention layers shrinks; the conv / recurrent states are fixed-size
    kv_heads = text_config.num_key_value_heads
    kv = {"baseline": sum(2 * kv_heads * head_dim * n * 4 for i in attention),
          "withdrawn": sum(2 * kv_heads * head_dim * (n if i < K else text) * 4 for i in attention)}
    if name == "lfm2_vl":
        state_per_layer = text_config.hidden_size * text_config.conv_L_cache * 4
    else:
        channels = 2 * text_config.linear_num_key_heads * text_config.linear_key_head_dim + \
            text_config.linear_num_value_heads * text_config.linear_value_head_dim
        state_per_layer = (channels * text_config.linear_conv_kernel_dim + text_config.linear_num_value_heads
                           * text_config.linear_key_head_dim * text_config.linear_value_head_dim) * 4
    states = state_per_layer * (LAYERS - len(attention))
    memory = data["memory"]
    for variant in ("baseline", "withdrawn"):
        assert memory[variant]["kv_cache_bytes"] == kv[variant]
        assert memory[variant]["state_bytes"] == states
    assert memory["kv_cache_reduction"] == pytest.approx(1 - kv["withdrawn"] / kv["baseline"])
    assert data["latency"]["withdrawn"]["decode_ms_per_token"]["runs"] >= 1
