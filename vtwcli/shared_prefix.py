"""The shared-prefix KL search of the calibration: one full forward per batch, then every candidate K on the
kept tokens only, layer-major (see :mod:`vtwcli.calibration` for why it is exact and cheap). No I/O."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from vtwcli.adapters import adapter_for
from vtwcli.errors import VtwError
from vtwcli.kept_sequence import kept_slots, kept_vision_tokens, repeat_batch, take_positions, withdrawn_masks
from vtwcli.withdrawal import exact_layers, format_layers, inexact_reason, refuse_kept_blocks

__all__ = ["BatchKL", "attention_layers", "kl_divergence", "prefix_is_shared", "shared_prefix_kl"]


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) over the last dim, in float32 whatever the model dtype."""
    log_p = torch.log_softmax(p_logits.float(), dim=-1)
    log_q = torch.log_softmax(q_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)


def _directed_kl(withdrawn: torch.Tensor, full: torch.Tensor, direction: str) -> torch.Tensor:
    if direction == "withdrawn_to_full":
        return kl_divergence(withdrawn, full)
    return kl_divergence(full, withdrawn)


@dataclass
class BatchKL:
    kl: torch.Tensor  # (B, len(layers)) mean KL over each row's scored positions
    token_layers_full: int  # work done, in (token x decoder layer) units
    token_layers_candidates: int
    # (attention layers, B, 3): system / vision / text share (--diagnose); one entry per layer with attention
    # weights, i.e. every layer but conv / recurrent ones (see attention_layers)
    attention_share: torch.Tensor | None = None


