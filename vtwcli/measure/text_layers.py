"""Closed-form FLOPs of one decoder layer of a text model, per layer type (the profile's analytic count).

Convention as in :mod:`vtwcli.measure.flops`: FLOPs = 2 x multiply-accumulates, matmul-like work only
(projections, convolutions, the attention matmuls over the full q x k grid, the recurrence's matrix-vector
products); norms, activations, gates, decays and residual adds are 0.

Token mixers, by the config's layer type:

* attention ("full_attention", "sliding_attention", ...): q, k, v, o projections (GQA: k, v have the kv
  heads; a gated query, as in Qwen3.5, projects twice the query width), QK^T and AV per query head over
  ``keys`` keys; head width and kv heads per layer where the config has a ``per_layer_config`` (Gemma 4's full
  layers); KV sharing (Gemma 4): a "reuse" layer has no k, v projections and, in a prefill asked for the last
  logits only (as ``count_flops`` asks), runs the last query only; ``attention_k_eq_v``: full layers project
  keys only;
* Gated DeltaNet ("linear_attention", Qwen3.5): q, k, v, z, a, b and output projections; a causal depthwise
  conv of ``linear_conv_kernel_dim`` taps over q, k and v; the delta rule as transformers' torch kernels run it
  (:func:`delta_rule_flops`): in prefill chunked (``torch_chunk_gated_delta_rule``, 64-token chunks, the prompt
  padded to a multiple of 64), in a decode step one recurrent step (``torch_recurrent_gated_delta_rule``);
* short conv ("conv", LFM2): an input projection to 3 x hidden (two gates and the signal), a depthwise conv
  of ``conv_L_cache`` taps, the output projection.

A causal depthwise conv is counted over the outputs transformers' torch path computes (:func:`conv_outputs`),
not only the ones it keeps. With flash-linear-attention or causal-conv1d installed transformers runs their kernels
instead, which do other work (and which torch's counter does not see): the closed form states the torch path
(:func:`kernel_note`, written into ``flops.convention``).

MLPs: a 3-matrix gated MLP (Gemma 4's KV-sharing layers: twice as wide where ``use_double_wide_mlp``), or a
mixture of experts counted on the ACTIVE experts only (the router, the ``num_experts_per_tok`` routed experts
and the shared experts, with their gate where there is one, per token), as the model runs it; a MoE model's
dense layers (``sparse_layer``) have the 3-matrix MLP.

Per-layer inputs (Gemma 4's PLE): the prompt's embeddings projected once to layers x
``hidden_size_per_layer_input``; per layer a gate to that width and a projection back.

Which mixer and MLP a text model has is a per-model fact, kept in the adapters layer
(``vtwcli.adapters.model_types.TEXT_MODELS``, keyed by the text config's ``model_type``).
"""

from __future__ import annotations

import importlib.util

from vtwcli.adapters.model_types import TEXT_MODELS, TextModel, text_model_of

# TEXT_MODELS, TextModel, text_model_of: re-exported from the adapters layer, where the facts live
__all__ = ["DELTA_RULE_CHUNK", "TEXT_MODELS", "TextModel", "conv_outputs", "decoder_layer_flops", "decode_flops",
           "delta_rule_flops", "kernel_note", "mlp_intermediate_size", "mm_flops", "prefill_flops", "sparse_layer",
           "text_model_of"]


def mm_flops(m: int, k: int, n: int) -> int:
    """FLOPs of an (m x k) @ (k x n) matmul: 2 x multiply-accumulates."""
    return 2 * m * k * n


def _layer(text, index: int | None):
    """Decoder layer ``index``'s own view of the config (``per_layer_config`` overrides), else the config."""
    layers = getattr(text, "per_layer_config", None)
    return text if layers is None or index is None else layers[index]


def _shares_kv(text, index: int | None) -> bool:
    modes = getattr(text, "kv_sharing_modes", None) if text_model_of(text).kv_sharing else None
    return bool(modes) and index is not None and modes[index] == "reuse"


