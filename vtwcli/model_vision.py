"""Where the model itself puts vision features into its language model, read off the model, not the adapter.

`vtw verify` checks the adapter's vision token ids against this, and its references hide exactly these
positions. Two facts per position of a prompt:

* **inserted** — the language model's ``inputs_embeds`` there is not the embedding of the token id there: the
  model put something from the vision side at that position.
* **content** — the input of the first decoder layer there changes when the pixels change (the same prompt run
  again with other pixel values; nothing mixes positions before the first layer): the position carries what
  the model saw in *this* image.

The vision tokens are the token ids found at content positions, and every position holding one of them.
Why not simply "inserted": some models embed kept, text-side marker tokens from a vision-side table. Ovis2
looks its visual indicator tokens (image start, grid, column, row, end), which keep their own ids and are kept
by withdrawal like any delimiter, up in ``visual_embeddings_table`` (rows fixed by the indicator's index, the
same for every image). Their inputs are inserted but carry no per-image content, so they are text-side tokens
here as they are to withdrawal. The rule needs no per-family fact (only which inputs carry pixels, the
adapter's ``pixel_input_keys``), so it holds for a model verify has never seen (``--generic``); a list of kept
vision-side ids in the Ovis2 entry would have been a fact the check trusts instead of one it checks. It is
per token id, not per position, because a vision token id can also hold constant features:
LLaVA-NeXT's learned ``image_newline`` sits on ``<image>`` slots between rows of image features (those slots
are withdrawn with the rest), and a few features of a tile may not move with a given pixel change.
A row where nothing at the first layer changes with the pixels (features that enter only deeper, through
DeepStack injections, as Granite 4 Vision's do into zeroed placeholders; or all-zero features) has no content
positions to read: there the vision tokens are the ids at its inserted positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vtwcli.errors import VtwError

__all__ = ["ModelVision", "inserted_vision", "language_model_of", "model_vision", "vision_problem"]

OTHER_PIXELS_SEED = 0


def language_model_of(model: nn.Module, layers: nn.ModuleList) -> nn.Module:
    """The module that owns the decoder layers (what the multimodal model calls with ``inputs_embeds``)."""
    for module in model.modules():
        if any(child is layers for child in module.children()):
            return module
    raise VtwError(f"{type(model).__name__}: the decoder layers are not a child of any module; the adapter's "
                   "decoder_layers is wrong")


@dataclass
class ModelVision:
    input_ids: torch.Tensor  # (B, S)
    inserted: torch.Tensor   # (B, S) bool: the language model's input is not the token's own embedding
    content: torch.Tensor    # (B, S) bool: the first layer's input changes with the pixels

    @property
    def deep(self) -> torch.Tensor:
        """(B,) bool: rows with inserted inputs but no content at the first layer (features enter deeper)."""
        return ~self.content.any(1) & self.inserted.any(1)

    @property
    def features(self) -> torch.Tensor:
        """(B, S) bool: the positions that locate the vision token ids: content, or inserted in :attr:`deep` rows."""
        return torch.where(self.deep[:, None], self.inserted, self.content)

    @property
    def ids(self) -> list[int]:
        """The token ids at :attr:`features`: the vision token ids of these prompts, as the model defines them."""
        return sorted({int(i) for i in self.input_ids[self.features].tolist()})


class _Stop(Exception):
    """Raised by a pre-hook on the language model: its input is recorded, the rest of the forward is not needed."""


@torch.no_grad()
def _first_inputs(model: nn.Module, language_model: nn.Module, first_layer: nn.Module,
                  batch: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The ``inputs_embeds`` the language model receives for ``batch`` and the hidden states entering its first
    decoder layer (the forward stops there)."""
    seen: dict = {}

    def language_model_hook(module, args, kwargs):
        seen["embeds"] = kwargs.get("inputs_embeds")

    def layer_hook(module, args, kwargs):
        seen["hidden"] = args[0] if args else kwargs.get("hidden_states")
        raise _Stop

    handles = [language_model.register_forward_pre_hook(language_model_hook, with_kwargs=True),
               first_layer.register_forward_pre_hook(layer_hook, with_kwargs=True)]
    try:
        model(**batch, use_cache=False)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return seen.get("embeds"), seen.get("hidden")


