"""Visual Tokens Withdrawal on an unmodified transformers model, through hooks.

At decoder layer K every vision token is withdrawn: layers 0..K-1 see the whole sequence, layers
K..L-1 see only the other tokens, each at its ORIGINAL position (RoPE positions are not renumbered).

How it works, without touching the model's code:

* a forward pre-hook on the top-level model reads which tokens of this call are vision tokens
  (``input_ids`` in the adapter's vision token ids) and the 2-D padding mask;
* a pre-hook on layer K gathers the kept tokens of each row (rows may keep different numbers of
  tokens: several images, padding, so kept tokens are left-aligned into a slightly narrower batch with
  masked slots), slices ``position_ids`` at the kept original positions, and builds the attention mask
  of the short sequence with transformers' own builders, one per attention layer type among layers >= K
  (``create_causal_mask``, ``create_sliding_window_causal_mask``, ...), each against the cache of the
  first layer >= K of that type (which holds only kept tokens); layers that keep a conv / recurrent state
  instead of a KV cache (the adapter's ``state_layer_types``) get the 2-D validity of the call's slots,
  which zeroes filler before it reaches the state (filler precedes each row's kept tokens, where the
  state is still zero, so the state is that of the kept subsequence);
* pre-hooks on layers K..L-1 swap in the mask of their layer type and those positions, and slice the
  rotary ``position_embeddings`` each layer receives at the kept slots (families with per-layer-type RoPE,
  e.g. Gemma 3, hand different tables to different layers; 3-D M-RoPE tables (B, S, head_dim) slice the same).
* per-position tensors a layer takes positionally (Gemma 4's per-layer inputs) are sliced at the kept slots
  too; layers that reuse another layer's keys/values (KV sharing) are exact only where that layer is >= K
  too, so the other K are refused (``exact_layers``);
* families with DeepStack (vision features added inside the decoder: Qwen3-VL, Granite4-Vision) get a
  pre-hook on the module that receives the injections, which keeps only those into layers <= K (the
  later ones would touch only withdrawn tokens); families with bidirectional prompt blocks (PaliGemma's
  prefix-LM) keep the blocks of the kept tokens in the kept-sequence masks.

Nothing here branches on the architecture: where the layers are, which ids are vision tokens, the layer
types and the seq dims of position tensors come from the family's adapter (vtwcli/adapters/);
the kept sequence's tensors (slots, gathered positions, masks) are built in vtwcli/kept_sequence.py.

The KV cache of layers >= K therefore only ever stores kept tokens. Across ``generate()`` steps the
2-D validity of those cache entries is remembered per cache object; kept entries are counted at the first
attention layer >= K. Positions of decode steps come from the cache length transformers reads (its first
attention layer, < K unless conv / recurrent layers come first: then explicit positions are required, and
generate() passes them) or the mask cumsum, i.e. they stay the original positions, as VTW requires.

This module does no I/O.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from vtwcli.adapters import Adapter, adapter_for
from vtwcli.errors import UnsupportedError
from vtwcli.kept_sequence import (MASK_BUILDERS, kept_slots, kept_vision_tokens, repeat_batch, take_positions,
                                  withdrawn_masks)

__all__ = ["withdraw", "WithdrawalHandle", "num_decoder_layers", "kept_slots", "take_positions", "repeat_batch",
           "withdrawn_masks", "MASK_BUILDERS", "exact_layers", "inexact_reason", "check_exact", "format_layers",
           "refuse_kept_blocks", "deepstack_keeps_vision"]


def deepstack_keeps_vision(adapter: Adapter, last_target: int, kinds) -> UnsupportedError:
    """The refusal of a withdrawal below a DeepStack injection (into layers up to ``last_target``) that keeps some
    vision tokens (``kinds``): the injections past K would reach kept tokens, which withdrawal cannot reproduce."""
    return UnsupportedError(
        f"{adapter.family} adds DeepStack vision features to every vision token up to decoder layer "
        f"{last_target}, and this call keeps some (--withdraw {','.join(kinds or ())}); withdraw every "
        f"vision kind of the prompt or use a layer >= {last_target}"
    )


def num_decoder_layers(model: nn.Module) -> int:
    return len(adapter_for(model).decoder_layers(model))


def inexact_reason(adapter: Adapter, text_config, num_layers: int, layer: int) -> str | None:
    """Why withdrawal at ``layer`` cannot be exact on this model, or None. KV sharing: a layer >= K that attends
    with the keys/values of a layer < K would still see the vision tokens, which layers >= K must not."""
    if layer >= num_layers:
        return None
    readers = {consumer: producer for consumer, producer in adapter.shared_kv_layers(text_config, num_layers).items()
               if consumer >= layer and producer < layer}
    if not readers:
        return None
    consumer = min(readers)
    source = f"layer {readers[consumer]}" if readers[consumer] >= 0 else "another model"
    return f"layer {consumer} reuses the keys/values of {source}, computed with the vision tokens (KV sharing)"


def exact_layers(adapter: Adapter, text_config, num_layers: int) -> list[int]:
    """Every K in 1..L at which withdrawal is exact on this model (all of them without KV sharing)."""
    return [k for k in range(1, num_layers + 1) if inexact_reason(adapter, text_config, num_layers, k) is None]


def check_exact(adapter: Adapter, text_config, num_layers: int, layer: int) -> None:
    """Refuse a K at which withdrawal cannot be exact (:func:`inexact_reason`), naming the K that are."""
    reason = inexact_reason(adapter, text_config, num_layers, layer)
    if reason is not None:
        exact = format_layers(exact_layers(adapter, text_config, num_layers))
        raise UnsupportedError(f"withdrawal at layer {layer} cannot be exact on this model: {reason}; use a layer "
                               f"in {exact} ({num_layers} = no withdrawal)")


def refuse_kept_blocks(adapter: Adapter, config, kinds: tuple[str, ...] | None, input_ids: torch.Tensor) -> None:
    """Refuse a ``kinds`` selection that keeps vision tokens attending bidirectionally inside their blocks (the
    adapter's ``block_bidirectional_kinds``): the masks of layers >= K are causal, so they would not be exact."""
    kept = [kind for kind in adapter.block_bidirectional_kinds if kinds is not None and kind not in kinds]
    ids = adapter.vision_token_ids(config, tuple(kept)) if kept else []
    if ids and bool(torch.isin(input_ids, torch.tensor(ids, device=input_ids.device)).any()):
        every = ",".join(k for k in ("image", "video") if k in set(kinds) | set(kept))
        raise UnsupportedError(f"withdrawing only {','.join(kinds)} on {adapter.family} is not supported: the kept "
                               f"{' and '.join(kept)} tokens attend bidirectionally inside their blocks, which layers "
                               f">= K would not rebuild; withdraw {every} (the default)")


def format_layers(layers: list[int]) -> str:
    """[1, 2, 3, 6] -> "1..3, 6": contiguous runs as ranges."""
    runs: list[list[int]] = []
    for k in layers:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return ", ".join(f"{run[0]}..{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


@dataclass
class _CallState:
    """What the top-level pre-hook learned about the current forward call."""

    vision_mask: torch.Tensor  # (B, q) bool, True = vision token of this call's new tokens
    padding_mask: torch.Tensor | None  # (B, past + q) bool, True = real token; None = no padding
    has_pixels: bool  # this call inserts vision features (a prefill, or a chunk carrying an image)
    # Vision tokens of the family this call keeps (a --withdraw kind left out): DeepStack would inject into them.
    keeps_vision_tokens: bool = False
    # (B, q) bidirectional block ids of this call's tokens (adapter.prompt_blocks), or None.
    blocks: torch.Tensor | None = None


_NO_PADDING = object()  # generate() prepared this call from no padding mask at all (every token real)


@dataclass
class _WithdrawnInputs:
    """The inputs every layer >= K receives in place of the full-length ones (built once per call)."""

    kept_index: torch.Tensor | None  # (B, q') original in-call index of each kept slot; None = all kept, in order
    attention_masks: dict  # layer type -> mask of the short sequence (None where the layer builds its own)
    position_ids: torch.Tensor | None
    length: int = 0  # tokens of this call before withdrawal (per-position inputs of that length are sliced)

    def on(self, device: torch.device) -> "_WithdrawnInputs":
        # Layers may sit on different devices (device_map): move lazily, never assume one device.
        def move(value):
            if isinstance(value, torch.Tensor):
                return value.to(device)
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            return value

        return _WithdrawnInputs(*(move(v) for v in (self.kept_index, self.attention_masks, self.position_ids)),
                                length=self.length)



def check_layer(layer, num_layers: int, *, option: str | None = None) -> None:
    """The one check that ``layer`` is a withdrawal layer K in 1..``num_layers`` (K = L withdraws nothing).

    ``option`` names the command-line option that gave it (``--layer``): the message then quotes it.
    """
    valid = not isinstance(layer, bool) and isinstance(layer, int)
    if option is not None and (not valid or not 1 <= layer <= num_layers):
        raise UnsupportedError(f"{option} {layer}: out of range for this model with {num_layers} decoder layers; "
                               f"use 1..{num_layers} ({num_layers} = no withdrawal)")
    if not valid:
        raise UnsupportedError(f"withdrawal layer must be an integer in 1..{num_layers}, got {layer!r}")
    if layer == 0:
        raise UnsupportedError(
            "withdrawal at layer 0 is not supported: it equals dropping the image, and transformers reads the "
            f"sequence length from layer 0's cache; use a layer in 1..{num_layers}"
        )
    if not 1 <= layer <= num_layers:
        raise UnsupportedError(
            f"withdrawal layer {layer} is out of range for this model with {num_layers} decoder layers; "
            f"use 1..{num_layers} ({num_layers} = no withdrawal)"
        )


class WithdrawalHandle:
    """Hooks that withdraw vision tokens at ``layer``. Use as a context manager or call ``remove()``."""

    def __init__(self, model: nn.Module, layer: int, *, vision_mask: torch.Tensor | None = None,
                 kinds: tuple[str, ...] | None = None, allow_training: bool = False):
        self.model = model
        self.adapter: Adapter = adapter_for(model)
        self.layers = self.adapter.decoder_layers(model)
        self.num_layers = len(self.layers)
        check_layer(layer, self.num_layers)
        if self.adapter.upstream_defect is not None:
            defect = self.adapter.upstream_defect(type(model).__name__)
            if defect:
                raise UnsupportedError(defect)
        self.layer = layer
        self.text_config = self.adapter.text_config(model.config)
        self.layer_types = self.adapter.layer_types(self.text_config, self.num_layers)
        check_exact(self.adapter, self.text_config, self.num_layers, layer)
        state_types = self.adapter.state_layer_types
        # Kept entries seen so far are counted by the cache of the first attention layer >= K (a conv /
        # recurrent cache layer holds a fixed-size state, no sequence); None where layers >= K have no attention.
        self._counting_layer = next((i for i in range(layer, self.num_layers) if self.layer_types[i] not in state_types),
                                    None)
        self._has_state_layers = any(kind in state_types for kind in self.layer_types[layer:])
        # transformers counts the tokens a cache has seen at the model's first attention layer; with conv /
        # recurrent layers first, that layer may be >= K, where the cache holds only kept tokens.
        first_attention = next((i for i, kind in enumerate(self.layer_types) if kind not in state_types), None)
        self._model_counts_kept = first_attention if first_attention is not None and first_attention >= layer else None
        self._layer_index = {id(layer): i for i, layer in enumerate(self.layers)}
        self.vision_token_ids = self.adapter.vision_token_ids(model.config, kinds)
        self.kinds = kinds
        if not self.vision_token_ids and vision_mask is None:
            raise UnsupportedError(
                f"{type(model).__name__} config has no vision token id ({', '.join(self.adapter.vision_token_id_keys)}); "
                "set it in the config or pass vision_mask="
            )
        self.explicit_vision_mask = vision_mask
        self.allow_training = allow_training
        self.kept_index: torch.Tensor | None = None  # last call's kept original indices, for callers mapping logits
        self._call: _CallState | None = None
        self._withdrawn: _WithdrawnInputs | None = None
        self._device_copies: dict[torch.device, _WithdrawnInputs] = {}
        self._sliced_positions: dict = {}  # id(incoming position tensor) -> (tensor, its kept-slot slice)
        self._pending_padding_mask: torch.Tensor | object | None = None
        # Validity (B, entries) of the kept entries in layers >= K of each live cache object.
        self._cache_validity: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._hooks: list = []
        self._had_own_prepare = "prepare_inputs_for_generation" in vars(model)
        self._active = False
        self._attach()

    # -- lifecycle -------------------------------------------------------------------------------
    def _attach(self) -> None:
        self._active = True
        if self.layer == self.num_layers:
            return  # K = L is "no withdrawal": attach nothing, so outputs stay bit-identical.
        self._hooks.append(self.model.register_forward_pre_hook(self._read_call, with_kwargs=True))
        self._hooks.append(self.layers[self.layer].register_forward_pre_hook(self._enter_withdrawn, with_kwargs=True))
        for later in self.layers[self.layer + 1:]:
            self._hooks.append(later.register_forward_pre_hook(self._continue_withdrawn, with_kwargs=True))
        for hook_module in (self.model,):
            self._hooks.append(hook_module.register_forward_hook(self._end_call))
        if self.adapter.deepstack is not None:
            self._hooks.append(self.adapter.deepstack.module(self.model).register_forward_pre_hook(
                self._drop_late_injections, with_kwargs=True))
        if hasattr(self.model, "prepare_inputs_for_generation"):
            original = self.model.prepare_inputs_for_generation

            # generate() turns the 2-D mask 4-D for static caches before forward; keep the 2-D one.
            @functools.wraps(original)
            def prepare_inputs_for_generation(*args, **kwargs):
                mask = kwargs.get("attention_mask")
                if mask is None:  # generate() drops an all-ones mask: no padding
                    self._pending_padding_mask = _NO_PADDING
                else:
                    self._pending_padding_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
                return original(*args, **kwargs)

            self.model.prepare_inputs_for_generation = prepare_inputs_for_generation

    def remove(self) -> None:
        """Detach every hook; the model is exactly the unmodified model again."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if "prepare_inputs_for_generation" in vars(self.model) and not self._had_own_prepare:
            del self.model.prepare_inputs_for_generation
        self._call = self._withdrawn = None
        self._device_copies.clear()
        self._active = False

    def __enter__(self) -> "WithdrawalHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self._active else "removed"
        return f"WithdrawalHandle(layer={self.layer}, num_layers={self.num_layers}, {state})"

    # -- hooks -----------------------------------------------------------------------------------
    def _read_call(self, module, args, kwargs):
        if kwargs.get("labels") is not None:
            raise UnsupportedError(
                "withdrawal does not support training losses (labels=); it supports inference: forward without "
                "labels and generate()"
            )
        if module.training and torch.is_grad_enabled() and not self.allow_training:
            raise UnsupportedError(
                "withdrawal does not support training (model is in train mode); call model.eval() for inference"
            )
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        keeps_vision_tokens = False
        if input_ids is not None:
            ids = torch.tensor(self.vision_token_ids, device=input_ids.device)
            vision = torch.isin(input_ids, ids)
            keeps_vision_tokens = kept_vision_tokens(self.adapter, self.model.config, input_ids, vision)
        else:
            embeds = kwargs.get("inputs_embeds")
            if embeds is None or self.explicit_vision_mask is None:
                raise UnsupportedError(
                    "withdrawal needs input_ids to find the vision tokens; with inputs_embeds pass "
                    "withdraw(model, layer=K, vision_mask=<bool tensor (batch, seq)>)"
                )
            vision = self.explicit_vision_mask.to(embeds.device).bool()
            batch = embeds.shape[0]
            if vision.dim() == 2 and vision.shape[1] == embeds.shape[1] and batch % vision.shape[0] == 0:
                # generate() repeats each row num_beams / num_return_sequences times (repeat_interleave)
                vision = vision.repeat_interleave(batch // vision.shape[0], dim=0)
            if vision.shape != embeds.shape[:2]:
                raise UnsupportedError(
                    f"vision_mask has shape {tuple(vision.shape)} but inputs_embeds has (batch, seq) = "
                    f"{tuple(embeds.shape[:2])}; pass a mask of the same shape"
                )
        mask = kwargs.get("attention_mask")
        if not (isinstance(mask, torch.Tensor) and mask.dim() == 2):
            if mask is not None and self._pending_padding_mask is None:
                raise UnsupportedError(
                    "withdrawal needs the 2-D padding attention_mask (batch, seq); a prepared 4-D mask is not supported"
                )
            mask = None if self._pending_padding_mask is _NO_PADDING else self._pending_padding_mask
        self._pending_padding_mask = None
        self._check_positions_are_given(kwargs, mask)
        has_pixels = any(kwargs.get(key) is not None for key in self.adapter.pixel_input_keys)
        if has_pixels and input_ids is not None:
            refuse_kept_blocks(self.adapter, self.model.config, self.kinds, input_ids)
        blocks = self.adapter.prompt_blocks(kwargs) if self.adapter.prompt_blocks is not None else None
        self._call = _CallState(vision_mask=vision, padding_mask=None if mask is None else mask.bool(),
                                has_pixels=has_pixels, keeps_vision_tokens=keeps_vision_tokens, blocks=blocks)
        self._withdrawn = None
        self._device_copies.clear()
        self._sliced_positions.clear()
        return None

    def _check_positions_are_given(self, kwargs, padding_mask) -> None:
        """Refuse a continuation whose positions the model would count from a cache layer >= K.

        transformers counts the tokens a cache has seen from its first attention layer. Where conv / recurrent
        layers come first, that layer may be >= K and hold only kept tokens: a continuation without
        ``position_ids`` (or, where the model derives positions from the mask, without a mask) would be numbered
        from the kept count instead of the original positions. generate() always passes them.
        """
        if self._model_counts_kept is None or kwargs.get("position_ids") is not None:
            return
        if not self.adapter.positions_from_mask and padding_mask is not None:
            return
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None or not cache.get_seq_length(self._model_counts_kept):
            return
        needs = "position_ids=" if self.adapter.positions_from_mask else "attention_mask= (or position_ids=)"
        raise UnsupportedError(
            f"this continuation of a cached call needs {needs}: the model counts seen tokens from layer "
            f"{self._model_counts_kept}, whose cache holds only the kept tokens after withdrawal at layer "
            f"{self.layer}; pass the original positions (generate() does)"
        )

    def _end_call(self, module, args, output):
        self._call = None
        self._withdrawn = None
        self._device_copies.clear()
        self._sliced_positions.clear()
        return None

    def _drop_late_injections(self, module, args, kwargs):
        """Hand the DeepStack module only the injections into layers <= K (see adapters.DeepStack)."""
        spec = self.adapter.deepstack
        features = kwargs.get(spec.argument)
        if features is None:
            return None
        targets = spec.target_layers(features)
        keep = [target <= self.layer for target in targets]
        if all(keep):
            return None
        if self._call is not None and self._call.keeps_vision_tokens:
            raise deepstack_keeps_vision(self.adapter, max(targets), self.kinds)
        return args, dict(kwargs, **{spec.argument: spec.select(features, keep)})

    def _enter_withdrawn(self, module, args, kwargs):
        call = self._call
        if call is None:
            raise UnsupportedError(
                "withdrawal hooks ran without a top-level forward; call the model passed to withdraw() itself"
            )
        hidden = args[0] if args else kwargs["hidden_states"]
        batch, length = hidden.shape[:2]
        device = hidden.device
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past_kept = self._past_kept(cache)
        vision = call.vision_mask.to(device)
        if vision.shape != (batch, length):
            raise UnsupportedError(
                f"vision mask covers {tuple(vision.shape)} tokens but the language model got {(batch, length)}; "
                "this architecture or call is not supported by withdrawal"
            )
        if past_kept and not call.has_pixels:
            # A continuation (decode step) inserts no vision features: a generated token that happens to
            # carry a vision token id is plain text here.
            vision = torch.zeros_like(vision)
        if past_kept and vision.any():
            raise UnsupportedError(
                "chunked prefill (vision tokens arriving after the cache already holds tokens) is not supported "
                "with withdrawal; prefill the whole prompt in one forward"
            )

        # Padding is dropped along with the vision tokens: layers >= K never need it.
        keep = ~vision
        if call.padding_mask is not None:
            keep &= call.padding_mask[:, -length:].to(device)
        # Decode steps keep every token: no gathers then, only the mask of the shorter cache.
        everything_kept = bool(keep.all())
        if everything_kept:
            index = torch.arange(length, device=device).expand(batch, length)
            validity = torch.ones(batch, length, dtype=torch.bool, device=device)
        else:
            index, validity = kept_slots(keep)
        if index.shape[1] == 0:
            raise UnsupportedError(
                "every token of this call is a vision or padding token, so nothing is left after withdrawal; "
                "add text to the prompt"
            )
        if past_kept and self._has_state_layers and not bool(validity.all()):
            raise UnsupportedError(
                "padding inside a continuation of a cached call is not supported with withdrawal on a model with "
                "conv / recurrent layers after the withdrawal layer (filler would reach their state); continue "
                "without padding in the new tokens or prefill the whole sequence in one forward"
            )
        if past_kept:
            history = self._cache_validity.get(cache)
            if history is None or history.shape != (batch, past_kept):
                raise UnsupportedError(
                    "this cache was not filled under the same withdrawal (its layers >= K hold "
                    f"{past_kept} entries vision tokens were never removed from); start generation anew"
                )
            validity = torch.cat([history.to(device), validity], dim=1)
        if cache is not None:
            self._cache_validity[cache] = validity

        kept_hidden = hidden
        position_ids = kwargs.get("position_ids")
        if not everything_kept:
            kept_hidden = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            if position_ids is not None:
                position_ids = take_positions(position_ids, index, seq_dim=self.adapter.position_ids_seq_dim)
        blocks = None
        if call.blocks is not None and not past_kept:  # the model, too, applies them to the prompt's forward only
            blocks = call.blocks.to(device)[:, -length:].gather(1, index).masked_fill(~validity, -1)
        if blocks is None and self._model_mask_suffices(kwargs, cache, everything_kept, past_kept, length, validity):
            masks = {"full_attention": None}
        else:
            masks = withdrawn_masks(self.adapter, self.text_config, self.layer, self.layer_types, kept_hidden,
                                    validity, cache, blocks=blocks)
        self._withdrawn = _WithdrawnInputs(None if everything_kept else index, masks, position_ids, length)
        self._device_copies = {device: self._withdrawn}
        self.kept_index = index
        return self._swap_inputs(module, args, kwargs, kept_hidden, self._withdrawn)

    def _past_kept(self, cache) -> int:
        """How many kept entries layers >= K have seen in ``cache`` before this call."""
        if cache is None:
            return 0
        if self._counting_layer is not None:
            return int(cache.get_seq_length(self._counting_layer))
        # Only conv / recurrent layers from K on: they count nothing, so the hooks' own record of this cache
        # does, once the state was written (a reset cache starts anew).
        if not cache.has_previous_state(self.layer):
            return 0
        history = self._cache_validity.get(cache)
        if history is None:
            raise UnsupportedError(
                "this cache was not filled under the same withdrawal (its conv / recurrent state after layer "
                f"{self.layer} includes vision tokens); start generation anew"
            )
        return history.shape[1]

    def _model_mask_suffices(self, kwargs, cache, everything_kept: bool, past_kept: int, length: int,
                             validity: torch.Tensor) -> bool:
        """True where layers >= K need no mask at all, so none is built (the hooks' cost per decode step).

        Only when the model itself passed layer K no mask (no padding, an attention kernel that masks
        causally by itself), the cache grows with its entries (a static cache's empty slots need a mask
        even where the full layers' cache happens to be full), every layer >= K is full attention,
        nothing is filler, and either the call keeps every token of an empty cache (the kept sequence IS
        the model's sequence) or it is one new token (one query attends to every kept entry).
        """
        if kwargs.get("attention_mask", 0) is not None or not everything_kept or self.adapter.build_withdrawn_masks:
            return False
        if cache is not None:
            layers = getattr(cache, "layers", None)
            if layers is None or any(getattr(layer, "is_compileable", True) for layer in layers[self.layer:]):
                return False  # static (preallocated) cache layers, or a cache type this check does not know
        if any(kind != "full_attention" for kind in self.layer_types[self.layer:]):
            return False
        return (past_kept == 0 or length == 1) and bool(validity.all())

    def _continue_withdrawn(self, module, args, kwargs):
        if self._withdrawn is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        inputs = self._device_copies.get(hidden.device)
        if inputs is None:
            inputs = self._device_copies[hidden.device] = self._withdrawn.on(hidden.device)
        return self._swap_inputs(module, args, kwargs, hidden, inputs)

    def _slice_positions(self, value, index: torch.Tensor):
        """This layer's rotary embeddings at the kept slots. Each layer slices what it receives (families
        with per-layer-type RoPE hand different tables to different layers); shared tables are sliced once."""
        if isinstance(value, torch.Tensor):
            seen = self._sliced_positions.get(id(value))
            if seen is None or seen[0] is not value:
                kept = take_positions(value, index.to(value.device), seq_dim=self.adapter.position_embeddings_seq_dim)
                seen = self._sliced_positions[id(value)] = (value, kept)
            return seen[1]
        if isinstance(value, (tuple, list)):
            return type(value)(self._slice_positions(v, index) for v in value)
        return value

    def _swap_inputs(self, module, args, kwargs, hidden, inputs: _WithdrawnInputs):
        kwargs = dict(kwargs)
        kind = self.layer_types[self._layer_index[id(module)]]
        index, mask, position_ids = inputs.kept_index, inputs.attention_masks[kind], inputs.position_ids
        width = index.shape[1] if index is not None else inputs.length
        queries = hidden.shape[1]
        if queries < width:
            # The model itself dropped leading queries (Gemma 4 keeps only the `logits_to_keep` last positions
            # before its KV-shared layers): its per-position inputs are the call's last `queries` positions.
            index, mask, position_ids = self._tail(index, mask, position_ids, queries, inputs.length)
        kwargs["attention_mask"] = mask
        if kwargs.get("position_embeddings") is not None and index is not None:
            kwargs["position_embeddings"] = self._slice_positions(kwargs["position_embeddings"], index)
        if "position_ids" in kwargs:
            kwargs["position_ids"] = position_ids
        if args:
            args = list(args)
            args[0] = hidden
            if index is not None:
                for i in self.adapter.per_position_layer_args:
                    if i < len(args) and isinstance(args[i], torch.Tensor) and args[i].shape[1] == inputs.length:
                        args[i] = take_positions(args[i], index, seq_dim=1)
            args = tuple(args)
        else:
            kwargs["hidden_states"] = hidden
        return args, kwargs

    @staticmethod
    def _tail(index, mask, position_ids, queries: int, length: int):
        """The last ``queries`` kept slots, where they are the call's last ``queries`` positions (then the
        model's own tail-sliced per-position inputs are already the kept ones: no index is returned)."""
        if index is not None:
            expected = torch.arange(length - queries, length, device=index.device)
            if not bool((index[:, -queries:] == expected).all()):
                raise UnsupportedError(
                    f"the model kept only its last {queries} queries, which are not the last kept tokens (a vision "
                    "token is among the last prompt tokens); end the prompt with text"
                )
        if isinstance(mask, torch.Tensor):
            mask = mask[..., -queries:, :]
        if isinstance(position_ids, torch.Tensor):
            position_ids = position_ids[..., -queries:]
        return None, mask, position_ids


def withdraw(model: nn.Module, layer: int, *, vision_mask: torch.Tensor | None = None,
             kinds: tuple[str, ...] | None = None, allow_training: bool = False) -> WithdrawalHandle:
    """Withdraw the vision tokens of ``model`` from decoder layer ``layer`` (0-based) on.

    ``layer`` is K in 1..L: layers 0..K-1 see every token, layers K..L-1 only the non-vision tokens at
    their original positions; K = L changes nothing. Works as a context manager or returns a handle
    whose ``remove()`` restores the model. Outputs of a withdrawn forward cover the kept tokens only
    (``handle.kept_index`` maps them to the original positions); the last position is the last token.

    ``vision_mask`` (bool, batch x seq) marks vision tokens for calls made with ``inputs_embeds``.
    ``kinds`` restricts which vision tokens are withdrawn (e.g. ``("image",)``) where a family has several.
    """
    return WithdrawalHandle(model, layer, vision_mask=vision_mask, kinds=kinds, allow_training=allow_training)