def _attention(text, queries: int, keys: int, gated_query: bool, layer_type: str = "", index: int | None = None) -> int:
    layer = _layer(text, index)
    heads = layer.num_attention_heads
    head_dim = getattr(layer, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(layer, "num_key_value_heads", None) or heads
    hidden = text.hidden_size
    q_width = heads * head_dim * (2 if gated_query else 1)
    kv_projections = 2
    if _shares_kv(text, index):
        kv_projections = 0
    elif getattr(text, "attention_k_eq_v", False) and layer_type != "sliding_attention":
        kv_projections = 1
    projections = mm_flops(queries, hidden, q_width) + mm_flops(queries, heads * head_dim, hidden) \
        + kv_projections * mm_flops(queries, hidden, kv_heads * head_dim)
    return projections + 2 * heads * mm_flops(queries, head_dim, keys)


# transformers' torch_chunk_gated_delta_rule splits the sequence into chunks of this many tokens (its default; the
# Gated DeltaNet layer passes no other)
DELTA_RULE_CHUNK = 64


def conv_outputs(tokens: int, taps: int, step: bool) -> int:
    """Outputs transformers' causal depthwise conv (``causal_conv1d_fn`` / ``causal_conv1d_update``) computes per
    channel. Prefill into a fresh cache: the input padded on the left to at least ``taps``, then convolved with
    ``taps - 1`` zeros on both sides (the first ``tokens`` outputs are kept). A decode step: the cached ``taps``
    inputs + the new one, unpadded: 2 outputs (the last kept)."""
    return 2 if step else max(tokens, taps) + taps - 1


def delta_rule_flops(text, tokens: int, step: bool) -> int:
    """The delta rule of one Gated DeltaNet layer, as transformers' torch kernels multiply (q and k repeated to the
    value heads, so everything per value head).

    Prefill (``torch_chunk_gated_delta_rule``): per 64-token chunk of the padded prompt, k_beta k^T (the UT system)
    and q k^T (intra-chunk attention), two unit-triangular solves of that system (for v_beta and the decayed
    k_beta; charged as the product by the inverse), then the scan: the carried state read by the decayed keys and
    by the queries, the intra-chunk attention times the new values, and the state update k^T v_new. A decode step
    (``torch_recurrent_gated_delta_rule``): read S^T k, write k x delta, output S^T q, three (d_k x d_v) products
    (transformers writes them as elementwise multiply + sum, which torch's counter counts 0)."""
    heads, key_dim, value_dim = text.linear_num_value_heads, text.linear_key_head_dim, text.linear_value_head_dim
    if step:
        return heads * 3 * mm_flops(1, key_dim, value_dim)
    chunk = DELTA_RULE_CHUNK
    per_chunk = (2 * mm_flops(chunk, key_dim, chunk) + mm_flops(chunk, chunk, value_dim)
                 + mm_flops(chunk, chunk, key_dim) + 2 * mm_flops(chunk, key_dim, value_dim)
                 + mm_flops(chunk, chunk, value_dim) + mm_flops(key_dim, chunk, value_dim))
    return heads * -(-tokens // chunk) * per_chunk


def _gated_deltanet(text, queries: int, step: bool) -> int:
    hidden = text.hidden_size
    key_width = text.linear_num_key_heads * text.linear_key_head_dim
    value_heads, value_dim = text.linear_num_value_heads, text.linear_value_head_dim
    value_width = value_heads * value_dim
    conv_channels = 2 * key_width + value_width
    projections = mm_flops(queries, hidden, conv_channels) + mm_flops(queries, hidden, value_width) \
        + 2 * mm_flops(queries, hidden, value_heads) + mm_flops(queries, value_width, hidden)
    taps = text.linear_conv_kernel_dim
    conv = mm_flops(conv_outputs(queries, taps, step), conv_channels, taps)  # depthwise: taps per channel
    return projections + conv + delta_rule_flops(text, queries, step)


def _short_conv(text, queries: int, step: bool) -> int:
    hidden, taps = text.hidden_size, text.conv_L_cache
    return mm_flops(queries, hidden, 3 * hidden) + mm_flops(conv_outputs(queries, taps, step), hidden, taps) \
        + mm_flops(queries, hidden, hidden)


def kernel_note(text, layer_types) -> str | None:
    """What the counted and closed-form FLOPs of a text model's conv / recurrent layers assume (None: it has none):
    transformers' torch path, or that another kernel package replaces it."""
    kinds = set(layer_types)
    if not kinds & {"linear_attention", "conv"}:
        return None
    note = "causal depthwise convs over the outputs transformers' torch path computes (prefill: max(n, taps) + " \
        "taps - 1, decode step: 2)"
    if "linear_attention" in kinds:
        note += ("; Gated DeltaNet as transformers' torch kernels run it: prefill chunked in 64-token chunks "
                 "(padded to a multiple of 64; the two unit-triangular solves per chunk charged as the product by the "
                 "inverse), a decode step one recurrent step, whose 3 d_k x d_v products per value head transformers "
                 "writes as elementwise multiply + sum: the closed form has them (6 x d_k x d_v x value heads per "
                 "layer), the counted figure does not")
    replaced = [name for name, module in (("flash-linear-attention", "fla"), ("causal-conv1d", "causal_conv1d"))
                if importlib.util.find_spec(module) is not None]
    if replaced:
        note += (f"; {' and '.join(replaced)} installed: transformers runs those kernels instead (other work, which "
                 "torch's counter does not see inside), so the counted figure does not measure them there")
    return note


def mlp_intermediate_size(text) -> int:
    """The dense MLP's width; LFM2 derives it from ``intermediate_size`` when ``block_auto_adjust_ff_dim``."""
    size = text.intermediate_size
    if text_model_of(text) is not None and text_model_of(text).mlp == "lfm2" and text.block_auto_adjust_ff_dim:
        size = int(2 * size / 3)
        if text.block_ffn_dim_multiplier is not None:
            size = int(text.block_ffn_dim_multiplier * size)
            size = text.block_multiple_of * ((size + text.block_multiple_of - 1) // text.block_multiple_of)
    return size


def sparse_layer(text, index: int) -> bool:
    """Whether decoder layer ``index`` of a MoE text model has the experts (else a dense MLP of
    ``intermediate_size``): GLM-4.5V's first ``first_k_dense_replace`` layers and Qwen3-VL-MoE's
    ``mlp_only_layers`` are dense, and with ``decoder_sparse_step`` s only every s-th layer is sparse."""
    return index >= (getattr(text, "first_k_dense_replace", None) or 0) and \
        index not in (getattr(text, "mlp_only_layers", None) or ()) and \
        (index + 1) % (getattr(text, "decoder_sparse_step", None) or 1) == 0


def _mlp(text, queries: int, spec: TextModel, index: int) -> int:
    hidden = text.hidden_size
    if spec.mlp == "moe" and sparse_layer(text, index):
        router = mm_flops(queries, hidden, getattr(text, spec.experts_key))
        routed = text.num_experts_per_tok * 3 * mm_flops(queries, hidden, text.moe_intermediate_size)
        shared = 0
        if spec.shared_experts == "gated":
            shared = 3 * mm_flops(queries, hidden, text.shared_expert_intermediate_size) + mm_flops(queries, hidden, 1)
        elif spec.shared_experts == "per_expert":
            shared = text.n_shared_experts * 3 * mm_flops(queries, hidden, text.moe_intermediate_size)
        return router + routed + shared
    wide = 2 if getattr(text, "use_double_wide_mlp", False) and _shares_kv(text, index) else 1
    return 3 * mm_flops(queries, hidden, wide * mlp_intermediate_size(text))


def decoder_layer_flops(text, layer_type: str, queries: int, keys: int, index: int, *, step: bool = False) -> int:
    """Decoder layer ``index`` (of type ``layer_type``) on ``queries`` new tokens attending over ``keys`` keys
    (ignored by conv / recurrent layers, whose cost does not depend on the context); ``step``: a decode step
    against a filled cache (conv / recurrent layers then run their one-step kernels), else a prefill into an
    empty one."""
    spec = text_model_of(text)
    if spec is None:
        raise KeyError(text.model_type)
    if layer_type == "linear_attention":
        mixer = _gated_deltanet(text, queries, step)
    elif layer_type == "conv":
        mixer = _short_conv(text, queries, step)
    else:
        mixer = _attention(text, queries, keys, spec.gated_query, layer_type, index)
    per_layer = 0
    if spec.per_layer_inputs and text.hidden_size_per_layer_input:
        per_layer = 2 * mm_flops(queries, text.hidden_size, text.hidden_size_per_layer_input)
    return mixer + _mlp(text, queries, spec, index) + per_layer


def _once(text, tokens: int) -> int:
    """Work done once per call before the layers: the PLE projection of every token's embedding."""
    spec = text_model_of(text)
    if not (spec.per_layer_inputs and text.hidden_size_per_layer_input):
        return 0
    return mm_flops(tokens, text.hidden_size, text.num_hidden_layers * text.hidden_size_per_layer_input)


def prefill_flops(text, types: list[str], tokens_of_layer) -> int:
    """The language model's prefill: layer i on ``tokens_of_layer(i)`` tokens attending over as many (a KV-sharing
    layer: the last query only, over its producer's keys), the per-call work on the prompt's tokens."""
    return _once(text, tokens_of_layer(0)) + sum(
        decoder_layer_flops(text, kind, 1 if _shares_kv(text, i) else tokens_of_layer(i), tokens_of_layer(i), i)
        for i, kind in enumerate(types))


def decode_flops(text, types: list[str], keys_of_layer) -> int:
    """One decode step of the language model: one token through layer i against ``keys_of_layer(i)`` keys."""
    return _once(text, 1) + sum(decoder_layer_flops(text, kind, 1, keys_of_layer(i), i, step=True)
                                for i, kind in enumerate(types))
