"""The forward and generate() calls every measurement makes the same way (FLOPs, latency, memory)."""

from __future__ import annotations

import torch
from torch import nn


def cache_of(output):
    """The KV cache a forward returned (transformers 5.x names it ``cache``; older outputs ``past_key_values``)."""
    return output.cache if hasattr(output, "cache") else output.past_key_values


def generate_exactly(model: nn.Module, inputs: dict, new_tokens: int):
    """Greedy ``generate()`` of exactly ``new_tokens`` tokens from batch-1 ``inputs`` (all-ones mask if none)."""
    mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
    return model.generate(**{**inputs, "attention_mask": mask}, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False)
