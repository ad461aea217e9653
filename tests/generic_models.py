"""Tiny models of two families for `--generic` (tests/test_verify.py, test_errors.py), used as if no adapter
entry listed them (``unlisted`` removes an entry that exists).

LightOnOCR follows the standard layout (derived and verified exact); PaliGemma is a prefix-LM (its prompt
attends bidirectionally), which the layout cannot show: `--generic` must refuse it.
"""

from __future__ import annotations

import torch
from arch_models import (PIXTRAL_BREAK, PIXTRAL_END, PIXTRAL_IMAGE, PIXTRAL_SPECIALS, PIXTRAL_TEMPLATE, Family,
                         PixtralInputs, _finish, _siglip, _text, mistral3_rows, word_tokenizer)


def tiny_lighton_ocr(num_layers=4, attn="sdpa", seed=0):
    """LightOnOCR (Pixtral vision, Qwen3 text): an image-text-to-text family no adapter entry lists."""
    from transformers import LightOnOcrConfig, LightOnOcrForConditionalGeneration

    vision = dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4, image_size=32, patch_size=4, head_dim=8)
    config = LightOnOcrConfig(vision_config=vision, text_config=dict(model_type="qwen3", **_text(
        num_hidden_layers=num_layers, head_dim=8)), image_token_id=PIXTRAL_IMAGE, spatial_merge_size=2)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(LightOnOcrForConditionalGeneration(config), [PIXTRAL_IMAGE, PIXTRAL_BREAK, PIXTRAL_END])


def lighton_processor():
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    images = PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size={"height": 4, "width": 4})
    return PixtralInputs(images, word_tokenizer(PIXTRAL_SPECIALS), tiny_lighton_ocr, "[IMG]",
                         chat_template=PIXTRAL_TEMPLATE)


LIGHTON = Family("LightOnOCR", "LightOnOcrForConditionalGeneration", tiny_lighton_ocr, lighton_processor,
                 mistral3_rows, lambda config: [config.image_token_id])

PALIGEMMA_SPECIALS = {"image_token": "<image>"}


def tiny_paligemma(num_layers=4, attn="sdpa", seed=0):
    """PaliGemma: prefix-LM (the image and the prompt attend bidirectionally), which the layout cannot show."""
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration

    config = PaliGemmaConfig(vision_config=_siglip(), text_config=GemmaConfig(**_text(num_hidden_layers=num_layers,
                                                                                      head_dim=8)),
                             image_token_index=4, projection_dim=32)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(PaliGemmaForConditionalGeneration(config), [4])


def paligemma_processor():
    from transformers import PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    images = SiglipImageProcessorPil(size={"height": 16, "width": 16})
    images.image_seq_length = 16
    return PaliGemmaProcessor(image_processor=images, tokenizer=word_tokenizer(PALIGEMMA_SPECIALS))


PALIGEMMA = Family("PaliGemma", "PaliGemmaForConditionalGeneration", tiny_paligemma, paligemma_processor,
                   mistral3_rows, lambda config: [config.image_token_id])


def unlisted(monkeypatch, *architectures: str) -> None:
    """Make ``architectures`` have no adapter entry for this test (whatever vtwcli/adapters/ lists)."""
    from vtwcli import adapters

    monkeypatch.setattr(adapters, "ADAPTERS", tuple(a for a in adapters.ADAPTERS
                                                    if not set(a.architectures) & set(architectures)))
