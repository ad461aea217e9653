"""Config-only FLOPs of dynamic-resolution families (vtwcli.measure.config_flops, `--flops-only`).

References: ``count_flops`` on the loaded tiny model of the same config (the real forward through the real
withdrawal hooks, on the processor's real prompt for an image of that size), and the closed form
(``analytic_flops``) for the language model, lm_head and decode step.
"""

from __future__ import annotations

import pytest
import torch
from arch_models import FAMILIES, image

from vtwcli.measure.config_flops import count_flops_from_config
from vtwcli.measure.flops import analytic_flops, count_flops, meta_model

PROMPTS = {"llava_next": "USER: <image>\nwhat color is this ?\nASSISTANT:",
           "llava_onevision": "USER: <image>\n<image>\nwhat color is this ?\nASSISTANT:",
           "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>what color is this ?",
           "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>what ?",
           "gemma3": "<start_of_image>what color is this ?", "internvl": "<IMG_CONTEXT>\nwhat color ?"}
SIZES = {"llava_next": (100, 37), "llava_onevision": (24, 40), "qwen2_vl": (100, 37), "qwen2_5_vl": (48, 48),
         "gemma3": (30, 70), "internvl": (100, 37)}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_config_only_flops_equal_the_loaded_model_count_and_the_closed_form(name):
    family = FAMILIES[name]
    model = family.build(4, "sdpa", 0)
    model.config.architectures = [family.architecture]
    processor = family.processor()
    width, height = SIZES[name]
    placeholders = {"llava_next": 1, "llava_onevision": 2, "qwen2_vl": 1, "qwen2_5_vl": 2, "gemma3": 1, "internvl": 1}
    images = placeholders[name]
    inputs = dict(processor(text=[PROMPTS[name]], images=[[image(width, height, i) for i in range(images)]],
                            return_tensors="pt"))
    ids = inputs["input_ids"][0]
    vision = int(torch.isin(ids, torch.tensor(family.vision_ids(model.config))).sum())
    for layer in (1, 3):
        expected = count_flops(model, inputs, layer)
        got, counts = count_flops_from_config(meta_model(model.config), processor.image_processor, layer=layer,
                                              images=images, image_size=(width, height),
                                              text_tokens=len(ids) - vision)
        assert counts.vision_tokens == vision
        assert got == expected
        closed = analytic_flops(model.config, counts, layer, vision=False)
        for variant in ("baseline", "withdrawn"):
            assert closed[variant]["language_model"] == got[variant]["language_model"]
            assert closed[variant]["lm_head"] == got[variant]["lm_head"]
            assert closed["decode_per_token"][variant] == got["decode_per_token"][variant]
        assert got["withdrawn"]["language_model"] < got["baseline"]["language_model"]
