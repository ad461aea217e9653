"""Vision tokens per image from the config files alone (vtwcli.vision_tokens) = what the processor inserts.

The reference is each family's processor (or its stand-in) run on a real image of that size: the number of
vision-token ids in its input_ids. The rule only sees the model config, the image processor's configuration
(saved and reloaded from preprocessor_config.json) and the size.
"""

from __future__ import annotations

import pytest
import torch
import arch_models
from arch_models import FAMILIES, HAS_TORCHVISION, image

from vtwcli import vision_tokens as rules

RULES = {"llava_next": rules.anyres, "llava_onevision": rules.anyres, "qwen2_vl": rules.merged_patches,
         "qwen2_5_vl": rules.merged_patches, "gemma3": rules.fixed_per_image, "internvl": rules.tiles,
         "idefics3": rules.split_tiles, "smolvlm": rules.split_tiles, "idefics2": rules.split_tiles,
         "mistral3": rules.merged_grid, "lighton_ocr": rules.merged_grid, "gemma4": rules.pooled_patches,
         "vipllava": rules.fixed_per_image, "paligemma": rules.fixed_per_image, "deepseek_vl": rules.fixed_per_image,
         "janus": rules.fixed_per_image, "video_llava": rules.fixed_per_image, "llava_next_video": rules.anyres,
         "granite4_vision": rules.anyres, "aya_vision": rules.tiles, "ovis2": rules.covering_tiles}
SIZES = [(40, 20), (16, 16), (20, 44), (100, 37), (64, 64), (13, 90)]
PROMPTS = {"llava_next": "USER: <image>\nwhat ?\nASSISTANT:", "llava_onevision": "USER: <image>\nwhat ?\nASSISTANT:",
           "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>what ?",
           "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>what ?",
           "gemma3": "<start_of_image>what ?", "internvl": "<IMG_CONTEXT>\nwhat ?",
           "idefics3": "USER: <image>what ?", "smolvlm": "USER: <image>what ?", "idefics2": "USER: <image>what ?",
           "mistral3": "[INST][IMG]what ?[/INST]", "lighton_ocr": "[INST][IMG]what ?[/INST]",
           "gemma4": "<|turn>user\n<|image|>what ?<turn|>\n", "vipllava": "USER: <image>what ?",
           "paligemma": "<image>what ?", "deepseek_vl": "USER: <image>what ?", "janus": "USER: <image>what ?",
           "video_llava": "USER: <image>what ?", "llava_next_video": "USER: <image>what ?",
           "granite4_vision": "USER: <image>what ?", "aya_vision": "USER: <image>what ?", "ovis2": "USER: <image>what ?",
           "cohere2_vision": "USER: <|IMG_PATCH|>what ?", "lfm2_vl": "USER: <image>what ?"}


@pytest.mark.parametrize("name", list(RULES))
def test_rule_equals_the_processors_count(name, tmp_path):
    """The adapter entry names the rule, and the rule (with what the family's processor hands its image processor,
    Adapter.image_processor_kwargs: Mistral3's patch x merge) counts what the processor inserts."""
    from vtwcli.adapters import adapter_for_architecture
    from vtwcli.measure.config_flops import vision_tokens_per_image
    from vtwcli.measure.flops import meta_model

    family = FAMILIES[name]
    processor = family.processor()
    config = family.build(4, "sdpa", 0).config
    assert adapter_for_architecture(family.architecture).image_tokens is RULES[name]
    model = meta_model(config)
    processor.image_processor.save_pretrained(tmp_path)
    from_files = rules.image_processor_of(str(tmp_path))  # what a config-only directory provides
    ids = torch.tensor(family.vision_ids(config))
    for width, height in SIZES:
        inputs = processor(text=[PROMPTS[name]], images=[[image(width, height, 0)]], return_tensors="pt")
        expected = int(torch.isin(inputs["input_ids"], ids).sum())
        assert vision_tokens_per_image(model, from_files, width, height) == expected, (width, height)


def test_onevision_gives_several_images_their_base_view_only():
    family = FAMILIES["llava_onevision"]
    processor = family.processor()
    config = family.build(1, "sdpa", 0).config
    inputs = processor(text=["USER: <image>\n<image>\nwhat ?\nASSISTANT:"],
                       images=[[image(100, 37, 0), image(24, 40, 1)]], return_tensors="pt")
    expected = int((inputs["input_ids"] == config.image_token_id).sum())
    assert 2 * rules.anyres(config, processor.image_processor, 100, 37, 2) == expected
    assert rules.anyres(config, processor.image_processor, 100, 37, 2) < rules.anyres(config, processor.image_processor,
                                                                                      100, 37, 1)


