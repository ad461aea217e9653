"""The kept sequence of a withdrawn call, as tensors: which slots each row keeps (`kept_slots`), per-position
tensors gathered at those slots (`take_positions`, `repeat_batch`), and the attention masks of the short
sequence per layer type (`withdrawn_masks`, transformers' own builders). Used by the withdrawal hooks
(:mod:`vtwcli.withdrawal`) and the calibration's shared-prefix search. No I/O.
"""

from __future__ import annotations

import torch
from transformers.masking_utils import (create_causal_mask, create_chunked_causal_mask,
                                       create_recurrent_attention_mask, create_sliding_window_causal_mask)

from vtwcli.adapters import Adapter
from vtwcli.errors import UnsupportedError

__all__ = ["MASK_BUILDERS", "kept_slots", "kept_vision_tokens", "repeat_batch", "take_positions", "withdrawn_masks"]


# transformers' mask builder for each attention layer type (the `layer_types` vocabulary of text configs).
MASK_BUILDERS = {
    "full_attention": create_causal_mask,
    "sliding_attention": create_sliding_window_causal_mask,
    "chunked_attention": create_chunked_causal_mask,
}


def withdrawn_masks(adapter: Adapter, text_config, first_layer: int, layer_types: list[str], hidden: torch.Tensor,
                    validity: torch.Tensor, cache, last_layer: int | None = None,
                    blocks: torch.Tensor | None = None) -> dict:
    """The attention mask of the kept sequence for every layer type among layers >= ``first_layer``.

    Each type's mask is built against the first layer >= ``first_layer`` of that type (its cache decides
    the key/value length: a sliding-window cache layer holds fewer entries); ``last_layer`` (default the
    last) bounds the layers covered. ``validity`` (B, entries)
    marks the real entries among past kept entries + this call's kept slots. Built with transformers'
    own builders and ``position_ids=None`` on purpose: gapped original positions would read as packed
    sequences (block-diagonal mask). A sliding window therefore counts kept entries, not original positions.
    ``blocks`` (B, entries): bidirectional block ids of the kept entries (adapter.prompt_blocks), or None.
    """
    last_layer = len(layer_types) - 1 if last_layer is None else last_layer
    if adapter.build_withdrawn_masks is not None:
        return adapter.build_withdrawn_masks(text_config=text_config, first_layer=first_layer, last_layer=last_layer,
                                             layer_types=layer_types, hidden=hidden, validity=validity, cache=cache)
    masks = {}
    for index in range(first_layer, last_layer + 1):
        kind = layer_types[index]
        if kind in masks:
            continue
        if kind in adapter.state_layer_types:
            # Conv / recurrent layers: the 2-D validity of this call's slots (None when every slot is real or
            # the call is one token), which zeroes filler slots before they reach the state.
            masks[kind] = create_recurrent_attention_mask(config=text_config, inputs_embeds=hidden,
                                                          attention_mask=validity)
            continue
        builder = MASK_BUILDERS.get(kind)
        if builder is None:
            raise UnsupportedError(f"decoder layer type {kind!r} (layer {index}) is not supported by withdrawal; "
                                   f"supported: {', '.join((*MASK_BUILDERS, *adapter.state_layer_types))}")
        extra = {} if blocks is None else {"block_sequence_ids": blocks}
        masks[kind] = builder(config=text_config, inputs_embeds=hidden, attention_mask=validity, cache=cache,
                              position_ids=None, layer_idx=index, **extra)
    return masks


def kept_vision_tokens(adapter: Adapter, config, input_ids: torch.Tensor, withdrawn: torch.Tensor) -> bool:
    """True where a family with DeepStack keeps some of its vision tokens (a --withdraw kind left out):
    the injections into layers > K would reach those kept tokens, so they cannot be dropped."""
    if adapter.deepstack is None:
        return False
    every = torch.isin(input_ids, torch.tensor(adapter.vision_token_ids(config), device=input_ids.device))
    return bool((every & ~withdrawn).any())


def take_positions(tensor: torch.Tensor, index: torch.Tensor, seq_dim: int) -> torch.Tensor:
    """Gather ``index`` (B, q') along ``seq_dim`` of a per-position tensor whose batch dim may be 1."""
    seq_dim = seq_dim % tensor.dim()
    batch_dim = seq_dim - 1
    shape = list(tensor.shape)
    shape[batch_dim] = index.shape[0]
    tensor = tensor.expand(*shape)
    view = [1] * tensor.dim()
    view[batch_dim], view[seq_dim] = index.shape
    expand = list(tensor.shape)
    expand[seq_dim] = index.shape[1]
    return tensor.gather(seq_dim, index.view(view).expand(expand).to(tensor.device))


def repeat_batch(tensor: torch.Tensor, times: int, batch_dim: int) -> torch.Tensor:
    """Tile a per-row tensor ``times`` times along its batch dim (a batch dim of 1 is expanded first)."""
    if times == 1:
        return tensor
    repeats = [1] * tensor.dim()
    repeats[batch_dim] = times
    return tensor.repeat(*repeats)


def kept_slots(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-aligned gather index of the kept tokens of each row, and which slots are real.

    A stable sort of the keep flags puts withdrawn positions first and kept positions last, each in
    their original order; the last ``max kept`` columns are every row's kept tokens, right-aligned like
    left padding (so the last slot is the last token), with withdrawn positions as masked filler.
    """
    flags, order = torch.sort(keep.to(torch.int8), dim=1, stable=True)
    width = int(keep.sum(dim=1).max().item()) if keep.numel() else 0
    return order[:, keep.shape[1] - width:], flags[:, keep.shape[1] - width:].bool()
