"""Per-architecture facts, one small entry per model family.

The withdrawal engine never branches on the architecture: everything it needs to know about a family
(where the decoder layers are, which token ids are vision tokens, which config describes the text
model) is looked up here. Supporting a new family means adding an entry, not editing the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from vtwcli.errors import UnsupportedError


@dataclass(frozen=True)
class Adapter:
    family: str
    architectures: tuple[str, ...]
    # Where the text decoder's layers are, on an unmodified model of this family.
    decoder_layers: Callable[[nn.Module], nn.ModuleList]
    # The norm applied after the last decoder layer, before the output head.
    final_norm: Callable[[nn.Module], nn.Module]
    # The config that describes the language model (its masks, RoPE and layer count).
    text_config: Callable[[object], object]
    # Config attributes holding the ids of the tokens that stand for vision features.
    vision_token_id_keys: tuple[str, ...]
    # Which input is "vision" for the user-facing `--withdraw` choice (image, video).
    vision_token_kinds: dict[str, str] = field(default_factory=dict)
    # Forward arguments that carry pixels: a call with one of them inserts vision features.
    pixel_input_keys: tuple[str, ...] = ("pixel_values", "pixel_values_videos", "inputs_embeds")
    notes: str = ""

    def vision_token_ids(self, config, kinds: tuple[str, ...] | None = None) -> list[int]:
        ids = []
        for key in self.vision_token_id_keys:
            if kinds is not None and self.vision_token_kinds.get(key, "image") not in kinds:
                continue
            value = getattr(config, key, None)
            if value is not None:
                ids.append(int(value))
        return ids


def _language_model_layers(model: nn.Module) -> nn.ModuleList:
    # transformers 5.x: <Family>ForConditionalGeneration.model.language_model.layers
    return model.model.language_model.layers


ADAPTERS: tuple[Adapter, ...] = (
    Adapter(
        family="LLaVA-1.5",
        architectures=("LlavaForConditionalGeneration",),
        decoder_layers=_language_model_layers,
        final_norm=lambda model: model.model.language_model.norm,
        text_config=lambda config: config.text_config,
        vision_token_id_keys=("image_token_id",),
        notes="fixed number of image tokens per image (576 for 336px CLIP-L/14)",
    ),
)

# Families on the roadmap: listed by `vtw models` with their status so users know what is coming.
PLANNED: dict[str, str] = {
    "LLaVA-NeXT": "LlavaNextForConditionalGeneration",
    "LLaVA-OneVision": "LlavaOnevisionForConditionalGeneration",
    "Qwen2-VL / Qwen2.5-VL": "Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration",
    "Gemma 3": "Gemma3ForConditionalGeneration",
    "Idefics3 / SmolVLM": "Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration",
    "Mistral3 / Pixtral": "Mistral3ForConditionalGeneration",
    "InternVL": "InternVLForConditionalGeneration",
}


def supported_architectures() -> list[str]:
    return [arch for adapter in ADAPTERS for arch in adapter.architectures]


def adapter_for_architecture(architecture: str) -> Adapter:
    for adapter in ADAPTERS:
        if architecture in adapter.architectures:
            return adapter
    raise UnsupportedError(
        f"architecture {architecture} has no vtwcli adapter; supported: {', '.join(supported_architectures())} "
        "(see `vtw models`)"
    )


def adapter_for(model: nn.Module) -> Adapter:
    return adapter_for_architecture(type(model).__name__)
