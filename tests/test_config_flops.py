"""Config-only FLOPs of dynamic-resolution families (vtwcli.measure.config_flops, `--flops-only`).

References: ``count_flops`` on the loaded tiny model of the same config (the real forward through the real
withdrawal hooks, on the processor's real prompt for an image of that size), and the closed form
(``analytic_flops``) for the language model, lm_head and decode step (Qwen3.5's Gated DeltaNet as transformers' torch
kernels run it: chunked prefill, recurrent decode step).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from arch_models import FAMILIES, HAS_TORCHVISION, image

from vtwcli.measure.config_flops import count_flops_from_config
from vtwcli.measure.flops import analytic_flops, count_flops, meta_model
from cli_run import run_cli

PROMPTS = {"llava_next": "USER: <image>\nwhat color is this ?\nASSISTANT:",
           "llava_onevision": "USER: <image>\n<image>\nwhat color is this ?\nASSISTANT:",
           "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>what color is this ?",
           "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>what ?",
           "gemma3": "<start_of_image>what color is this ?", "internvl": "<IMG_CONTEXT>\nwhat color ?"}
SIZES = {"llava_next": (100, 37), "llava_onevision": (24, 40), "qwen2_vl": (100, 37), "qwen2_5_vl": (48, 48),
         "gemma3": (30, 70), "internvl": (100, 37)}
PLACEHOLDERS = {"llava_next": 1, "llava_onevision": 2, "qwen2_vl": 1, "qwen2_5_vl": 2, "gemma3": 1, "internvl": 1}
# Families whose prompt is N image blocks and a question: several sizes (resized down or kept, wide and tall),
# one and two images
QWEN_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
GLM_BLOCK = "<|begin_of_image|><|image|><|end_of_image|>"
IMAGE_BLOCKS = {"qwen3_vl": QWEN_BLOCK, "qwen3_vl_moe": QWEN_BLOCK, "qwen3_5": QWEN_BLOCK, "qwen3_5_moe": QWEN_BLOCK,
                "glm4v": GLM_BLOCK, "glm4v_moe": GLM_BLOCK, "glm46v": GLM_BLOCK}
SHAPES = [((100, 37), 1), ((20, 44), 2), ((48, 48), 1)]
# Qwen3.5: nine 64 x 64 images (16 tokens each, the tiny processor's cap) make a prompt of over 128 tokens (3 chunks
# of transformers' chunked Gated DeltaNet, padded), whose kept text fills part of one chunk
CHUNKED = [("qwen3_5", (64, 64), 9), ("qwen3_5_moe", (64, 64), 9)]
CASES = [(name, SIZES[name], PLACEHOLDERS[name]) for name in PROMPTS] + \
    [(name, size, images) for name in IMAGE_BLOCKS for size, images in SHAPES] + CHUNKED


def prompt_of(name: str, images: int) -> str:
    if name in SIZED:
        return sized_prompt(name, images)
    return PROMPTS[name] if name in PROMPTS else IMAGE_BLOCKS[name] * images + "what color is this ?"


def uncounted_decode(text) -> int:
    """FLOPs of a decode step the closed form has and torch's counter does not: 2 x 3 x d_k x d_v per value head of
    every Gated DeltaNet layer (0 without such layers)."""
    layers = sum(kind == "linear_attention" for kind in (getattr(text, "layer_types", None) or ()))
    return layers and layers * 2 * 3 * text.linear_key_head_dim * text.linear_value_head_dim * \
        text.linear_num_value_heads


@pytest.mark.parametrize("name, size, images", CASES, ids=[f"{n}-{w}x{h}-{i}" for n, (w, h), i in CASES])
def test_config_only_flops_equal_the_loaded_model_count_and_the_closed_form(name, size, images):
    family = FAMILIES[name]
    model = family.build(4, "sdpa", 0)
    model.config.architectures = [family.architecture]
    total, vision = assert_config_only_equals_loaded(model, family, family.processor(), prompt_of(name, images), size,
                                                     images, (1, 3))
    if (name, size, images) in CHUNKED:
        assert total > 2 * 64 and total - vision < 64


# Families whose vision-token rule reads the image processor's resizing / tiling: (prompt with {} where the image
# placeholders go, placeholder). Sizes chosen to exercise each rule: Idefics3 / SmolVLM tiles (tile 16 px of an image
# shrunk to 32 px: 100x37 -> 1 x 2 tiles + the global view, 40x44 -> 2 x 2), Pixtral's rounding up to whole merged
# patches (13x7 -> 16x8) and shrinking to the longest edge, Gemma 4's 70-token budget (200x200 shrunk to 64x64).
USER_TURN = ("USER: {}what color ?\nASSISTANT:", "<image>")
SIZED = {"gemma4": ("<|turn>user\n{}what color ?<turn|>\n<|turn>model\n", "<|image|>"),
         "idefics3": USER_TURN, "smolvlm": USER_TURN, "idefics2": USER_TURN,
         "mistral3": ("[INST]{}what color ?[/INST]", "[IMG]"), "lighton_ocr": ("[INST]{}what color ?[/INST]", "[IMG]"),
         "vipllava": USER_TURN, "paligemma": ("{}what color ?", "<image>"), "deepseek_vl": USER_TURN,
         "janus": USER_TURN, "video_llava": USER_TURN, "llava_next_video": USER_TURN, "granite4_vision": USER_TURN,
         "aya_vision": USER_TURN, "cohere2_vision": ("USER: {}what color ?\nASSISTANT:", "<|IMG_PATCH|>"),
         "ovis2": USER_TURN, "lfm2_vl": USER_TURN}
# The real processors of Cohere2 Vision and LFM2-VL need torchvision (.ci/real-processors runs them)
needs_torchvision = pytest.mark.skipif(not HAS_TORCHVISION, reason="the processor of transformers needs torchvision, "
                                       "which does not import here")
SIZED_CASES = [("gemma4", (100, 37), 1), ("gemma4", (30, 70), 2), ("gemma4", (200, 200), 1),
               ("idefics3", (100, 37), 1), ("idefics3", (40, 44), 2), ("smolvlm", (7, 90), 1), ("smolvlm", (64, 64), 2),
               ("idefics2", (100, 37), 2), ("mistral3", (100, 37), 1), ("mistral3", (13, 7), 2),
               ("mistral3", (20, 44), 2), ("lighton_ocr", (100, 37), 2),
               # one count per image whatever its size
               ("vipllava", (100, 37), 1), ("vipllava", (20, 44), 2), ("paligemma", (100, 37), 1),
               ("paligemma", (13, 90), 2), ("deepseek_vl", (100, 37), 2), ("janus", (20, 44), 1), ("janus", (64, 64), 2),
               ("video_llava", (100, 37), 1), ("video_llava", (20, 44), 2),
               # anyres: 100x37 -> the 32x16 pinpoint (padding rows removed), 20x44 -> 16x32, 64x64 -> 32x32;
               # Granite4-Vision's grids halved (downsample_rate 1/2), its features entering through DeepStack only
               ("llava_next_video", (100, 37), 1), ("llava_next_video", (20, 44), 2), ("llava_next_video", (64, 64), 1),
               ("granite4_vision", (100, 37), 1), ("granite4_vision", (20, 44), 2), ("granite4_vision", (13, 90), 1),
               # tiles (+ a global view / thumbnail when more than one): 16 px tiles, at most 4
               ("aya_vision", (100, 37), 1), ("aya_vision", (20, 44), 2), ("aya_vision", (16, 16), 1),
               ("ovis2", (100, 37), 1), ("ovis2", (64, 64), 2), ("ovis2", (16, 16), 1),
               pytest.param("cohere2_vision", (100, 37), 1, marks=needs_torchvision),
               pytest.param("cohere2_vision", (24, 16), 2, marks=needs_torchvision),  # upscaled to 2 x 1 tiles
               pytest.param("cohere2_vision", (13, 90), 1, marks=needs_torchvision),
               # LFM2-VL (one view: smart-resized within 16 tokens; tiling below)
               pytest.param("lfm2_vl", (100, 37), 1, marks=needs_torchvision),
               pytest.param("lfm2_vl", (20, 44), 2, marks=needs_torchvision)]


def sized_prompt(name: str, images: int) -> str:
    text, placeholder = SIZED[name]
    return text.format(placeholder * images)


def assert_config_only_equals_loaded(model, family, processor, prompt: str, size: tuple[int, int], images: int,
                                     layers: tuple[int, ...]) -> None:
    """count_flops_from_config on the meta model of ``model``'s config == count_flops on ``model`` with the
    processor's prompt for ``images`` images of ``size``; language model, lm_head and decode == the closed form.
    Returns the prompt's (tokens, vision tokens)."""
    inputs = dict(processor(text=[prompt], images=[[image(*size, i) for i in range(images)]], return_tensors="pt"))
    inputs.pop("labels", None)  # PaliGemma's processor adds training labels; inference takes none
    ids = inputs["input_ids"][0]
    vision = int(torch.isin(ids, torch.tensor(family.vision_ids(model.config))).sum())
    meta = meta_model(model.config)
    for layer in layers:
        expected = count_flops(model, inputs, layer)
        got, counts = count_flops_from_config(meta, processor.image_processor, layer=layer, images=images,
                                              image_size=size, text_tokens=len(ids) - vision)
        assert counts.vision_tokens == vision
        assert got == expected
        closed = analytic_flops(model.config, counts, layer, vision=False)
        for variant in ("baseline", "withdrawn"):
            assert closed[variant]["language_model"] == got[variant]["language_model"]
            assert closed[variant]["lm_head"] == got[variant]["lm_head"]
            # Gated DeltaNet (Qwen3.5): a decode step's recurrence, three (d_k x d_v) products per value head, is
            # elementwise multiply + sum in transformers, which torch's counter counts 0; the closed form has it
            assert closed["decode_per_token"][variant] - uncounted_decode(model.config.get_text_config()) == \
                got["decode_per_token"][variant]
        if layer < model.config.get_text_config().num_hidden_layers:  # K = L withdraws nothing
            assert got["withdrawn"]["language_model"] < got["baseline"]["language_model"]
    return len(ids), vision


