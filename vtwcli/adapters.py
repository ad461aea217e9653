"""Per-architecture facts, one small entry per model family.

The withdrawal engine never branches on the architecture: everything it needs to know about a family
(where the decoder layers are, which token ids are vision tokens, which config describes the text
model) is looked up here. Supporting a new family means adding an entry, not editing the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

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
        notes="anyres: variable image tokens per image (image-newline features included)",
    ),
    Adapter(
        family="Qwen2-VL / Qwen2.5-VL",
        architectures=("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"),
        vision_token_id_keys=("image_token_id", "video_token_id"),
        vision_token_kinds={"image_token_id": "image", "video_token_id": "video"},
        positions_from_mask=False,  # M-RoPE: the model computes 3-D positions (and rope_deltas) itself
        flops_components={"vision_tower": ("model.visual.patch_embed", "model.visual.blocks"),
                          "projector": ("model.visual.merger",), "language_model": ("model.language_model",),
                          "lm_head": ("lm_head",)},
        notes="M-RoPE: original 3-D positions kept; image and video pads withdrawn, vision start/end kept",
    ),
    Adapter(
        family="Gemma 3",
        architectures=("Gemma3ForConditionalGeneration",),
        vision_token_id_keys=("image_token_id",),
        notes="sliding-window layers: after withdrawal the window counts kept tokens; begin/end-of-image kept",
    ),
    Adapter(
        family="LLaVA-OneVision",
        architectures=("LlavaOnevisionForConditionalGeneration",),
        vision_token_id_keys=("image_token_id", "video_token_id"),
        vision_token_kinds={"image_token_id": "image", "video_token_id": "video"},
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
        notes="<IMG_CONTEXT> tokens withdrawn (every tile); <img>/</img> kept",
    ),
    Adapter(
        family="Idefics3 / SmolVLM",
        architectures=("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration"),
        decoder_layers=_text_model_layers,
        final_norm=_text_model_norm,
        vision_token_id_keys=("image_token_id",),
        flops_components={"vision_tower": ("model.vision_model",), "projector": ("model.connector",),
                          "language_model": ("model.text_model",), "lm_head": ("lm_head",)},
        notes="image splitting + pixel-shuffle connector; <image> tokens withdrawn, tile/row-col tags kept",
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

# Families on the roadmap (family -> comma-separated transformers classes): listed by `vtw models` with
# status "planned" so users know what is coming. Every family of the roadmap so far is supported.
PLANNED: dict[str, str] = {}


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
