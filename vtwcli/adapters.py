"""Per-architecture facts, one small entry per model family.

The withdrawal engine never branches on the architecture: everything it needs to know about a family
(where the decoder layers are, which token ids are vision tokens, which config describes the text
model) is looked up here. Supporting a new family means adding an entry, not editing the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from vtwcli import vision_tokens
from vtwcli.errors import UnsupportedError, VtwError

if TYPE_CHECKING:  # annotations only: `vtw models` must not wait for torch
    from torch import nn


# The "--withdraw" vocabulary: which kinds of vision token a family can withdraw.
VISION_KINDS = ("image", "video")


def validate_kinds(kinds) -> tuple[str, ...]:
    """A --withdraw selection as a tuple: a non-empty subset of VISION_KINDS, else VtwError."""
    kinds = tuple(kinds)
    if not kinds or any(k not in VISION_KINDS for k in kinds):
        raise VtwError(f"--withdraw {','.join(kinds) or '(empty)'}: use image, video or image,video")
    return kinds


def parse_kinds(text: str | None) -> tuple[str, ...] | None:
    """``--withdraw image,video`` -> ("image", "video"); None stays None (every vision token)."""
    if text is None:
        return None
    return validate_kinds(part.strip() for part in text.split(",") if part.strip())


# The transformers 5.x layout most families share: <Family>ForConditionalGeneration.model.language_model.
def _language_model_layers(model: nn.Module) -> nn.ModuleList:
    return model.model.language_model.layers


def _language_model_norm(model: nn.Module) -> nn.Module:
    return model.model.language_model.norm


def _text_config(config):
    return config.text_config


def _config_layer_types(text_config, num_layers: int) -> list[str]:
    types = getattr(text_config, "layer_types", None)
    if types:
        return list(types)[:num_layers]
    return ["full_attention"] * num_layers


@dataclass(frozen=True)
class DeepStack:
    """Vision features a family adds to the hidden states of its vision tokens INSIDE the decoder
    (DeepStack: Qwen3-VL after each of its first layers, Granite4-Vision before chosen layers).

    Every injection goes to the family's vision tokens only. One that reaches a layer > K would touch only
    withdrawn tokens, and the short sequence has no room for it: withdrawal hands ``module`` only the
    injections into layers <= K (made while the sequence is still whole). Where some vision tokens are kept
    (``--withdraw image`` with a video in the prompt), dropping would change them: refused.
    """

    # The module whose forward receives the injections, and the keyword argument that carries them.
    module: Callable[[nn.Module], nn.Module]
    argument: str
    # The decoder layer whose INPUT each injection changes, in the order of the entries.
    target_layers: Callable[[object], list[int]]
    # The same container with only the entries whose flag is True.
    select: Callable[[object, list[bool]], object]


def _after_each_layer(features) -> list[int]:
    # Qwen3-VL: entry i is added to the output of layer i, i.e. to the input of layer i + 1.
    return [i + 1 for i in range(len(features))]


def _select_entries(features, keep: list[bool]):
    # Entries are positional (entry i = layer i): the flags of layers <= K only ever drop a suffix.
    return [entry for entry, kept in zip(features, keep) if kept]


def _dict_keys(features) -> list[int]:
    # Granite4-Vision: {layer: features}, each added to the vision tokens just before that layer.
    return list(features)


def _select_items(features, keep: list[bool]):
    return {layer: entry for (layer, entry), kept in zip(features.items(), keep) if kept}


GRANITE4_VISION_DEEPSTACK = DeepStack(module=lambda model: model.model.language_model, argument="deepstack_features",
                                      target_layers=_dict_keys, select=_select_items)
QWEN3_VL_DEEPSTACK = DeepStack(module=lambda model: model.model.language_model, argument="deepstack_visual_embeds",
                               target_layers=_after_each_layer, select=_select_entries)


def _prefix_lm_blocks(kwargs: dict):
    # PaliGemma: token_type_ids 0 = the prompt (image + text prefix, one bidirectional block), 1 = the suffix.
    token_types = kwargs.get("token_type_ids")
    return None if token_types is None else -(token_types != 0).long()

def _config_shared_kv(text_config, num_layers: int) -> dict[int, int]:
    """KV sharing from the text config's `kv_sharing_modes` (Gemma 4: "reuse" layers attend with the keys and
    values that the last "store" layer of their attention type computed); {} where the config has none."""
    modes = list(getattr(text_config, "kv_sharing_modes", None) or [])[:num_layers]
    types = _config_layer_types(text_config, num_layers)
    producers = {types[i]: i for i, mode in enumerate(modes) if mode == "store"}
    # -1: the producer is outside this model (every layer reuses), so no K < L is exact
    return {i: producers.get(types[i], -1) for i, mode in enumerate(modes) if mode == "reuse"}


LLAVA_COMPONENTS = {"vision_tower": ("model.vision_tower",), "projector": ("model.multi_modal_projector",),
                    "language_model": ("model.language_model",), "lm_head": ("lm_head",)}


@dataclass(frozen=True)
class Adapter:
    family: str
    architectures: tuple[str, ...]
    # Config attributes holding the ids of the tokens that stand for vision features.
    vision_token_id_keys: tuple[str, ...]
    # Where the text decoder's layers are, on an unmodified model of this family.
    decoder_layers: Callable[[nn.Module], nn.ModuleList] = _language_model_layers
    # The norm applied after the last decoder layer, before the output head.
    final_norm: Callable[[nn.Module], nn.Module] = _language_model_norm
    # The config that describes the language model (its masks, RoPE and layer count).
    text_config: Callable[[object], object] = _text_config
    # Which input is "vision" for the user-facing `--withdraw` choice (image, video).
    vision_token_kinds: dict[str, str] = field(default_factory=dict)
    # Forward arguments that carry pixels: a call with one of them inserts vision features.
    pixel_input_keys: tuple[str, ...] = ("pixel_values", "pixel_values_videos", "inputs_embeds")
    # Attention type of each decoder layer ("full_attention", "sliding_attention", ...): layers >= K get
    # the kept-sequence mask of their own type. Default: the text config's `layer_types`, else all full.
    layer_types: Callable[[object, int], list[str]] = _config_layer_types
    # Layer types whose layers keep a fixed-size conv / recurrent state instead of a KV cache (Gated DeltaNet
    # "linear_attention", short-conv "conv"). Layers >= K of these types get the 2-D validity of this call's
    # kept slots (transformers' `create_recurrent_attention_mask`), which zeroes filler slots before they reach
    # the state; the count of tokens seen comes from an attention layer's cache. A type that is neither an
    # attention type nor listed here is refused.
    state_layer_types: tuple[str, ...] = ()
    # Optional override of how the kept-sequence masks are built (keyword arguments: text_config,
    # first_layer, layer_types, hidden, validity, cache; returns {layer type: mask}).
    build_withdrawn_masks: Callable[..., dict] | None = None
    # Sequence dim of the per-position tensors the decoder layers receive: `position_ids` (batch dim
    # just before it; 3-D M-RoPE ids (3, B, S) use -1 too) and the rotary `position_embeddings` (cos, sin).
    position_ids_seq_dim: int = -1
    position_embeddings_seq_dim: int = 1
    # True where a plain forward numbers positions 0..S-1 whatever the padding, so callers that must match
    # generate() pass mask-cumsum `position_ids`; False where the model derives positions from the mask
    # itself (M-RoPE families compute 3-D positions from input_ids + attention_mask when none are given).
    positions_from_mask: bool = True
    # Modules whose FLOPs make up each component of the profile's FLOPs breakdown, as paths from the
    # model's root; a component may span several modules (Qwen2-VL's tower holds the merger = projector).
    flops_components: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(LLAVA_COMPONENTS))
    # True where the config alone fixes the vision inputs (one square image -> a fixed token count):
    # `vtw profile` then builds its prompt from token ids and can count FLOPs on the meta device
    # (--flops-only) and in closed form. Elsewhere the prompt comes from the model's processor.
    fixed_image_layout: bool = False
    # Vision tokens one image of W x H becomes, from the config files alone: (config, image processor built
    # from preprocessor_config.json, width, height) -> int, a rule of vtwcli/vision_tokens.py. With it,
    # `vtw profile --flops-only --image-size WxH` counts this family from its config on the meta device.
    image_tokens: Callable[..., int] | None = None
    # Vision features injected inside the decoder (DeepStack), or None.
    deepstack: DeepStack | None = None
    # Bidirectional blocks of the prompt from the top-level forward's arguments: (B, S) block ids (tokens of one
    # block >= 0 attend to each other both ways, -1 = causal), or None for a call without them. PaliGemma's
    # prefix-LM makes the whole prompt (image AND text) one block; layers >= K keep the block for the kept
    # tokens, passed to transformers' mask builders as `block_sequence_ids` on the prompt's forward.
    prompt_blocks: Callable[[dict], object] | None = None
    # True where video frames carry the IMAGE token (GLM-4V): the family takes videos, withdrawn as image tokens
    # (the ids cannot tell the two apart, so `--withdraw` has one kind, image).
    video_frames_as_images: bool = False
    # Positional arguments of a decoder layer call, after the hidden states, that carry one entry per position
    # (batch, seq, ...), such as Gemma 4's per-layer inputs: layers >= K get them at the kept slots.
    per_position_layer_args: tuple[int, ...] = ()
    # KV sharing: {consumer layer: producer layer} for layers that attend with another layer's keys/values
    # instead of their own. Withdrawal at K is exact only where no consumer >= K reads a producer < K (whose
    # keys/values hold the vision tokens); `withdrawal.exact_layers` lists the K that are, the others are refused.
    shared_kv_layers: Callable[[object, int], dict[int, int]] = _config_shared_kv
    # A defect of the installed transformers that makes this family's forward unusable: returns a one-line
    # reason (transformers version, what fails, what still works) or None. Checked by withdraw() and the CLI.
    upstream_defect: Callable[[str], str | None] | None = None
    # Kinds whose tokens attend bidirectionally inside their blocks in some layers (Gemma 4: images and video
    # frames): withdrawing only some kinds would keep such blocks in layers >= K, whose masks are causal, so a
    # selection that keeps tokens of these kinds is refused.
    block_bidirectional_kinds: tuple[str, ...] = ()
    notes: str = ""

    def declared_kinds(self, config=None) -> list[str]:
        """The kinds of vision tokens ("image", "video") of this family, or of this model's ``config``
        (only the keys it sets)."""
        return sorted({self.vision_token_kinds.get(key, "image") for key in self.vision_token_id_keys
                       if config is None or getattr(config, key, None) is not None})

    def accepts_video(self, config) -> bool:
        """Whether this model takes video input (its template and processor would not drop a video)."""
        return self.video_frames_as_images or "video" in self.declared_kinds(config)

    def check_kinds(self, config, kinds: tuple[str, ...] | None) -> None:
        """Refuse a --withdraw selection that names no vision token this model has."""
        if kinds is not None and not self.vision_token_ids(config, kinds):
            raise UnsupportedError(f"--withdraw {','.join(kinds)}: {self.family} has no such tokens; its vision "
                                   f"tokens are {', '.join(self.declared_kinds(config)) or 'none'}")

    def context_limit(self, config) -> int | None:
        """The longest sequence the language model is built for (max_position_embeddings), if it says."""
        limit = getattr(self.text_config(config), "max_position_embeddings", None)
        return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None

    def check_prompt_fits(self, config, tokens: int, *, extra: int = 0, why: str = "",
                          what: str = "the synthetic prompt", fix: str = "lower --text-tokens / --images") -> None:
        """Refuse a sequence longer than the model's context before any forward: past its trained positions
        a model still runs, and its numbers would be silently meaningless."""
        limit = self.context_limit(config)
        if limit is not None and tokens + extra > limit:
            raise VtwError(f"{what} is {tokens} tokens (text and vision){why}, more than the model's context of "
                           f"{limit} tokens (max_position_embeddings); {fix}")

    def vision_token_ids(self, config, kinds: tuple[str, ...] | None = None) -> list[int]:
        ids = []
        for key in self.vision_token_id_keys:
            if kinds is not None and self.vision_token_kinds.get(key, "image") not in kinds:
                continue
            value = getattr(config, key, None)
            if value is not None:
                ids.append(int(value))
        return ids


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
        notes="images (anyres) and video in one model; image and video tokens withdrawn",
    ),
    Adapter(
        family="Mistral3 / Pixtral",
        architectures=("Mistral3ForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
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
        family="Aya Vision / Cohere2 Vision",
        architectures=("AyaVisionForConditionalGeneration", "Cohere2VisionForConditionalGeneration"),
        vision_token_id_keys=("image_token_id",),
        notes="Cohere2 LM: sliding-window layers (window counts kept tokens) and full layers without RoPE; "
              "<|IMG_PATCH|> withdrawn (every tile), tile / line-break / start / end markers kept",
    ),
    Adapter(
        family="VipLLaVA",
        architectures=("VipLlavaForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        notes="CLIP features of several layers, fixed number of image tokens per image",
    ),
    Adapter(
        family="LLaVA-NeXT-Video",
        architectures=("LlavaNextVideoForConditionalGeneration",),
        vision_token_id_keys=("image_token_id", "video_token_id"),
        vision_token_kinds=IMAGE_AND_VIDEO,
        flops_components={**LLAVA_COMPONENTS, "projector": ("model.multi_modal_projector", "model.vision_resampler")},
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
        notes="separate image and video towers; image and video tokens withdrawn",
    ),
    Adapter(
        family="Granite4-Vision",
        architectures=("Granite4VisionForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        flops_components={**LLAVA_COMPONENTS,
                          "projector": ("model.layerwise_projectors", "model.spatial_projectors")},
        deepstack=GRANITE4_VISION_DEEPSTACK,
        notes="anyres; image features enter only through DeepStack at chosen layers (injections past K dropped, "
              "they only touch withdrawn tokens)",
    ),
    Adapter(
        family="DeepSeek-VL / Janus",
        architectures=("DeepseekVLForConditionalGeneration", "JanusForConditionalGeneration"),
        vision_token_id_keys=("image_token_id",),
        flops_components={**LLAVA_COMPONENTS, "vision_tower": ("model.vision_model",), "projector": ("model.aligner",)},
        notes="fixed number of image tokens per image; Janus: image understanding (its image generator is not "
              "involved); <begin_of_image>/<end_of_image> kept",
    ),
    Adapter(
        family="LightOnOCR",
        architectures=("LightOnOcrForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        flops_components={**LLAVA_COMPONENTS, "vision_tower": ("model.vision_encoder",),
                          "projector": ("model.vision_projection",)},
        notes="Pixtral encoder (variable image sizes) + Qwen3; image tokens withdrawn",
    ),
    Adapter(
        family="Ovis2",
        architectures=("Ovis2ForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        flops_components={**LLAVA_COMPONENTS, "projector": ("model.visual_embeddings_table",)},
        notes="tiles + global view; <IMG_ATOM> withdrawn, visual indicator tokens (start, grid, row, col, end) kept",
    ),
    Adapter(
        family="PaliGemma",
        architectures=("PaliGemmaForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        prompt_blocks=_prefix_lm_blocks,
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
        notes="Gated DeltaNet (linear attention: conv + recurrent state) interleaved with full attention; M-RoPE; "
              "image and video pads withdrawn",
    ),
    Adapter(
        family="LFM2-VL",
        architectures=("Lfm2VlForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        final_norm=_embedding_norm,
        state_layer_types=("conv",),
        notes="short-conv layers (fixed conv state) interleaved with full attention; <image> tokens withdrawn",
    ),
)

@dataclass(frozen=True)
class Uncovered:
    """An image-text-to-text family of transformers that withdrawal does not cover, and why."""

    architectures: tuple[str, ...]
    reason: str


# Every image-text-to-text family of the installed transformers (its MODEL_FOR_IMAGE_TEXT_TO_TEXT mapping) is
# either supported (ADAPTERS), planned or not applicable; `vtw models` and docs/architectures.md list all three
# and a test checks that no family of the mapping is missing. Planned: withdrawal applies, the work is not done.
PLANNED: dict[str, Uncovered] = {
    # Read, not done: what withdrawal needs beyond an adapter entry.
    "Gemma 3n": Uncovered(("Gemma3nForConditionalGeneration",),
                          "per-layer inputs (PLE) to slice with the hidden states, KV sharing across layers, audio "
                          "tokens"),
    "Molmo2": Uncovered(("Molmo2ForConditionalGeneration",),
                        "image_patch_id tokens, bidirectional inside image blocks (gone past K, as in Gemma 3); its "
                        "processor needs torchvision and builds pooling indices: no tiny model yet"),
    "MiniCPM-V 4.6 / 4.7 / MiniCPM-OCR": Uncovered(
        ("MiniCPMV4_6ForConditionalGeneration", "MiniCPMV4_7ForConditionalGeneration",
         "MiniCPMOcrForConditionalGeneration"),
        "a Qwen3.5 language model (supported as Qwen3.5) behind MiniCPM's own vision tower and merger; "
        "not tested yet"),
    "Kimi-K2.5": Uncovered(("Kimi_K25ForConditionalGeneration",),
                           "DeepSeek-V3 language model (MLA attention, MoE); not tested yet"),
    "Nemotron-H Omni": Uncovered(("NemotronH_Omni_Reasoning_V3",),
                                 "hybrid Mamba language model: recurrent state past K, like Qwen3.5"),
    "Qwen2.5-Omni / Qwen3-Omni (thinker)": Uncovered(
        ("Qwen2_5OmniThinkerForConditionalGeneration", "Qwen3OmniMoeThinkerForConditionalGeneration"),
        "audio tokens interleaved with video (TMRoPE); not tested yet"),
    "Chameleon / Emu3": Uncovered(("ChameleonForConditionalGeneration", "Emu3ForConditionalGeneration"),
                                  "early fusion: images are VQ codes of the vocabulary (a range of ids, not one)"),
    "BLIP-2 / InstructBLIP / InstructBLIP-Video": Uncovered(
        ("Blip2ForConditionalGeneration", "InstructBlipForConditionalGeneration",
         "InstructBlipVideoForConditionalGeneration"),
        "Q-Former query tokens in the language model's input; the Flan-T5 variants are encoder-decoders"),
    "Kosmos-2 / Kosmos-2.5": Uncovered(("Kosmos2ForConditionalGeneration", "Kosmos2_5ForConditionalGeneration"),
                                       "image embeddings placed by image_embeds_position_mask, no image token id"),
    "GIT": Uncovered(("GitForCausalLM",), "image features prepended as embeddings, attended bidirectionally"),
    "Fuyu": Uncovered(("FuyuForCausalLM",), "image patches projected straight into the sequence; not tested yet"),
    "Aria": Uncovered(("AriaForConditionalGeneration",), "MoE language model; not tested yet"),
    "DeepSeek-VL-Hybrid / DeepSeek-OCR-2 / Unlimited-OCR": Uncovered(
        ("DeepseekVLHybridForConditionalGeneration", "DeepseekOcr2ForConditionalGeneration",
         "UnlimitedOcrForConditionalGeneration"), "a second (SAM) high-resolution tower; not tested yet"),
    "PerceptionLM": Uncovered(("PerceptionLMForConditionalGeneration",),
                              "its vision tower is a timm model: no tiny model without timm; not tested yet"),
    "FastVLM": Uncovered(("FastVlmForConditionalGeneration",),
                         "its vision tower (FastViTHD) is a timm model: no tiny model without timm; not tested yet"),
    "GOT-OCR2 / PP-Chart2Table": Uncovered(("GotOcr2ForConditionalGeneration",), "not tested yet"),
    "Granite Docling": Uncovered(("GraniteDoclingForConditionalGeneration",), "not tested yet"),
    "GLM-OCR / GLM-5-Next": Uncovered(("GlmOcrForConditionalGeneration", "Glm5NextForConditionalGeneration"),
                                      "M-RoPE like GLM-4.1V; not tested yet"),
    "Mistral Large 4 / Mistral 4": Uncovered(("MistralLarge4ForConditionalGeneration", "Mistral4ForCausalLM"),
                                             "not tested yet"),
    "MiniMax-M3-VL": Uncovered(("MiniMaxM3SparseForConditionalGeneration",), "not tested yet"),
    "ERNIE-4.5-VL-MoE": Uncovered(("Ernie4_5_VLMoeForConditionalGeneration",),
                                  "modality-specific experts; not tested yet"),
    "PaddleOCR-VL": Uncovered(("PaddleOCRVLForConditionalGeneration",), "M-RoPE; not tested yet"),
    "VideoLLaMA3": Uncovered(("VideoLlama3ForConditionalGeneration",), "not tested yet"),
    "HunYuan-VL / HY-V4-VL": Uncovered(("HunYuanVLForConditionalGeneration", "HYV4VLForConditionalGeneration"),
                                       "not tested yet"),
    "HyperCLOVA X Vision V2": Uncovered(("HyperCLOVAXVisionV2ForConditionalGeneration",), "not tested yet"),
    "Exaone 4.5": Uncovered(("Exaone4_5_ForConditionalGeneration",), "not tested yet"),
    "Step3p7": Uncovered(("Step3p7ForConditionalGeneration",), "not tested yet"),
    "Dots3 Note": Uncovered(("Dots3NoteForConditionalGeneration",), "not tested yet"),
    "Qianfan-OCR": Uncovered(("QianfanOCRForConditionalGeneration",), "not tested yet"),
    "Apertus 1.5": Uncovered(("Apertus1p5ForConditionalGeneration",), "not tested yet"),
    "Cohere Compass": Uncovered(("CohereCompassForConditionalGeneration",), "not tested yet"),
    "Cosmos3 Edge / Omni": Uncovered(("Cosmos3EdgeForConditionalGeneration", "Cosmos3OmniForConditionalGeneration"),
                                     "not tested yet"),
    "Inkling / Inkling2 / Inkling2-Loop": Uncovered(
        ("InklingForConditionalGeneration", "Inkling2ForConditionalGeneration", "Inkling2LoopForConditionalGeneration"),
        "not tested yet"),
    "Muse Glimmer / Muse Spark": Uncovered(("MuseGlimmerForConditionalGeneration", "MuseSparkForConditionalGeneration"),
                                           "not tested yet"),
    "LFM3-VL": Uncovered(("Lfm3VlForConditionalGeneration",), "not tested yet"),
    "Qwen4-Exp": Uncovered(("Qwen4ExpForConditionalGeneration",), "not tested yet"),
    "Gemma 4 Unified": Uncovered(("Gemma4UnifiedForConditionalGeneration",),
                                 "Gemma 4's mechanisms (per-layer inputs, KV sharing); not tested yet"),
}

# Families where withdrawing vision tokens from the decoder's sequence does not apply.
NOT_APPLICABLE: dict[str, Uncovered] = {
    "Mllama (Llama 3.2 Vision)": Uncovered(("MllamaForConditionalGeneration",),
                                           "cross-attention: image features never enter the decoder's sequence"),
    "Idefics (v1)": Uncovered(("IdeficsForVisionText2Text",), "cross-attention: no vision tokens in the sequence"),
    "Encoder-decoders": Uncovered(
        ("Florence2ForConditionalGeneration", "Pix2StructForConditionalGeneration",
         "PPFormulaNetForConditionalGeneration", "T5Gemma2ForConditionalGeneration", "UdopForConditionalGeneration", "VisionEncoderDecoderModel",
         "BlipForConditionalGeneration"),
        "the image is read by an encoder (and cross-attention), the decoder has no vision tokens to withdraw"),
    "Evolla": Uncovered(("EvollaForProteinText2Text",), "protein-text model: no vision tokens"),
    "PI0": Uncovered(("PI0ForConditionalGeneration",), "vision-language-action policy: actions from a flow-matching "
                                                         "expert, not next-token decoding"),
    "Diffusion Gemma": Uncovered(("DiffusionGemmaForBlockDiffusion",),
                                 "block diffusion: bidirectional denoising, not causal next-token decoding"),
}


def supported_architectures() -> list[str]:
    return [arch for adapter in ADAPTERS for arch in adapter.architectures]


# Adapters derived at run time for architectures without an entry (`--generic`, vtwcli/generic.py), by class
# name; only ever filled after `vtw verify` passed on the model.
DERIVED: dict[str, Adapter] = {}


def has_entry(architecture: str) -> bool:
    """True where an adapter entry (not a --generic derivation) lists ``architecture``."""
    return any(architecture in adapter.architectures for adapter in ADAPTERS)


def adapter_for_architecture(architecture: str) -> Adapter:
    for adapter in ADAPTERS:
        if architecture in adapter.architectures:
            return adapter
    if architecture in DERIVED:
        return DERIVED[architecture]
    why = next((f" ({status}: {entry.reason})" for status, entries in (("planned", PLANNED),
                                                                         ("not applicable", NOT_APPLICABLE))
                for entry in entries.values() if architecture in entry.architectures), "")
    raise UnsupportedError(
        f"architecture {architecture} has no vtwcli adapter{why}; supported: {', '.join(supported_architectures())} "
        "(see `vtw models`)"
    )


def adapter_for(model: nn.Module) -> Adapter:
    return adapter_for_architecture(type(model).__name__)