@pytest.mark.parametrize("family", ["glm4v", "qwen3_vl"])
def test_merged_patches_fits_glm4v_and_qwen3_vl(family, tmp_path):
    """GLM-4.1V/4.5V/4.6V and Qwen3-VL (and Qwen3.5, which uses Qwen3-VL's processor) size images like Qwen2-VL
    with their own patch sizes: each image becomes grid_t x grid_h x grid_w / merge^2 tokens, the grid being
    what their image processor makes of the image (their processors expand the placeholder by that count)."""
    import numpy as np
    from transformers import Glm4vConfig, Qwen3VLConfig
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if family == "glm4v":
        config, processor = Glm4vConfig(), Glm4vImageProcessorPil()
    else:
        config = Qwen3VLConfig()
        processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2,
                                             size={"shortest_edge": 65536, "longest_edge": 16777216})
    processor.save_pretrained(tmp_path)
    from_files = rules.image_processor_of(str(tmp_path))
    merge = config.vision_config.spatial_merge_size
    for width, height in [(640, 480), (333, 1000), (64, 64), (4000, 3000)]:
        picture = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        grid = processor(images=[picture], return_tensors="pt")["image_grid_thw"][0]
        assert rules.merged_patches(config, from_files, width, height) == int(grid.prod()) // merge ** 2