@pytest.mark.parametrize("name, size, images", SIZED_CASES)
def test_config_only_flops_of_resizing_and_tiling_families_equal_the_loaded_model_count(name, size, images):
    """Gemma 4, Idefics2/3, SmolVLM, Mistral3, LightOnOCR, VipLLaVA, PaliGemma, DeepSeek-VL, Janus, Video-LLaVA,
    LLaVA-NeXT-Video, Granite4-Vision, Aya Vision, Cohere2 Vision, Ovis2, LFM2-VL: the rule's token count is what
    the processor inserted, and every figure equals the loaded tiny model's count (Gemma 4 at its exact K: layer 3
    shares layer 2's keys/values)."""
    family = FAMILIES[name]
    model = family.build(4, "sdpa", 0)
    model.config.architectures = [family.architecture]
    assert_config_only_equals_loaded(model, family, family.processor(), sized_prompt(name, images), size, images,
                                     (1, 2) if name == "gemma4" else (1, 3))


@needs_torchvision
@pytest.mark.parametrize("size, images", [((100, 37), 1), ((90, 60), 2), ((13, 90), 1)])
def test_config_only_flops_of_lfm2_vl_tiles_equal_the_loaded_model_count(size, images):
    """LFM2-VL with image splitting on (16 px tiles, 2 to 4 of them, and the thumbnail): 100x37 and 90x60 are too
    big for one view and are tiled, 13x90 is not; the config-only count equals the loaded model's, per component."""
    from arch_models import lfm2_vl_tiling_processor

    family = FAMILIES["lfm2_vl"]
    model = family.build(4, "sdpa", 0)
    model.config.architectures = [family.architecture]
    assert_config_only_equals_loaded(model, family, lfm2_vl_tiling_processor(), sized_prompt("lfm2_vl", images), size,
                                     images, (1, 3))