@torch.no_grad()
def shared_prefix_kl(model, inputs: dict, layers: list[int], *, score_mask: torch.Tensor | None = None,
                     direction: str = "withdrawn_to_full", diagnose: bool = False,
                     kinds: tuple[str, ...] | None = None) -> BatchKL:
    """KL between the full model and the model withdrawn at each K in ``layers``, for one batch.

    ``score_mask`` (B, S) marks the positions whose next-token distributions are compared (default:
    the last position). Scored positions must be text tokens after the first vision token. ``kinds``
    restricts the withdrawn tokens as in :func:`vtwcli.withdraw` (default: every vision token).
    """
    adapter = adapter_for(model)
    decoder_layers = adapter.decoder_layers(model)
    num_layers = len(decoder_layers)
    text_config = adapter.text_config(model.config)
    layer_types = adapter.layer_types(text_config, num_layers)
    input_ids = inputs["input_ids"]
    batch, length = input_ids.shape
    valid = inputs.get("attention_mask", torch.ones_like(input_ids)).bool()
    vision = torch.isin(input_ids, torch.tensor(adapter.vision_token_ids(model.config, kinds), device=input_ids.device))
    refuse_kept_blocks(adapter, model.config, kinds, input_ids)
    if not vision.any(dim=1).all():
        if kinds is not None:
            raise VtwError(f"a calibration prompt has no {' or '.join(kinds)} tokens to withdraw (--withdraw "
                           f"{','.join(kinds)}); use data with that input or another --withdraw")
        raise VtwError("a calibration prompt has no vision tokens (the image placeholder was lost); "
                       "check the processor's chat template and the dataset's images")
    if kept_vision_tokens(adapter, model.config, input_ids, vision | ~valid):
        # the candidates re-run layers >= K without the DeepStack injections, which would reach kept tokens
        raise VtwError(f"--withdraw {','.join(kinds or ())}: {adapter.family} adds DeepStack vision features to "
                       "every vision token of the prompt, so all must be withdrawn; use --withdraw "
                       f"{','.join(adapter.declared_kinds(model.config))} or data without the other kind")
    if score_mask is None:
        score_mask = torch.zeros_like(valid)
        score_mask[:, -1] = True
    if "position_ids" not in inputs and adapter.positions_from_mask:
        # positions as generate() numbers them: padding does not shift a row
        inputs = dict(inputs, position_ids=(valid.long().cumsum(-1) - 1).clamp_min(0))
    candidates = [k for k in layers if k < num_layers]  # K = L withdraws nothing: P_L is P_full, KL 0
    for k in candidates:
        reason = inexact_reason(adapter, text_config, num_layers, k)
        if reason is not None:
            raise VtwError(f"withdrawal at layer {k} cannot be exact on this model: {reason}; candidates must be in "
                           f"{format_layers(exact_layers(adapter, text_config, num_layers))}")
    first = min(candidates, default=num_layers)
    first_vision = int(vision.int().argmax(dim=1).min())  # text before this column never saw a vision token
    # Bidirectional prompt blocks (PaliGemma's prefix-LM) let text before the image see it: nothing is shared.
    blocks = adapter.prompt_blocks(inputs) if adapter.prompt_blocks is not None else None
    prefix = first_vision if prefix_is_shared(layer_types, first) and blocks is None else 0
    if (score_mask & (vision | ~valid)).any() or score_mask[:, :first_vision].any():
        raise VtwError("scored positions must be text tokens after the image; put the image before the question")

    wanted = set(layers)
    layer_inputs: dict[int, torch.Tensor] = {}
    layer_kwargs: dict[int, dict] = {}
    layer_args: dict[int, tuple] = {}  # positional arguments after the hidden states (per-layer inputs)

    def record(index):
        def hook(module, args, kwargs):
            if index in wanted:
                hidden = args[0] if args else kwargs["hidden_states"]
                layer_inputs[index] = hidden[:, prefix:]
            if index >= first:
                layer_kwargs[index] = kwargs
                layer_args[index] = tuple(args[1:])
        return hook

    rows, cols = score_mask.nonzero(as_tuple=True)
    logits_to_keep = length - int(cols.min())  # the output head only where distributions are compared
    hooks = [layer.register_forward_pre_hook(record(i), with_kwargs=True) for i, layer in enumerate(decoder_layers)]
    try:
        cache = DynamicCache(config=text_config)
        # The positions as a tensor, not a count: a model may drop the other queries from its own layers given
        # an integer (Gemma 4 before its KV-shared layers), and every layer's inputs must stay full length here.
        output = model(**inputs, cache=cache, use_cache=True, output_attentions=diagnose,
                       logits_to_keep=torch.arange(length - logits_to_keep, length, device=input_ids.device))
    finally:
        for hook in hooks:
            hook.remove()
    full_scored = output.logits[rows, cols - (length - logits_to_keep)]

    # Kept tokens from the prefix column on; scored positions are among them.
    keep = (~vision & valid)[:, prefix:]
    index, slot_valid = kept_slots(keep)
    slot_of = torch.full_like(keep, -1, dtype=torch.long).scatter_(
        1, index, torch.arange(index.shape[1], device=index.device).expand_as(index))
    slots = slot_of[rows, cols - prefix]
    pe_dim = adapter.position_embeddings_seq_dim
    sliced: dict[int, tuple] = {}  # id(rotary table) -> (table, kept-slot slice); layers of one type share tables

    def kept_positions(table: torch.Tensor) -> torch.Tensor:
        seen = sliced.get(id(table))
        if seen is None or seen[0] is not table:
            part = table.narrow(pe_dim % table.dim(), prefix, table.shape[pe_dim] - prefix) \
                if table.shape[pe_dim] == length else table
            seen = sliced[id(table)] = (table, take_positions(part, index, seq_dim=pe_dim))
        return seen[1]

    validity = torch.cat([valid[:, :prefix], slot_valid], dim=1)
    kept_blocks = None if blocks is None else blocks[:, prefix:].gather(1, index).masked_fill(~slot_valid, -1)
    cache_key = "cache" if "cache" in layer_kwargs.get(first, {}) else "past_key_values"
    norm = adapter.final_norm(model)
    head = model.get_output_embeddings()

    # Layer-major: at layer j every candidate K <= j is in flight, stacked along the batch dim, so the
    # whole search costs L - min(K) layer calls instead of one forward per K.
    kls = torch.zeros(batch, len(layers))
    hidden = None
    in_flight = 0
    prefix_cache = DynamicCache(config=text_config)
    shared_kv = adapter.shared_kv_layers(text_config, num_layers)
    masks_of: dict[int, torch.Tensor] = {}
    for j in range(first, num_layers):
        if j in wanted:  # candidate K = j joins with the full model's state entering layer j
            joining = layer_inputs[j].gather(1, index.unsqueeze(-1).expand(-1, -1, layer_inputs[j].shape[-1]))
            hidden = joining if hidden is None else torch.cat([hidden, joining])
            in_flight += 1
        # The prefix's keys/values (text before the first vision token) are the same for every K. (A layer that
        # reuses another layer's keys/values has no cache of its own; a conv / recurrent layer has a state
        # instead, which starts from zero here: its families share no prefix.)
        if getattr(cache.layers[j], "keys", None) is not None:
            prefix_cache.update(cache.layers[j].keys[:, :, :prefix].repeat(in_flight, 1, 1, 1),
                                cache.layers[j].values[:, :, :prefix].repeat(in_flight, 1, 1, 1), j)
        if j in shared_kv:  # attends with its producer's keys/values: the producer's mask (no candidate joined since)
            mask = masks_of[shared_kv[j]]
        else:
            masks = withdrawn_masks(adapter, text_config, j, layer_types, hidden, validity.repeat(in_flight, 1),
                                    prefix_cache, last_layer=j,
                                    blocks=None if kept_blocks is None else kept_blocks.repeat(in_flight, 1))
            mask = masks_of[j] = masks[layer_types[j]]
        own = layer_kwargs[j]
        position_embeddings = own.get("position_embeddings")
        if position_embeddings is not None:
            position_embeddings = tuple(repeat_batch(kept_positions(t), in_flight, (pe_dim % t.dim()) - 1)
                                        for t in position_embeddings)
        position_ids = own.get("position_ids")
        if position_ids is not None:
            position_ids = repeat_batch(take_positions(position_ids[..., prefix:], index,
                                                       seq_dim=adapter.position_ids_seq_dim), in_flight, -2)
        kwargs = dict(own, attention_mask=mask, position_embeddings=position_embeddings, position_ids=position_ids,
                      **{cache_key: prefix_cache})
        kwargs.pop("hidden_states", None)
        kwargs.pop("output_attentions", None)
        args = list(layer_args[j])
        for i in adapter.per_position_layer_args:  # per-layer inputs (B, S, ...): the kept slots, like the hidden states
            if i - 1 < len(args) and isinstance(args[i - 1], torch.Tensor):
                kept = take_positions(args[i - 1][:, prefix:], index, seq_dim=1)
                args[i - 1] = repeat_batch(kept, in_flight, 0)
        hidden = decoder_layers[j](hidden, *args, **kwargs)

    counts = torch.zeros(batch).index_add_(0, rows.cpu(), torch.ones(len(rows)))
    if hidden is not None:
        flight_rows = torch.cat([rows + c * batch for c in range(in_flight)])
        logits = head(norm(hidden[flight_rows, slots.repeat(in_flight)]))
        per_position = _directed_kl(logits, full_scored.repeat(in_flight, 1), direction).cpu()
        for c, k in enumerate(candidates):
            chunk = per_position[c * len(rows):(c + 1) * len(rows)]
            kls[:, layers.index(k)] = torch.zeros(batch).index_add_(0, rows.cpu(), chunk) / counts
    candidate_work = sum(num_layers - k for k in candidates) * int(slot_valid.sum())

    share = None
    if diagnose:
        share = _attention_share(output.attentions, vision, valid, prefix)
    return BatchKL(kl=kls, token_layers_full=num_layers * int(valid.sum()),
                   token_layers_candidates=candidate_work, attention_share=share)


