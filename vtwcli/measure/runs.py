"""What every measurement does the same way: the baseline and withdrawn variants of a model, and the
forward and generate() calls (FLOPs, latency, memory; the calibration's accuracy uses the variants too)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from vtwcli.profile.model import VARIANTS



@contextlib.contextmanager
def withdrawn_at(model: nn.Module, layer: int | None, kinds: tuple[str, ...] | None = None):
    """For its duration: ``withdraw(model, layer, kinds=kinds)`` (hooks removed on exit, even on error),
    or the unmodified model when ``layer`` is None."""
    if layer is None:
        yield None
        return
    from vtwcli.withdrawal import withdraw

    with withdraw(model, layer=layer, kinds=kinds) as handle:
        yield handle


def variant(model: nn.Module, name: str, layer: int, kinds: tuple[str, ...] | None = None):
    """The context of one variant: ``baseline`` (nothing attached) or ``withdrawn`` (at ``layer``, ``kinds``)."""
    return withdrawn_at(model, layer if name == "withdrawn" else None, kinds)


def variants(model: nn.Module, layer: int, kinds: tuple[str, ...] | None = None) -> Iterator[tuple[str, object]]:
    """``("baseline", context)``, then ``("withdrawn", context)``: enter each context to run that variant."""
    for name in VARIANTS:
        yield name, variant(model, name, layer, kinds)


def new_cache(model: nn.Module):
    """The KV cache ``generate()`` hands the model for a prefill (a dynamic cache of its text config). Passed
    explicitly, it also serves text models that make none themselves (Granite4-Vision's)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config.get_text_config(decoder=True))


def generate_exactly(model: nn.Module, inputs: dict, new_tokens: int):
    """Greedy ``generate()`` of exactly ``new_tokens`` tokens from batch-1 ``inputs`` (all-ones mask if none)."""
    mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
    return model.generate(**{**inputs, "attention_mask": mask}, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False)
