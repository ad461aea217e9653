"""Vision tokens per image from the config files alone (vtwcli.vision_tokens) = what the processor inserts.

The reference is each family's processor (or its stand-in) run on a real image of that size: the number of
vision-token ids in its input_ids. The rule only sees the model config, the image processor's configuration
(saved and reloaded from preprocessor_config.json) and the size.
"""

from __future__ import annotations

import pytest
import torch
from arch_models import FAMILIES, image

from vtwcli import vision_tokens as rules

RULES = {"llava_next": rules.anyres, "llava_onevision": rules.anyres, "qwen2_vl": rules.merged_patches,
         "qwen2_5_vl": rules.merged_patches, "gemma3": rules.fixed_per_image, "internvl": rules.tiles,
         "idefics3": rules.split_tiles, "smolvlm": rules.split_tiles, "idefics2": rules.split_tiles,
         "mistral3": rules.merged_grid, "lighton_ocr": rules.merged_grid, "gemma4": rules.pooled_patches}
SIZES = [(40, 20), (16, 16), (20, 44), (100, 37), (64, 64), (13, 90)]
PROMPTS = {"llava_next": "USER: <image>\nwhat ?\nASSISTANT:", "llava_onevision": "USER: <image>\nwhat ?\nASSISTANT:",
           "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>what ?",
           "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>what ?",
           "gemma3": "<start_of_image>what ?", "internvl": "<IMG_CONTEXT>\nwhat ?",
           "idefics3": "USER: <image>what ?", "smolvlm": "USER: <image>what ?", "idefics2": "USER: <image>what ?",
           "mistral3": "[INST][IMG]what ?[/INST]", "lighton_ocr": "[INST][IMG]what ?[/INST]",
           "gemma4": "<|turn>user\n<|image|>what ?<turn|>\n"}


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