def test_config_only_flops_of_gemma4_with_wide_full_layers_and_shared_keys():
    """Gemma 4 with its real model's variations: full layers of another head width and kv-head count whose keys
    are their values (attention_k_eq_v), two KV-sharing layers with double-wide MLPs; K = 3 (layer 5 reads layer
    2's keys/values) is refused in one line like withdraw() refuses it."""
    from arch_models import tiny_gemma4

    from vtwcli.errors import UnsupportedError

    family = FAMILIES["gemma4"]
    model = tiny_gemma4(6, "sdpa", 0, global_head_dim=16, num_global_key_value_heads=1, attention_k_eq_v=True,
                        use_double_wide_mlp=True, num_kv_shared_layers=2)
    model.config.architectures = [family.architecture]
    assert model.config.text_config.kv_sharing_modes == [None, None, "store", "store", "reuse", "reuse"]
    processor = family.processor()
    assert_config_only_equals_loaded(model, family, processor, sized_prompt("gemma4", 2), (100, 37), 2, (1, 2, 6))
    with pytest.raises(UnsupportedError, match="^withdrawal at layer 3 cannot be exact on this model: layer 5 reuses "
                                               "the keys/values of layer 2.*use a layer in 1..2, 6"):
        count_flops_from_config(meta_model(model.config), processor.image_processor, layer=3, image_size=(100, 37),
                                text_tokens=8)


REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["llava_next", "gemma3", "qwen3_vl_moe", "qwen3_5", "glm4v_moe", "smolvlm",
                                  "mistral3", "gemma4", "granite4_vision", "ovis2", "paligemma"])
def test_vtw_profile_flops_only_reads_a_config_only_directory(name, tmp_path, capsys):
    """config.json + preprocessor_config.json, no weights, no tokenizer: `vtw profile --flops-only` counts the
    same FLOPs as the loaded model of that config on the real processor's prompt."""
    import json

    family = FAMILIES[name]
    model = family.build(4, "sdpa", 0)  # Qwen3.5: three Gated DeltaNet layers, then attention
    model.config.architectures = [family.architecture]
    model.config.save_pretrained(tmp_path)
    processor = family.processor()
    processor.image_processor.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "preprocessor_config.json"]
    width, height = 100, 37
    prompt = prompt_of(name, 1)
    inputs = dict(processor(text=[prompt], images=[[image(width, height, 0)]], return_tensors="pt"))
    inputs.pop("labels", None)  # PaliGemma's processor adds training labels; inference takes none
    vision = int(torch.isin(inputs["input_ids"][0], torch.tensor(family.vision_ids(model.config))).sum())
    text = inputs["input_ids"].shape[1] - vision
    code, out, err = run_cli(["profile", "--model", str(tmp_path), "--flops-only", "--layer", "1", "--image-size",
                              f"{width}x{height}", "--text-tokens", str(text), "--json"], capsys)
    assert code == 0, err
    flops = json.loads(out)["flops"]
    expected = count_flops(model, inputs, 1)
    assert flops["tokens"] == {"vision": vision, "text": text, "images": 1}
    for variant in ("baseline", "withdrawn"):
        assert flops[variant] == expected[variant]
    assert flops["decode_per_token"]["withdrawn"] == expected["decode_per_token"]["withdrawn"]


