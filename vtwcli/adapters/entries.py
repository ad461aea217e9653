"""The adapter entries: one per supported family (`ADAPTERS`), with the family-specific helpers they name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtwcli import vision_tokens
from vtwcli.adapters.mechanism import LLAVA_COMPONENTS, Adapter, DeepStack

if TYPE_CHECKING:  # annotations only: `vtw models` must not wait for torch
    from torch import nn


def _after_each_layer(features) -> list[int]:
    # Qwen3-VL: entry i is added to the output of layer i, i.e. to the input of layer i + 1.
    return [i + 1 for i in range(len(features))]


def _select_entries(features, keep: list[bool]):
    # Entries are positional (entry i = layer i): the flags of layers <= K only ever drop a suffix.
    return [entry for entry, kept in zip(features, keep) if kept]


def _dict_keys(features) -> list[int]:
    # Granite4-Vision: {layer: features}, each added to the vision tokens just before that layer (what its language
    # model receives); get_image_features returns them as [(layer, features), ...]
    return list(features) if isinstance(features, dict) else [layer for layer, _ in features]


def _select_items(features, keep: list[bool]):
    return {layer: entry for (layer, entry), kept in zip(features.items(), keep) if kept}


def _first_injection(output):
    # Granite4-Vision's get_image_features: deepstack_features = [(layer, [features of each image]), ...]
    return output.deepstack_features[0][1]


GRANITE4_VISION_DEEPSTACK = DeepStack(module=lambda model: model.model.language_model, argument="deepstack_features",
                                      target_layers=_dict_keys, select=_select_items,
                                      injected_features=_first_injection)
QWEN3_VL_DEEPSTACK = DeepStack(module=lambda model: model.model.language_model, argument="deepstack_visual_embeds",
                               target_layers=_after_each_layer, select=_select_entries)


def _prefix_lm_blocks(kwargs: dict):
    # PaliGemma: token_type_ids 0 = the prompt (image + text prefix, one bidirectional block), 1 = the suffix.
    token_types = kwargs.get("token_type_ids")
    return None if token_types is None else -(token_types != 0).long()


def _text_model_layers(model: nn.Module) -> nn.ModuleList:
    # Idefics3 / SmolVLM: <Family>ForConditionalGeneration.model.text_model.layers
    return model.model.text_model.layers


def _text_model_norm(model: nn.Module) -> nn.Module:
    return model.model.text_model.norm


# Qwen2-VL's layout: the vision tower holds the patch merger (= projector); M-RoPE positions come from the model.
QWEN_VL_COMPONENTS = {"vision_tower": ("model.visual.patch_embed", "model.visual.blocks"),
                      "projector": ("model.visual.merger",), "language_model": ("model.language_model",),
                      "lm_head": ("lm_head",)}
IMAGE_AND_VIDEO = {"image_token_id": "image", "video_token_id": "video"}

def _llama4_layers(model: nn.Module) -> nn.ModuleList:
    return model.language_model.model.layers


def _llama4_norm(model: nn.Module) -> nn.Module:
    return model.language_model.model.norm


def _causal_lm_layers(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


def _causal_lm_norm(model: nn.Module) -> nn.Module:
    return model.model.norm


def _own_config(config):
    return config


def _reads_missing_image_outputs(architecture: str) -> str | None:
    """transformers 5.24's Llama4ForConditionalGeneration.forward ends with `image_outputs=outputs.image_outputs`
    on its language model's output (MoeCausalLMOutputWithPast), which has no such field: every call raises
    AttributeError, text-only too. Read from the installed source files, so that `vtw models` needs no torch."""
    import importlib.metadata
    import importlib.util
    import re
    from pathlib import Path

    spec = importlib.util.find_spec("transformers")
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).parent
    try:
        modeling = (root / "models" / "llama4" / "modeling_llama4.py").read_text()
        outputs = (root / "modeling_outputs.py").read_text()
    except OSError:
        return None
    output_class = re.search(r"class MoeCausalLMOutputWithPast\(.*?(?=\n(?:class |@))", outputs, re.S)
    if "image_outputs=outputs.image_outputs" not in modeling or output_class is None or \
            "image_outputs" in output_class.group(0):
        return None
    version = importlib.metadata.version("transformers")
    return (f"{architecture}.forward fails on every call in transformers {version} (upstream bug: it reads "
            "outputs.image_outputs, which its language model does not return); withdraw from the language model "
            "with inputs_embeds instead: withdraw(model.language_model, layer=K, vision_mask=...), see "
            "docs/architectures.md, or use a transformers release that fixes it")


def _embedding_norm(model: nn.Module) -> nn.Module:
    # LFM2: the norm after the last decoder layer is named `embedding_norm`
    return model.model.language_model.embedding_norm


ADAPTERS: tuple[Adapter, ...] = (
    Adapter(
        family="LLaVA-1.5",
        architectures=("LlavaForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        fixed_image_layout=True,
        notes="fixed number of image tokens per image (576 for 336px CLIP-L/14)",
    ),
    Adapter(
        family="LLaVA-NeXT",
        architectures=("LlavaNextForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        image_tokens=vision_tokens.anyres,
        notes="anyres: variable image tokens per image (image-newline features included)",
    ),
    Adapter(
        family="Qwen2-VL / Qwen2.5-VL",
        architectures=("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"),
        vision_token_id_keys=("image_token_id", "video_token_id"),
        vision_token_kinds=IMAGE_AND_VIDEO,
        positions_from_mask=False,  # M-RoPE: the model computes 3-D positions (and rope_deltas) itself
        flops_components=QWEN_VL_COMPONENTS,
        image_tokens=vision_tokens.merged_patches,
        video_tokens=vision_tokens.merged_video_patches,
        notes="M-RoPE: original 3-D positions kept; image and video pads withdrawn, vision start/end kept",
    ),
    Adapter(
        family="Qwen3-VL / Qwen3-VL-MoE",
        architectures=("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration"),
        vision_token_id_keys=("image_token_id", "video_token_id"),
        vision_token_kinds=IMAGE_AND_VIDEO,
        positions_from_mask=False,
        flops_components={**QWEN_VL_COMPONENTS,
                          "projector": ("model.visual.merger", "model.visual.deepstack_merger_list")},
        deepstack=QWEN3_VL_DEEPSTACK,
        image_tokens=vision_tokens.merged_patches,
        video_tokens=vision_tokens.video_patches,
        notes="M-RoPE + DeepStack (vision features added after the first layers: injections past K dropped, "
              "they only touch withdrawn tokens); MoE: FLOPs of the active experts",
    ),
    Adapter(
        family="GLM-4.1V / GLM-4.5V / GLM-4.6V",
        architectures=("Glm4vForConditionalGeneration", "Glm4vMoeForConditionalGeneration",
                       "Glm46VForConditionalGeneration"),
        vision_token_id_keys=("image_token_id",),
        video_frames_as_images=True,  # between <|begin_of_video|> / <|end_of_video|>
        positions_from_mask=False,
        flops_components={"vision_tower": ("model.visual.embeddings", "model.visual.patch_embed",
                                           "model.visual.post_conv_layernorm", "model.visual.blocks",
                                           "model.visual.post_layernorm", "model.visual.downsample"),
                          "projector": ("model.visual.merger",), "language_model": ("model.language_model",),
                          "lm_head": ("lm_head",)},
        image_tokens=vision_tokens.merged_patches,
        video_tokens=vision_tokens.video_patches,
        notes="M-RoPE (partial rotary): original 3-D positions kept; <|image|> withdrawn (video frames use it "
              "too), begin/end-of-image kept; GLM-4.5V MoE: FLOPs of the active experts",
    ),
    Adapter(
        family="Gemma 3",
        architectures=("Gemma3ForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        image_tokens=vision_tokens.fixed_per_image,
        notes="sliding-window layers: after withdrawal the window counts kept tokens; begin/end-of-image kept",
    ),
    Adapter(
        family="LLaVA-OneVision",
        architectures=("LlavaOnevisionForConditionalGeneration",),
        vision_token_id_keys=("image_token_id", "video_token_id"),
        vision_token_kinds={"image_token_id": "image", "video_token_id": "video"},
        image_tokens=vision_tokens.anyres,
        video_tokens=vision_tokens.pooled_frames,
        notes="images (anyres) and video in one model; image and video tokens withdrawn",
    ),
    Adapter(
        family="Mistral3 / Pixtral",
        architectures=("Mistral3ForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        image_tokens=vision_tokens.merged_grid,
        image_processor_kwargs=vision_tokens.pixtral_patch_size,
        notes="variable image sizes; [IMG] tokens withdrawn, [IMG_BREAK]/[IMG_END] kept",
    ),
    Adapter(
        family="InternVL",
        architectures=("InternVLForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        image_tokens=vision_tokens.tiles,
        notes="<IMG_CONTEXT> tokens withdrawn (every tile); <img>/</img> kept",
    ),
    Adapter(
        family="Aya Vision",
        architectures=("AyaVisionForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        image_tokens=vision_tokens.tiles,
        notes="Cohere2 LM: sliding-window layers (window counts kept tokens) and full layers without RoPE; "
              "<|IMG_PATCH|> withdrawn (every tile), tile / start / end markers kept",
    ),
    Adapter(
        family="Cohere2 Vision",
        architectures=("Cohere2VisionForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        image_tokens=vision_tokens.tiles,  # its image processor's grid: the least upscaling, a thumbnail
        notes="Cohere2 LM: sliding-window layers (window counts kept tokens) and full layers without RoPE; "
              "<|IMG_PATCH|> withdrawn (every tile), line-break / start / end markers kept",
    ),
    Adapter(
        family="VipLLaVA",
        architectures=("VipLlavaForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        image_tokens=vision_tokens.fixed_per_image,
        notes="CLIP features of several layers, fixed number of image tokens per image",
    ),
    Adapter(
        family="LLaVA-NeXT-Video",
        architectures=("LlavaNextVideoForConditionalGeneration",),
        vision_token_id_keys=("image_token_id", "video_token_id"),
        vision_token_kinds=IMAGE_AND_VIDEO,
        flops_components={**LLAVA_COMPONENTS, "projector": ("model.multi_modal_projector", "model.vision_resampler")},
        image_tokens=vision_tokens.anyres,
        notes="anyres images and pooled video frames; image and video tokens withdrawn",
    ),
    Adapter(
        family="Video-LLaVA",
        architectures=("VideoLlavaForConditionalGeneration",),
        vision_token_id_keys=("image_token_id", "video_token_id"),
        vision_token_kinds=IMAGE_AND_VIDEO,
        # its processor hands the images over as `pixel_values_images` (the name before transformers 5.23)
        pixel_input_keys=("pixel_values", "pixel_values_images", "pixel_values_videos", "inputs_embeds"),
        flops_components={**LLAVA_COMPONENTS, "vision_tower": ("model.image_tower", "model.video_tower")},
        image_tokens=vision_tokens.fixed_per_image,
        notes="separate image and video towers; image and video tokens withdrawn",
    ),
    Adapter(
        family="Granite4-Vision",
        architectures=("Granite4VisionForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        flops_components={**LLAVA_COMPONENTS,
                          "projector": ("model.layerwise_projectors", "model.spatial_projectors")},
        deepstack=GRANITE4_VISION_DEEPSTACK,
        image_tokens=vision_tokens.anyres,
        notes="anyres; image features enter only through DeepStack at chosen layers (injections past K dropped, "
              "they only touch withdrawn tokens)",
    ),
    Adapter(
        family="DeepSeek-VL / Janus",
        architectures=("DeepseekVLForConditionalGeneration", "JanusForConditionalGeneration"),
        vision_token_id_keys=("image_token_id",),
        flops_components={**LLAVA_COMPONENTS, "vision_tower": ("model.vision_model",), "projector": ("model.aligner",)},
        image_tokens=vision_tokens.fixed_per_image,
        notes="fixed number of image tokens per image; Janus: image understanding (its image generator is not "
              "involved); <begin_of_image>/<end_of_image> kept",
    ),
    Adapter(
        family="LightOnOCR",
        architectures=("LightOnOcrForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        flops_components={**LLAVA_COMPONENTS, "vision_tower": ("model.vision_encoder",),
                          "projector": ("model.vision_projection",)},
        image_tokens=vision_tokens.merged_grid,
        notes="Pixtral encoder (variable image sizes) + Qwen3; image tokens withdrawn",
    ),
    Adapter(
        family="Ovis2",
        architectures=("Ovis2ForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        flops_components={**LLAVA_COMPONENTS, "projector": ("model.visual_embeddings_table",)},
        image_tokens=vision_tokens.covering_tiles,
        notes="tiles + global view; <IMG_ATOM> withdrawn, visual indicator tokens (start, grid, row, col, end) kept",
    ),
    Adapter(
        family="PaliGemma",
        architectures=("PaliGemmaForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        prompt_blocks=_prefix_lm_blocks,
        image_tokens=vision_tokens.fixed_per_image,
        notes="prefix-LM: the kept text prompt still attends bidirectionally in layers >= K; <image> withdrawn",
    ),
    Adapter(
        family="Idefics2 / Idefics3 / SmolVLM",
        architectures=("Idefics2ForConditionalGeneration", "Idefics3ForConditionalGeneration",
                       "SmolVLMForConditionalGeneration"),
        decoder_layers=_text_model_layers,
        final_norm=_text_model_norm,
        vision_token_id_keys=("image_token_id",),
        flops_components={"vision_tower": ("model.vision_model",), "projector": ("model.connector",),
                          "language_model": ("model.text_model",), "lm_head": ("lm_head",)},
        image_tokens=vision_tokens.split_tiles,
        notes="image splitting + pixel-shuffle connector (Idefics2: perceiver resampler); <image> tokens "
              "withdrawn, tile/row-col tags kept",
    ),
    Adapter(
        family="Gemma 4",
        architectures=("Gemma4ForConditionalGeneration",),
        vision_token_id_keys=("image_token_id", "video_token_id"),
        vision_token_kinds={"image_token_id": "image", "video_token_id": "video"},
        per_position_layer_args=(1,),  # per_layer_input (PLE), passed positionally after the hidden states
        block_bidirectional_kinds=("image", "video"),
        flops_components={"vision_tower": ("model.vision_tower",), "projector": ("model.embed_vision",),
                          "language_model": ("model.language_model",), "lm_head": ("lm_head",)},
        image_tokens=vision_tokens.pooled_patches,
        video_tokens=vision_tokens.pooled_patches_per_frame,
        notes="sliding + full layers, per-layer inputs sliced like the hidden states; with KV sharing only K <= "
              "the last producer layer is exact (others refused); image and video tokens withdrawn together",
    ),
    Adapter(
        family="Llama 4",
        architectures=("Llama4ForConditionalGeneration",),
        decoder_layers=_llama4_layers,
        final_norm=_llama4_norm,
        vision_token_id_keys=("image_token_id",),
        flops_components={"vision_tower": ("vision_model",), "projector": ("multi_modal_projector",),
                          "language_model": ("language_model.model",), "lm_head": ("language_model.lm_head",)},
        upstream_defect=_reads_missing_image_outputs,
        notes="chunked + NoPE layers; transformers 5.24's forward is broken upstream: withdraw from "
              "model.language_model with inputs_embeds + vision_mask",
    ),
    Adapter(
        family="Llama 4 language model",
        architectures=("Llama4ForCausalLM",),
        decoder_layers=_causal_lm_layers,
        final_norm=_causal_lm_norm,
        text_config=_own_config,
        vision_token_id_keys=(),
        pixel_input_keys=("inputs_embeds",),
        flops_components={"language_model": ("model",), "lm_head": ("lm_head",)},
        notes="Llama 4's language model on inputs_embeds with the image features merged in; vision_mask= marks them",
    ),
    Adapter(
        family="Qwen3.5 / Qwen3.5-MoE",
        architectures=("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"),
        vision_token_id_keys=("image_token_id", "video_token_id"),
        vision_token_kinds={"image_token_id": "image", "video_token_id": "video"},
        positions_from_mask=False,  # M-RoPE: the model computes 3-D positions (and rope_deltas) itself
        state_layer_types=("linear_attention",),
        flops_components={"vision_tower": ("model.visual.patch_embed", "model.visual.pos_embed", "model.visual.blocks"),
                          "projector": ("model.visual.merger",), "language_model": ("model.language_model",),
                          "lm_head": ("lm_head",)},
        image_tokens=vision_tokens.merged_patches,
        video_tokens=vision_tokens.video_patches,
        notes="Gated DeltaNet (linear attention: conv + recurrent state) interleaved with full attention; M-RoPE; "
              "image and video pads withdrawn",
    ),
    Adapter(
        family="LFM2-VL",
        architectures=("Lfm2VlForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        final_norm=_embedding_norm,
        state_layer_types=("conv",),
        image_tokens=vision_tokens.smart_resized_tiles,
        notes="short-conv layers (fixed conv state) interleaved with full attention; <image> tokens withdrawn",
    ),
)