def attention_layers(model) -> list[int]:
    """Indices of the decoder layers with attention weights (not conv / recurrent layers): what
    ``output_attentions`` returns one entry for, in order."""
    adapter = adapter_for(model)
    types = adapter.layer_types(adapter.text_config(model.config), len(adapter.decoder_layers(model)))
    return [i for i, kind in enumerate(types) if kind not in adapter.state_layer_types]


def prefix_is_shared(layer_types: list[str], first: int) -> bool:
    """Whether the candidates K >= ``first`` share the text before the first vision token (its keys/values
    copied from the full forward) or recompute it per K.

    Sharing puts other rows' filler slots between a row's prefix and its kept tokens. A full-attention layer
    masks them; a windowed layer would count them inside its window, and a conv / recurrent layer would carry
    them in its state (the full forward keeps only the state after the whole prompt, not after the prefix).
    Those families recompute the prefix per K: exact, and the extra work is counted in the cost.
    """
    return all(kind == "full_attention" for kind in layer_types[first:])


def _attention_share(attentions, vision: torch.Tensor, valid: torch.Tensor, prefix: int) -> torch.Tensor:
    """Share of the last token's attention (mean over heads) on system (text before the first vision
    token), vision and the other text tokens, per layer."""
    if not attentions or attentions[0] is None:
        raise VtwError("--diagnose needs attention weights: run with --attn eager")
    columns = torch.arange(vision.shape[1], device=vision.device)
    first_vision = vision.int().argmax(dim=1, keepdim=True)
    system = (columns < first_vision) & valid & ~vision
    text = (columns >= first_vision) & valid & ~vision
    shares = []
    for weights in attentions:
        last = weights[:, :, -1, :].float().mean(dim=1)  # (B, S)
        shares.append(torch.stack([(last * group.to(last.dtype)).sum(-1)
                                   for group in (system, vision & valid, text)], dim=-1))
    return torch.stack(shares).cpu()