@pytest.mark.parametrize("family", ["gemma4", "mistral3", "idefics3"])
def test_rules_at_real_sizes_equal_the_image_processors_own_counts(family, tmp_path):
    """At the released models' image processor settings (transformers' defaults: Gemma 4's 16 px patches pooled 3x3
    within 280 soft tokens; Pixtral's 1540 px longest edge in 14 px patches merged 2x2, as Mistral-Small-3.1 has it;
    Idefics3's 364 px tiles of an image shrunk to 1456 px), the rule counts what the image processor makes:
    Gemma 4's num_soft_tokens_per_image, Pixtral's image_sizes / (patch x merge) squared when called with patch x
    merge as PixtralProcessor calls it, Idefics3's tiles (+ the global view) x 169 tokens."""
    import numpy as np
    from transformers import Gemma4Config, Idefics3Config, Mistral3Config

    from vtwcli.measure.config_flops import vision_tokens_per_image
    from vtwcli.measure.flops import meta_model

    call = {}  # what the family's processor hands its image processor
    if family == "gemma4":
        from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil as Images

        config, processor = Gemma4Config(audio_config=None), Images()
        count = lambda out: int(out["num_soft_tokens_per_image"][0])  # noqa: E731
    elif family == "mistral3":
        from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil as Images

        vision = dict(model_type="pixtral", image_size=1540, patch_size=14, num_hidden_layers=1)
        config, processor = Mistral3Config(vision_config=vision), Images(size={"longest_edge": 1540}, patch_size=14)
        count = lambda out: int((out["image_sizes"][0] // 28).prod())  # noqa: E731
        call = {"patch_size": {"height": 28, "width": 28}}
    else:
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as Images

        vision = dict(image_size=364, patch_size=14, num_hidden_layers=1)
        config, processor = Idefics3Config(vision_config=vision), Images()
        count = lambda out: int(out["pixel_values"].shape[1]) * 169  # noqa: E731  tiles (+ global) per image
    processor.save_pretrained(tmp_path)
    model = meta_model(config)
    from_files = rules.image_processor_of(str(tmp_path))
    for width, height in [(640, 480), (333, 1000), (64, 64), (4000, 3000), (2000, 90)]:
        picture = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        out = processor(images=[[picture]], return_tensors="pt", **call)
        assert vision_tokens_per_image(model, from_files, width, height) == count(out), (width, height)


# The processors of transformers themselves where the family's test processor is a stand-in (LLaVA-NeXT-Video and
# Granite4-Vision: it counts the model's features; Video-LLaVA: a fixed count) or where they need torchvision
# (Cohere2 Vision's and LFM2-VL's image processors; LLaVA-NeXT-Video's and Video-LLaVA's video processors)
needs_torchvision = pytest.mark.skipif(not HAS_TORCHVISION, reason="the processor of transformers needs torchvision, "
                                       "which does not import here (.ci/real-processors runs it)")


def _llava_next_images():
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    return LlavaNextImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                      image_grid_pinpoints=arch_models.PINPOINTS)


def real_granite4_vision():
    from transformers import Granite4VisionProcessor

    return Granite4VisionProcessor(image_processor=_llava_next_images(), patch_size=4, downsample_rate="1/2",
                                   tokenizer=arch_models.word_tokenizer(arch_models.LLAVA_SPECIALS),
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)


def real_llava_next_video():
    from transformers import LlavaNextVideoProcessor
    from transformers.models.llava_next_video.video_processing_llava_next_video import LlavaNextVideoVideoProcessor

    return LlavaNextVideoProcessor(image_processor=_llava_next_images(), video_processor=LlavaNextVideoVideoProcessor(),
                                   tokenizer=arch_models.word_tokenizer(arch_models.VIDEO_SPECIALS), patch_size=4,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)


def real_video_llava():
    from transformers import VideoLlavaImageProcessor, VideoLlavaProcessor
    from transformers.models.video_llava.video_processing_video_llava import VideoLlavaVideoProcessor

    images = VideoLlavaImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return VideoLlavaProcessor(image_processor=images, video_processor=VideoLlavaVideoProcessor(),
                               tokenizer=arch_models.word_tokenizer(arch_models.VIDEO_SPECIALS), patch_size=4,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)


def real_internvl_untiled_file():
    """InternVLProcessor whose image processor's file says crop_to_patches false: the processor tiles anyway."""
    from transformers import InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    images = GotOcr2ImageProcessorPil(size={"height": 16, "width": 16}, crop_to_patches=False, max_patches=4)
    return InternVLProcessor(image_processor=images, video_processor=InternVLVideoProcessor(), image_seq_length=4,
                             tokenizer=arch_models.word_tokenizer(arch_models.INTERNVL_SPECIALS))


REAL = {"granite4_vision": (real_granite4_vision, rules.anyres),
        "internvl-untiled-file": pytest.param(real_internvl_untiled_file, rules.tiles, marks=needs_torchvision),
        "llava_next_video": pytest.param(real_llava_next_video, rules.anyres, marks=needs_torchvision),
        "video_llava": pytest.param(real_video_llava, rules.fixed_per_image, marks=needs_torchvision),
        "cohere2_vision": pytest.param(lambda: FAMILIES["cohere2_vision"].processor(), rules.tiles,
                                       marks=needs_torchvision),
        "lfm2_vl": pytest.param(lambda: FAMILIES["lfm2_vl"].processor(), rules.smart_resized_tiles,
                                marks=needs_torchvision),
        "lfm2_vl-tiles": pytest.param(lambda: arch_models.lfm2_vl_tiling_processor(), rules.smart_resized_tiles,
                                      marks=needs_torchvision)}
TILING_SIZES = [*SIZES, (90, 60), (60, 90), (200, 30), (24, 16), (50, 50)]


@pytest.mark.parametrize("name, build, rule", [pytest.param(name, *value.values, marks=value.marks, id=name)
                                               if hasattr(value, "values") else pytest.param(name, *value, id=name)
                                               for name, value in REAL.items()])
def test_rule_equals_the_real_processors_count(name, build, rule, tmp_path):
    """The rule the entry names counts what the transformers processor inserts, the image processor read back from
    its preprocessor_config.json; LFM2-VL also with image splitting on (tiles, thumbnail) and Cohere2 Vision over
    sizes that its least-upscaling grid sends to 1, 2 x 1, 1 x 3 .. tiles."""
    from vtwcli.adapters import adapter_for_architecture
    from vtwcli.measure.config_flops import vision_tokens_per_image
    from vtwcli.measure.flops import meta_model

    family = FAMILIES[name.split("-")[0]]
    processor = build()
    config = family.build(1, "sdpa", 0).config
    assert adapter_for_architecture(family.architecture).image_tokens is rule
    processor.image_processor.save_pretrained(tmp_path)
    from_files = rules.image_processor_of(str(tmp_path))
    model = meta_model(config)
    ids = torch.tensor(family.vision_ids(config))
    counts = set()
    for width, height in TILING_SIZES:
        inputs = processor(text=[PROMPTS[family_key(name)]], images=[[image(width, height, 0)]], return_tensors="pt")
        expected = int(torch.isin(inputs["input_ids"], ids).sum())
        assert vision_tokens_per_image(model, from_files, width, height) == expected, (width, height)
        counts.add(expected)
    assert len(counts) > 1 or rule is rules.fixed_per_image
    if name == "lfm2_vl-tiles":  # some sizes were tiled: more tokens than one view holds
        assert max(counts) > arch_models.LFM2_MAX_TOKENS


# At the released models' settings (transformers' defaults where they are the released ones): Aya Vision's 364 px
# tiles (at most 12) of 26 x 26 SigLIP patches shuffled 2 x 2, its preprocessor_config.json saying crop_to_patches
# false (AyaVisionProcessor tiles anyway); Ovis2's 448 px tiles (at most 9, the fewest covering 90 %) of 32 x 32
# patches merged 2 x 2; Cohere2 Vision's 512 px tiles (at most 12) of 16 x 16 tokens; LFM2-VL's 512 px tiles (2 to
# 10) of 16 px patches merged 2 x 2 and its 64 .. 256-token single view
def _aya_vision():
    from transformers import AyaVisionConfig, AyaVisionProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    config = AyaVisionConfig(vision_config=dict(model_type="siglip_vision_model", image_size=364, patch_size=14,
                                                num_hidden_layers=1), downsample_factor=2)
    images = GotOcr2ImageProcessorPil(size={"height": 364, "width": 364}, crop_to_patches=False, max_patches=12)
    tokenizer = arch_models.word_tokenizer(arch_models.AYA_SPECIALS)
    processor = AyaVisionProcessor(image_processor=images, tokenizer=tokenizer, patch_size=14, img_size=364,
                                   downsample_factor=2)
    return config, processor, "<image>", arch_models.AYA_PATCH


def _ovis2():
    from transformers import Ovis2Config, Ovis2Processor
    from transformers.models.ovis2.image_processing_pil_ovis2 import Ovis2ImageProcessorPil

    config = Ovis2Config(vision_config=dict(image_size=448, patch_size=14, hidden_stride=2, num_hidden_layers=1))
    images = Ovis2ImageProcessorPil(size={"height": 448, "width": 448}, crop_to_patches=True, max_patches=9)
    processor = Ovis2Processor(image_processor=images, tokenizer=arch_models.word_tokenizer(arch_models.OVIS_SPECIALS),
                               image_seq_length=256)
    return config, processor, "<image>", arch_models.OVIS_ATOM


def _cohere2_vision():
    from transformers import Cohere2VisionConfig, Cohere2VisionProcessor
    from transformers.models.cohere2_vision.image_processing_cohere2_vision import Cohere2VisionImageProcessor

    config = Cohere2VisionConfig(vision_config=dict(model_type="siglip_vision_model", image_size=512, patch_size=16,
                                                    num_hidden_layers=1), downsample_factor=2)
    tokenizer = arch_models.word_tokenizer(arch_models.AYA_SPECIALS, extra_special=arch_models.COHERE2_TOKENS)
    processor = Cohere2VisionProcessor(image_processor=Cohere2VisionImageProcessor(), tokenizer=tokenizer)
    return config, processor, "<|IMG_PATCH|>", arch_models.AYA_PATCH


def _lfm2_vl():
    from transformers import Lfm2VlConfig, Lfm2VlProcessor
    from transformers.models.lfm2_vl.image_processing_lfm2_vl import Lfm2VlImageProcessor

    config = Lfm2VlConfig(vision_config=dict(patch_size=16, num_hidden_layers=1), downsample_factor=2)
    processor = Lfm2VlProcessor(image_processor=Lfm2VlImageProcessor(),
                                tokenizer=arch_models.word_tokenizer(arch_models.LFM2_SPECIALS))
    return config, processor, "<image>", arch_models.LFM2_IMAGE


@pytest.mark.parametrize("build", [_aya_vision, _ovis2, pytest.param(_cohere2_vision, marks=needs_torchvision),
                                   pytest.param(_lfm2_vl, marks=needs_torchvision)])
def test_new_rules_at_real_sizes_equal_the_real_processors_counts(build, tmp_path):
    """Aya Vision, Ovis2, Cohere2 Vision and LFM2-VL at their released models' settings: the rule counts the image
    tokens the transformers processor inserts, over photo-sized, small and extreme images."""
    import numpy as np

    from vtwcli.measure.config_flops import vision_tokens_per_image
    from vtwcli.measure.flops import meta_model

    config, processor, placeholder, token = build()
    processor.image_processor.save_pretrained(tmp_path)
    from_files = rules.image_processor_of(str(tmp_path))
    model = meta_model(config)
    counts = []
    for width, height in [(640, 480), (333, 1000), (64, 64), (4000, 3000), (2000, 90), (1024, 1024)]:
        picture = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        inputs = processor(text=[f"{placeholder}what ?"], images=[[picture]], return_tensors="pt")
        counts.append(int((inputs["input_ids"] == token).sum()))
        assert vision_tokens_per_image(model, from_files, width, height) == counts[-1], (width, height)
    assert len(set(counts)) > 2


def family_key(name: str) -> str:
    return name.split("-")[0]
