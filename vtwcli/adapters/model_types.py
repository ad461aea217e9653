"""Per-model facts the closed-form FLOPs need, keyed by a sub-config's ``model_type`` (the text model or the
vision tower of a family; one text model serves several families, so the key is the config's, not the entry's).

:mod:`vtwcli.measure.text_layers` and :mod:`vtwcli.measure.flops` hold the formulas; which formula applies to a
model is a fact kept here, beside the adapter entries, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TEXT_MODELS", "TextModel", "VISION_TOWERS", "VisionTower", "text_model_of", "vision_tower_of"]


@dataclass(frozen=True)
class TextModel:
    # Attention's q projection also yields an output gate of the same width (Qwen3.5: q_proj -> 2 x heads x d).
    gated_query: bool = False
    # "dense" (3-matrix gated MLP), "moe" (router + active experts + shared experts) or "lfm2" (dense, LFM2's sizing).
    mlp: str = "dense"
    # MoE: the config key of the number of routed experts (the router's width), and the shared experts: "gated"
    # (Qwen3.5-MoE: one of shared_expert_intermediate_size, scaled by a 1-wide sigmoid gate), "per_expert" (GLM-4.5V:
    # n_shared_experts x moe_intermediate_size wide) or None. Which layers are sparse is the config's
    # (first_k_dense_replace, mlp_only_layers, decoder_sparse_step; text_layers.sparse_layer).
    experts_key: str = "num_experts"
    shared_experts: str | None = None
    # KV sharing (the config's `kv_sharing_modes`): a "reuse" layer attends with another layer's keys/values (no k/v
    # projections, a double-wide MLP where `use_double_wide_mlp`) and, in a prefill asked for the last logits only,
    # runs the last query only; full layers with `attention_k_eq_v` project keys only (values = keys).
    kv_sharing: bool = False
    # Per-layer inputs (PLE, `hidden_size_per_layer_input`): the embeddings projected once to layers x that width,
    # and per layer a gate to it and a projection back.
    per_layer_inputs: bool = False


TEXT_MODELS: dict[str, TextModel] = {
    "llama": TextModel(), "mistral": TextModel(), "qwen2": TextModel(), "qwen2_vl_text": TextModel(),
    "qwen2_5_vl_text": TextModel(), "gemma3_text": TextModel(),
    # dense text models of the Qwen3-VL / GLM-4V / Cohere2 / Granite families (same layer shape)
    "gemma": TextModel(), "qwen3": TextModel(), "qwen3_vl_text": TextModel(), "glm4v_text": TextModel(),
    "cohere2": TextModel(), "granite4_vision_text": TextModel(),
    "qwen3_5_text": TextModel(gated_query=True),
    "qwen3_5_moe_text": TextModel(gated_query=True, mlp="moe", shared_experts="gated"),
    "qwen3_vl_moe_text": TextModel(mlp="moe"),
    "glm4v_moe_text": TextModel(mlp="moe", experts_key="n_routed_experts", shared_experts="per_expert"),
    "lfm2": TextModel(mlp="lfm2"),
    "gemma4_text": TextModel(kv_sharing=True, per_layer_inputs=True),
}


@dataclass(frozen=True)
class VisionTower:
    """A ViT tower of the fixed image layout: patch conv, attention, 2-matrix MLP per layer."""

    # A CLS token is prepended to the patches (CLIP), which the "full" feature strategy hands on.
    cls_token: bool = True


VISION_TOWERS: dict[str, VisionTower] = {
    "clip_vision_model": VisionTower(cls_token=True),
    "siglip_vision_model": VisionTower(cls_token=False),
}


def text_model_of(text_config) -> TextModel | None:
    """The closed form's facts for this text config, or None where there is none."""
    return TEXT_MODELS.get(text_config.model_type)


def vision_tower_of(vision_config) -> VisionTower | None:
    """The closed form's facts for this vision config, or None where there is none."""
    return VISION_TOWERS.get(vision_config.model_type)
