"""The adapter mechanism: the `Adapter` entry (every field a generic mechanism of the withdrawal engine reads),
its defaults (the transformers 5.x <Family>ForConditionalGeneration layout most families share), DeepStack and
the ``--withdraw`` vocabulary. The entries themselves are in :mod:`vtwcli.adapters.entries`.
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


def config_layer_types(text_config, num_layers: int) -> list[str]:
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
    # Where the vision tokens receive nothing but the injections (Granite4-Vision: get_image_features' output has
    # no pooler_output): the features of one injection, from that output; config-only FLOPs check their count.
    injected_features: Callable[[object], object] | None = None


def _config_shared_kv(text_config, num_layers: int) -> dict[int, int]:
    """KV sharing from the text config's `kv_sharing_modes` (Gemma 4: "reuse" layers attend with the keys and
    values that the last "store" layer of their attention type computed); {} where the config has none."""
    modes = list(getattr(text_config, "kv_sharing_modes", None) or [])[:num_layers]
    types = config_layer_types(text_config, num_layers)
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
    layer_types: Callable[[object, int], list[str]] = config_layer_types
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
    # What the family's processor hands its image processor on every call, from the config (PixtralProcessor:
    # patch_size x spatial_merge_size): the rule and the config-only count see the image processor with it.
    image_processor_kwargs: Callable[[object], dict] | None = None
    # Vision tokens one video of F frames of W x H becomes, from the config files alone: (config, video processor
    # built from video_preprocessor_config.json / preprocessor_config.json, frames, width, height) -> int, a rule
    # of vtwcli/vision_tokens.py. With it, `vtw profile --flops-only --videos N --frames F` counts the videos too.
    video_tokens: Callable[..., int] | None = None
    # Vision features injected inside the decoder (DeepStack), or None.
    deepstack: DeepStack | None = None
    # Bidirectional blocks of the prompt from the top-level forward's arguments: (B, S) block ids (tokens of one
    # block >= 0 attend to each other both ways, -1 = causal), or None for a call without them. PaliGemma's
    # prefix-LM makes the whole prompt (image AND text) one block; layers >= K keep the block for the kept
    # tokens, passed to transformers' mask builders as `block_sequence_ids` on the prompt's forward.
    prompt_blocks: Callable[[dict], object] | None = None
    # True where video frames carry the IMAGE token (GLM-4V): the family takes videos, withdrawn as image tokens
    # (the ids cannot tell the two apart, so `--withdraw` has one kind, image: `video_kind`). Its forward then
    # cannot take images and videos in one prompt either (transformers 5.24 scatters the image features over every
    # image token, the frames' too): `vtw profile` refuses the mix (`check_videos`).
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

    @property
    def video_kind(self) -> str:
        """The `--withdraw` kind whose selection withdraws this family's video tokens ("image" where video frames
        carry the image token)."""
        return "image" if self.video_frames_as_images else "video"

    def accepts_video(self, config) -> bool:
        """Whether this model takes video input (its template and processor would not drop a video)."""
        return self.video_frames_as_images or "video" in self.declared_kinds(config)

    def check_kinds(self, config, kinds: tuple[str, ...] | None) -> None:
        """Refuse a --withdraw selection that names no vision token this model has."""
        if kinds is not None and "video" in kinds and self.video_kind == "image" and "image" not in kinds:
            raise UnsupportedError(f"--withdraw {','.join(kinds)}: {self.family}'s video frames carry the image "
                                   "token, so they cannot be withdrawn apart from the images; use --withdraw image "
                                   "(images and video frames) or drop --withdraw")
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