def inserted_vision(model: nn.Module, input_ids: torch.Tensor, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
    """(B, S) bool: positions whose language-model input is not the embedding of their token id."""
    if inputs_embeds is None:
        raise VtwError(f"{type(model).__name__}: the language model received no inputs_embeds, so the positions of "
                       "the vision features cannot be read off the model; this layout cannot be verified")
    embedding = model.get_input_embeddings()
    ids = input_ids.to(embedding.weight.device)
    in_range = ids < embedding.num_embeddings
    text = embedding(ids.clamp(max=embedding.num_embeddings - 1))
    differs = (inputs_embeds.to(text.device) != text).any(-1) | ~in_range
    return differs.to(input_ids.device)


def _other_pixels(batch: dict, pixel_keys: tuple[str, ...]) -> dict:
    """``batch`` with seeded noise added to every nonzero pixel value (zeros stay: some models tell padding
    tiles by their all-zero pixels, and the feature count must not change)."""
    generator = torch.Generator().manual_seed(OTHER_PIXELS_SEED)
    changed = {}
    for key in pixel_keys:
        value = batch.get(key)
        if key == "inputs_embeds" or not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        scale = max(1.0, float(value.detach().abs().max())) if value.numel() else 1.0
        noise = torch.randn(value.shape, generator=generator).to(value.device) * scale
        changed[key] = torch.where(value != 0, (value.float() + noise).to(value.dtype), value)
    if not changed:
        raise VtwError(f"the prompts carry no pixel input (none of {list(pixel_keys)} in the processor's output), so "
                       "which positions hold per-image vision features cannot be read off the model")
    return {**batch, **changed}


def model_vision(model: nn.Module, layers: nn.ModuleList, batch: dict, pixel_keys: tuple[str, ...]) -> ModelVision:
    """Inserted and content positions of ``batch``: the model run up to its first decoder layer twice, with the
    batch's pixels and with other pixel values."""
    ids = batch["input_ids"]
    language_model = language_model_of(model, layers)
    embeds, hidden = _first_inputs(model, language_model, layers[0], batch)
    inserted = inserted_vision(model, ids, embeds)
    _, other = _first_inputs(model, language_model, layers[0], _other_pixels(batch, pixel_keys))
    if hidden is None or other is None or other.shape != hidden.shape:
        raise VtwError(f"{type(model).__name__}: with other pixel values the first decoder layer received inputs of "
                       "another shape; the per-image vision features cannot be located")
    content = (hidden != other.to(hidden.device)).any(-1).to(ids.device)
    return ModelVision(ids, inserted, content)


def vision_problem(where: str, vision_ids: list[int], ids: torch.Tensor, marked: torch.Tensor,
                   inserted: torch.Tensor, features: torch.Tensor) -> str | None:
    """Why the adapter's vision tokens of one row (``marked``, over ``ids``) are not the model's, or None.

    Every marked position must hold a vision-side input; the token ids at the row's ``features``
    (:attr:`ModelVision.features`) must all be marked; every marked id must be found there (else it is a kept,
    text-side marker)."""
    if (marked & ~inserted).any():
        return (f"{where}: the adapter's vision token ids {vision_ids} mark {int(marked.sum())} tokens, "
                f"{int((marked & ~inserted).sum())} of them where the model put its own token embedding, no vision "
                f"features ({int(inserted.sum())} positions hold vision-side inputs)")
    feature_ids = {int(i) for i in ids[features].tolist()}
    missing = sorted(feature_ids - set(vision_ids))
    if missing:
        at = int(torch.isin(ids, torch.tensor(missing, dtype=ids.dtype, device=ids.device)).sum())
        return (f"{where}: the model put per-image vision features at token id(s) {missing} ({at} positions), which "
                f"the adapter's vision token ids {vision_ids} leave out (they mark {int(marked.sum())} tokens)")
    constant = sorted({int(i) for i in ids[marked].tolist()} - feature_ids)
    if constant:
        return (f"{where}: the adapter's vision token ids mark id(s) {constant}, whose inputs come from the vision "
                "side but are the same for any pixels: kept markers (like Ovis2's visual indicators), not vision "
                "features")
    if not marked.any():
        return f"{where}: the prompt holds no vision tokens at all"
    return None