def test_flops_only_without_preprocessor_config_is_one_line(tmp_path, capsys):
    family = FAMILIES["qwen2_vl"]
    model = family.build(2, "sdpa", 0)
    model.config.architectures = [family.architecture]
    model.config.save_pretrained(tmp_path)
    code, _, err = run_cli(["profile", "--model", str(tmp_path), "--flops-only", "--layer", "1"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "needs preprocessor_config.json beside config.json" in lines[0]


@pytest.mark.parametrize("name, patches_per_side, merge", [("qwen2.5-vl-7b-flops", 448 // 14, 2),
                                                          ("qwen3-vl-8b-flops", 512 // 16, 2),
                                                          ("gemma-3-27b-flops", 896 // 14, 4)])
def test_committed_config_only_profiles_match_their_shapes(name, patches_per_side, merge):
    """The committed config-only profiles: one 448 px image is (448/14)^2 patches merged 2x2 for Qwen2.5-VL, one
    512 px image (512/16)^2 patches merged 2x2 for Qwen3-VL, one 896 px image (896/14)^2 patches pooled 4x4 for
    Gemma 3: 256 tokens each; and the counted language model equals the closed form (CI re-counts them:
    .ci/regression)."""
    import yaml

    flops = yaml.safe_load((REPO / "profiles" / f"{name}.yaml").read_text())["flops"]
    assert flops["tokens"]["vision"] == (patches_per_side // merge) ** 2 == 256
    for variant in ("baseline", "withdrawn"):
        assert flops["analytic"][variant]["language_model"] == flops[variant]["language_model"]
    assert flops["withdrawn"]["vision_tower"] == flops["baseline"]["vision_tower"] > 0
    assert flops["reduction"] > 0.25


def test_committed_mistral_small_profile_matches_its_shapes():
    """The committed config-only Mistral-Small-3.1-24B profile: one 1540 px image is (1540 / (14 x 2))^2 merged
    patches (the longest edge Pixtral accepts, in 14 px patches merged 2x2), 40 layers withdrawn at 20; the counted
    language model equals the closed form (CI re-counts it: .ci/regression)."""
    import yaml

    profile = yaml.safe_load((REPO / "profiles" / "mistral-small-3.1-24b-flops.yaml").read_text())
    flops = profile["flops"]
    assert flops["tokens"] == {"vision": (1540 // (14 * 2)) ** 2, "text": 64, "images": 1}
    assert (profile["model"]["num_layers"], profile["withdrawal"]["layer"]) == (40, 20)
    for variant in ("baseline", "withdrawn"):
        assert flops["analytic"][variant]["language_model"] == flops[variant]["language_model"]
        assert flops["analytic"]["decode_per_token"][variant] == flops["decode_per_token"][variant]
    assert flops["withdrawn"]["vision_tower"] == flops["baseline"]["vision_tower"] > 0
    assert flops["decode_per_token"]["context_tokens"] == {"baseline": 3025 + 64, "withdrawn": 64}


# ------------------------------------------------------------------------------------------------------ videos
# The real video processors of transformers need torchvision (.ci/real-processors runs these); here without it,
# `--flops-only --videos` is one line (tests/test_adversarial.py).
QWEN_VIDEO = (QWEN_BLOCK, "<|vision_start|><|video_pad|><|vision_end|>")
GLM_VIDEO = (GLM_BLOCK, "<|begin_of_video|><|video|><|end_of_video|>")
VIDEO_PROMPTS = {"qwen2_vl": QWEN_VIDEO, "qwen2_5_vl": QWEN_VIDEO, "llava_onevision": ("<image>\n", "<video>\n"),
                 "qwen3_vl": QWEN_VIDEO, "qwen3_vl_moe": QWEN_VIDEO, "qwen3_5": QWEN_VIDEO, "qwen3_5_moe": QWEN_VIDEO,
                 "glm4v": GLM_VIDEO, "glm4v_moe": GLM_VIDEO, "glm46v": GLM_VIDEO, "gemma4": ("<|image|>", "<|video|>")}
# GLM-4V: its video frames are <|image|> tokens (mm_token_type_ids 2) and its forward takes images or videos
GLM_VIDEOS = {"glm4v", "glm4v_moe", "glm46v"}
# (images, videos, frames, W x H): odd frame counts for Qwen's temporal patch of 2 (the processor repeats the
# last frame), a video alone, two videos beside an image; one frame where the processor takes fewer frames than
# the temporal patch (Qwen2-VL, OneVision), else two
VIDEO_CASES = [(1, 1, 3, (100, 37)), (0, 1, 4, (48, 48)), (1, 2, 5, (24, 40)), (0, 2, 1, (64, 30))]
FULL_PATCH_CASES = VIDEO_CASES[:3] + [(0, 2, 2, (64, 30))]  # Qwen3-VL, Qwen3.5: 1 frame is refused
# Gemma 4: ~63 tokens per frame (70 at most) and a context of 512: two videos of 2 frames beside the image
GEMMA4_CASES = VIDEO_CASES[:2] + [(1, 2, 2, (24, 40)), VIDEO_CASES[3]]
GLM_CASES = [(0, videos, frames, size) for _, videos, frames, size in FULL_PATCH_CASES]
FAMILY_VIDEO_CASES = [(name, *case) for name in VIDEO_PROMPTS for case in
                      (GLM_CASES if name in GLM_VIDEOS else GEMMA4_CASES if name == "gemma4" else
                       VIDEO_CASES if name in ("qwen2_vl", "qwen2_5_vl", "llava_onevision") else FULL_PATCH_CASES)]


def clips(videos: int, frames: int, width: int, height: int, seed: int = 7) -> list:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(frames, height, width, 3), dtype=np.uint8) for _ in range(videos)]


def video_prompt(name, processor, images, videos, frames, width, height):
    """The real processor's prompt of ``images`` images and ``videos`` videos of ``frames`` frames, every frame
    taken (do_sample_frames=False: the frames arrive sampled)."""
    image_tag, video_tag = VIDEO_PROMPTS[name]
    text = image_tag * images + video_tag * videos + "what color is this ?"
    media = {"images": [[image(width, height, i) for i in range(images)]]} if images else {}
    return dict(processor(text=[text], videos=clips(videos, frames, width, height), return_tensors="pt",
                          do_sample_frames=False, **media))


def inserted_tokens(name: str, config, inputs: dict) -> dict:
    """Image and video tokens of a prompt, read off the processor's output: by their ids, or (GLM-4V, whose video
    frames carry the image token) by the processor's own mm_token_type_ids (1 image, 2 video)."""
    ids = inputs["input_ids"][0]
    if name in GLM_VIDEOS:
        types, pads = inputs["mm_token_type_ids"][0], ids == config.image_token_id
        return {"image": int((pads & (types == 1)).sum()), "video": int((pads & (types == 2)).sum())}
    return {kind: int((ids == getattr(config, f"{kind}_token_id")).sum()) for kind in ("image", "video")}


def check_closed_form(config, counts, layer: int, got: dict) -> None:
    """The language model, lm_head and decode step of the closed form (Gated DeltaNet's decode: up to the recurrence
    torch's counter does not see, uncounted_decode)."""
    closed = analytic_flops(config, counts, layer, vision=False)
    for variant in ("baseline", "withdrawn"):
        assert closed[variant]["language_model"] == got[variant]["language_model"]
        assert closed[variant]["lm_head"] == got[variant]["lm_head"]
        assert closed["decode_per_token"][variant] - uncounted_decode(config.get_text_config()) == \
            got["decode_per_token"][variant]


@needs_torchvision
@pytest.mark.parametrize("name, images, videos, frames, size", FAMILY_VIDEO_CASES,
                         ids=[f"{n}-{i}i-{v}v-{f}f-{w}x{h}" for n, i, v, f, (w, h) in FAMILY_VIDEO_CASES])
def test_config_only_video_flops_equal_the_loaded_model_count_and_the_closed_form(name, images, videos, frames, size):
    """Videos of F frames of W x H (with or without images): the config-only count equals count_flops on the loaded
    tiny model of the same config, on the real processor's prompt, per component; withdrawing only the images
    keeps the video tokens (and vice versa; GLM-4V: `image` withdraws its video frames too, they are image
    tokens); the language model and lm_head equal the closed form."""
    family = FAMILIES[name]
    model = family.build(4, "sdpa", 0)
    model.config.architectures = [family.architecture]
    processor = family.processor()
    width, height = size
    inputs = video_prompt(name, processor, images, videos, frames, width, height)
    ids = inputs["input_ids"][0]
    inserted = inserted_tokens(name, model.config, inputs)
    assert inserted["video"] > 0 and (inserted["image"] > 0) == (images > 0)
    meta = meta_model(model.config)
    # K = 3: below it Qwen3-VL's DeepStack reaches the kind kept (refused, test_deepstack_keeping_a_kind_is_refused_alike);
    # Gemma 4: K <= 2 (layer 3 shares layer 2's keys/values), both kinds together (test_gemma4_keeping_a_kind_...)
    selections = ((3, ("image",)),) if name in GLM_VIDEOS else () if name == "gemma4" else \
        ((3, ("image",)), (3, ("video",))) if images else ()
    for layer, kinds in ((1, None), (2 if name == "gemma4" else 3, None), *selections):
        expected = count_flops(model, inputs, layer, kinds=kinds)
        got, counts = count_flops_from_config(meta, processor.image_processor if images else None, layer=layer,
                                              images=images, image_size=size, videos=videos, frames=frames,
                                              video_processor=processor.video_processor, kinds=kinds,
                                              text_tokens=len(ids) - sum(inserted.values()))
        withdrawn = sum(inserted.values()) if kinds is None or name in GLM_VIDEOS else inserted[kinds[0]]
        assert (counts.vision_tokens, counts.total, counts.frames) == (withdrawn, len(ids), frames)
        assert got == expected
        check_closed_form(model.config, counts, layer, got)


@needs_torchvision
def test_deepstack_keeping_a_kind_is_refused_alike():
    """Qwen3-VL injects DeepStack features into the vision tokens up to layer 3 (three DeepStack levels): withdrawing
    only the images at K = 2 would keep video tokens those injections reach; the loaded model's hooks refuse it,
    and the config-only count refuses it with the same line (it does not count an inexact withdrawal)."""
    from vtwcli.errors import UnsupportedError

    family = FAMILIES["qwen3_vl"]
    model = family.build(4, "sdpa", 0)
    model.config.architectures = [family.architecture]
    processor = family.processor()
    inputs = video_prompt("qwen3_vl", processor, 1, 1, 4, 48, 48)
    vision = sum(inserted_tokens("qwen3_vl", model.config, inputs).values())
    with pytest.raises(UnsupportedError) as loaded:
        count_flops(model, inputs, 2, kinds=("image",))
    with pytest.raises(UnsupportedError) as config_only:
        count_flops_from_config(meta_model(model.config), processor.image_processor, layer=2, images=1,
                                image_size=(48, 48), videos=1, frames=4, video_processor=processor.video_processor,
                                kinds=("image",), text_tokens=inputs["input_ids"].shape[1] - vision)
    assert str(config_only.value) == str(loaded.value)
    assert "DeepStack vision features to every vision token up to decoder layer 3" in str(loaded.value)


@needs_torchvision
@pytest.mark.parametrize("cap", [False, True])
def test_qwen_video_rule_is_what_the_video_processor_makes(cap):
    """Tokens of one video by the rule (vision_tokens.merged_video_patches) = the real video processor's grid / 2^2
    over sizes and frame counts, with and without the per-frame pixel cap (a budget small enough to bind)."""
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from vtwcli.vision_tokens import merged_video_patches

    config = FAMILIES["qwen2_vl"].build(1, "sdpa", 0).config
    videos = Qwen2VLVideoProcessor(patch_size=4, merge_size=2, temporal_patch_size=2, cap_pixels_per_frame=cap,
                                   max_video_tokens=30, size={"shortest_edge": 8 * 8, "longest_edge": 32 * 32})
    capped = 0
    for frames in (1, 2, 3, 8):
        for width, height in ((100, 37), (32, 32), (300, 200), (9, 90)):
            grid = videos(videos=clips(1, frames, width, height), return_tensors="pt")["video_grid_thw"][0]
            uncapped = videos.get_num_of_video_patches(frames, height, width, {}) // 4
            assert merged_video_patches(config, videos, frames, width, height) == int(grid.prod()) // 4
            capped += int(grid.prod()) // 4 < uncapped
    assert (capped > 0) == cap


@needs_torchvision
def test_gemma4_keeping_a_kind_is_refused_alike():
    """Gemma 4's image and video tokens attend bidirectionally inside their blocks: withdrawing one kind would keep
    the other's blocks, which layers >= K (causal) cannot rebuild. Refused by the loaded model's hooks and by the
    config-only count with the same line; a prompt without the kept kind is counted."""
    from vtwcli.errors import UnsupportedError

    family = FAMILIES["gemma4"]
    model = family.build(4, "sdpa", 0)
    model.config.architectures = [family.architecture]
    processor = family.processor()
    meta = meta_model(model.config)
    inputs = video_prompt("gemma4", processor, 1, 1, 2, 40, 30)
    text = inputs["input_ids"].shape[1] - sum(inserted_tokens("gemma4", model.config, inputs).values())
    options = dict(layer=2, image_size=(40, 30), frames=2, video_processor=processor.video_processor)
    for kinds in (("image",), ("video",)):
        with pytest.raises(UnsupportedError) as loaded:
            count_flops(model, inputs, 2, kinds=kinds)
        with pytest.raises(UnsupportedError) as config_only:
            count_flops_from_config(meta, processor.image_processor, images=1, videos=1, kinds=kinds, text_tokens=text,
                                    **options)
        assert str(config_only.value) == str(loaded.value) and "attend bidirectionally" in str(loaded.value)
    alone = video_prompt("gemma4", processor, 0, 1, 2, 40, 30)
    text = alone["input_ids"].shape[1] - sum(inserted_tokens("gemma4", model.config, alone).values())
    got, _ = count_flops_from_config(meta, None, images=0, videos=1, kinds=("video",), text_tokens=text, **options)
    assert got == count_flops(model, alone, 2, kinds=("video",))


@needs_torchvision
@pytest.mark.parametrize("processor_class, cap", [("qwen3_vl", None), ("qwen3_vl", True), ("glm4v", None),
                                                  ("glm46v", None)])
def test_qwen3_and_glm_video_rule_is_what_the_video_processor_makes(processor_class, cap):
    """Tokens of one video by the rule (vision_tokens.video_patches) = the real video processor's grid / 2^2 over sizes
    and frame counts (the pixel bounds hold for all frames together, so more frames shrink each one), with Qwen3-VL's
    per-frame cap off and on (a budget small enough to bind); fewer frames than the temporal patch: both refuse."""
    from transformers.models.glm4v.video_processing_glm4v import Glm4vVideoProcessor
    from transformers.models.glm46v.video_processing_glm46v import Glm46VVideoProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    from vtwcli.vision_tokens import video_patches

    cls = {"qwen3_vl": Qwen3VLVideoProcessor, "glm4v": Glm4vVideoProcessor, "glm46v": Glm46VVideoProcessor}
    options = dict(cap_pixels_per_frame=cap, max_video_tokens=4) if processor_class == "qwen3_vl" else {}
    videos = cls[processor_class](patch_size=4, merge_size=2, temporal_patch_size=2, do_sample_frames=False,
                                  size={"shortest_edge": 8 * 8, "longest_edge": 64 * 64}, **options)
    config = FAMILIES[processor_class].build(1, "sdpa", 0).config
    shrunk = capped = 0
    for width, height in ((100, 37), (32, 32), (300, 200), (9, 90)):
        tokens = {}
        for frames in (2, 3, 8, 17):
            grid = videos(videos=clips(1, frames, width, height), return_tensors="pt")["video_grid_thw"][0]
            tokens[frames] = merged = video_patches(config, videos, frames, width, height)
            assert merged == int(grid.prod()) // 4
            assert int(grid[0]) == -(-frames // 2)  # frames padded to a multiple of the temporal patch
            capped += cap is True and int(grid[1] * grid[2]) // 4 == 4  # max_video_tokens per frame
        shrunk += tokens[17] / 9 < tokens[2]
        with pytest.raises(ValueError, match="must be larger than temporal_factor"):
            video_patches(config, videos, 1, width, height)
        with pytest.raises(ValueError, match="must be larger than temporal_factor"):
            videos(videos=clips(1, 1, width, height), return_tensors="pt")
    assert shrunk > 0 and (capped > 0) == (cap is True)


@needs_torchvision
@pytest.mark.parametrize("max_soft_tokens", [70, 280])
def test_gemma4_video_rule_is_what_the_video_processor_makes(max_soft_tokens):
    """Tokens of one video by the rule (vision_tokens.pooled_patches_per_frame) = F x the soft tokens per frame the
    real Gemma4VideoProcessor reports, over sizes kept, shrunk and grown, and frame counts."""
    from transformers.models.gemma4.video_processing_gemma4 import Gemma4VideoProcessor

    from vtwcli.vision_tokens import pooled_patches_per_frame

    videos = Gemma4VideoProcessor(patch_size=4, pooling_kernel_size=2, max_soft_tokens=max_soft_tokens,
                                  do_sample_frames=False)
    config = FAMILIES["gemma4"].build(4, "sdpa", 0).config
    for frames in (1, 3):
        for width, height in ((100, 37), (32, 32), (300, 200), (9, 90), (16, 8)):
            out = videos(videos=clips(1, frames, width, height), return_tensors="pt")
            assert out["pixel_values_videos"].shape[0] == frames
            per_frame = int(torch.as_tensor(out["num_soft_tokens_per_video"])[0])
            assert pooled_patches_per_frame(config, videos, frames, width, height) == frames * per_frame > 0


@needs_torchvision
@pytest.mark.parametrize("name", ["qwen2_5_vl", "llava_onevision", "qwen3_vl", "glm46v", "gemma4"])
def test_vtw_profile_flops_only_counts_videos_from_a_config_only_directory(name, tmp_path, capsys):
    """config.json + the processor config files, no weights, no tokenizer: `vtw profile --flops-only --videos 2
    --frames 3` counts what the loaded model of that config counts on the real processor's prompt."""
    import json

    family = FAMILIES[name]
    model = family.build(4 if name == "gemma4" else 2, "sdpa", 0)  # Gemma 4: sliding, sliding, full, shared full
    model.config.architectures = [family.architecture]
    model.config.save_pretrained(tmp_path)
    processor = family.processor()
    processor.image_processor.save_pretrained(tmp_path)
    processor.video_processor.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "preprocessor_config.json",
                                                         "video_preprocessor_config.json"]
    width, height = 100, 37
    images = 0 if name in GLM_VIDEOS else 1  # GLM-4V's forward takes images or videos
    inputs = video_prompt(name, processor, images, 2, 3, width, height)
    vision = sum(inserted_tokens(name, model.config, inputs).values())
    text = inputs["input_ids"].shape[1] - vision
    code, out, err = run_cli(["profile", "--model", str(tmp_path), "--flops-only", "--layer", "1", "--image-size",
                              f"{width}x{height}", "--text-tokens", str(text), "--videos", "2", "--frames", "3",
                              "--images", str(images), "--json"], capsys)
    assert code == 0, err
    flops = json.loads(out)["flops"]
    expected = count_flops(model, inputs, 1)
    assert flops["tokens"] == {"vision": vision, "text": text, "images": images, "videos": 2, "frames": 3}
    for variant in ("baseline", "withdrawn"):
        assert flops[variant] == expected[variant]
        assert flops["decode_per_token"][variant] == expected["decode_per_token"][variant]


@needs_torchvision
def test_frames_reach_the_loaded_prompt_and_the_config_only_count_alike(tmp_path):
    """`--frames` drives both paths: the loaded model's synthetic prompt (processor_prompt, the model's own
    processor) and the config-only count give the same tokens and FLOPs for 1 image + 1 video of 5 frames."""
    from arch_models import save_family

    from vtwcli.loading import load_config, load_model
    from vtwcli.profiling import run_flops_only, run_profile

    directory, shim = save_family(FAMILIES["qwen2_vl"], tmp_path / "m", num_layers=2)
    assert shim is None
    loaded = load_model(directory, device="cpu", dtype="float32")
    options = dict(layer=1, text_tokens=24, images=1, videos=1, frames=5, image_size=(60, 44))
    measured = run_profile(loaded, flops_only=True, **options)["flops"]
    counted = run_flops_only(load_config(directory), source=directory, **options)["flops"]
    assert measured["tokens"] == counted["tokens"] and measured["tokens"]["frames"] == 5
    for key in ("baseline", "withdrawn", "decode_per_token"):
        assert measured[key] == counted[key]


def test_committed_qwen3_vl_8b_profile_by_hand():
    """profiles/qwen3-vl-8b-flops.yaml against matmul counts written out from its config.json: one 512 x 512 image,
    64 text tokens, K = 18. Vision: a 16 px x 2 frames patch embedding, 27 ViT blocks (qkv, proj, 2-matrix MLP,
    QK^T and AV over the 1024 patches), then four 2x2 mergers on the 256 merged tokens — the final one and the
    three DeepStack ones, all the projector's. Text: 36 Llama-shaped layers with GQA."""
    import json

    import yaml

    profile = yaml.safe_load((REPO / "profiles" / "qwen3-vl-8b-flops.yaml").read_text())
    config = json.loads((REPO / "profiles" / "configs" / "qwen3-vl-8b" / "config.json").read_text())
    vision, text = config["vision_config"], config["text_config"]
    patches, hidden, heads = (512 // vision["patch_size"]) ** 2, vision["hidden_size"], vision["num_heads"]
    patch_embed = 2 * patches * (3 * vision["temporal_patch_size"] * vision["patch_size"] ** 2) * hidden
    block = 2 * patches * hidden * 4 * hidden + 2 * 2 * patches * hidden * vision["intermediate_size"] \
        + heads * 2 * 2 * patches * (hidden // heads) * patches
    tokens, merged = patches // 4, 4 * hidden
    merger = 2 * tokens * merged * merged + 2 * tokens * merged * vision["out_hidden_size"]
    width, d = text["hidden_size"], text["head_dim"]

    def layer(n: int) -> int:
        projections = 2 * n * width * d * (2 * text["num_attention_heads"] + 2 * text["num_key_value_heads"])
        return projections + text["num_attention_heads"] * 2 * 2 * n * d * n + 3 * 2 * n * width * text["intermediate_size"]

    n, kept, k, layers = tokens + 64, 64, 18, text["num_hidden_layers"]
    flops = profile["flops"]
    assert profile["model"]["dtype"] == text["dtype"] == "bfloat16"
    assert flops["tokens"] == {"vision": tokens, "text": kept, "images": 1}
    assert flops["baseline"]["vision_tower"] == patch_embed + vision["depth"] * block
    assert flops["baseline"]["projector"] == (1 + len(vision["deepstack_visual_indexes"])) * merger
    assert flops["baseline"]["language_model"] == layers * layer(n)
    assert flops["withdrawn"]["language_model"] == k * layer(n) + (layers - k) * layer(kept)
    assert flops["baseline"]["lm_head"] == 2 * width * text["vocab_size"]
