"""Memory with and without withdrawal: exact KV-cache bytes, peak RSS per variant, CUDA peaks.

* ``kv_cache_bytes``: the sum of ``nbytes`` of every key and value tensor in the cache right after the
  prefill (batch 1). Exact, not estimated; withdrawal shrinks layers >= K to the kept tokens.
* ``state_bytes`` (only where the model has conv / recurrent layers: Qwen3.5's Gated DeltaNet, LFM2's
  short conv): the exact bytes of their fixed-size conv and recurrent states after the prefill. Their size
  does not depend on the sequence, so withdrawal saves nothing there; it saves only in the KV cache of the
  attention layers >= K.
* ``peak_rss_bytes``: the process's resident-set high-water mark while one variant runs a prefill and
  a ``generate()`` of ``new_tokens``. On Linux the kernel's mark (``VmHWM``) is reset before each
  variant (``/proc/self/clear_refs`` <- 5), so each figure is that variant's own peak; it still counts
  everything resident in the process (weights, libraries), so it is a process peak, not an increment.
  Where the mark cannot be reset (macOS, Windows, restricted /proc) the figure is the monotone
  ``ru_maxrss``-style process peak so far, which cannot go down between variants: then
  :func:`peak_rss_per_variant` is False and the two figures are not comparable (the CLI says so).
* ``cuda_peak_allocated_bytes`` / ``cuda_peak_reserved_bytes``: ``torch.cuda.max_memory_*`` after
  ``reset_peak_memory_stats`` per variant (null off CUDA).
"""

from __future__ import annotations

import dataclasses
import gc
import resource
import sys

import torch
from torch import nn

from vtwcli.measure.runs import generate_exactly, new_cache, variants
from vtwcli.profile.model import MemoryRun

__all__ = ["kv_cache_bytes", "state_bytes", "reset_peak_rss", "peak_rss_bytes", "peak_rss_per_variant",
           "MemoryTracker", "measure_memory"]


def kv_cache_bytes(cache) -> int:
    """Exact bytes of the key and value tensors held by a transformers cache."""
    total = 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            for name in ("keys", "values"):
                tensor = getattr(layer, name, None)
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
        return total
    for name in ("key_cache", "value_cache"):  # older cache layout
        for tensor in getattr(cache, name, []) or []:
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def state_bytes(cache) -> int:
    """Exact bytes of the conv and recurrent states a transformers cache holds for its conv / recurrent
    layers (0 for a cache of attention layers only)."""
    total = 0
    for layer in getattr(cache, "layers", None) or []:
        for name in ("conv_states", "recurrent_states"):
            for tensor in (getattr(layer, name, None) or {}).values():
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
    return total


def reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_per_variant() -> bool:
    """Whether each variant's RSS peak is its own (the high-water mark can be reset here)."""
    return reset_peak_rss()


def peak_rss_bytes() -> int:
    """The process's RSS high-water mark in bytes (VmHWM on Linux, else ru_maxrss)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class MemoryTracker:
    """The memory of one variant (a tracker per quantity, as in optimum-benchmark): :meth:`track` runs a
    prefill and a generate() of ``new_tokens`` and returns the profile's :class:`MemoryRun`."""

    def __init__(self, model: nn.Module, inputs: dict, new_tokens: int, device: torch.device):
        self.model, self.inputs, self.new_tokens, self.device = model, inputs, new_tokens, device

    @torch.no_grad()
    def track(self) -> MemoryRun:
        model, device = self.model, self.device
        gc.collect()
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        reset_peak_rss()
        cache = new_cache(model)
        out = model(**self.inputs, cache=cache, use_cache=True, logits_to_keep=1)
        kv, state = kv_cache_bytes(cache), state_bytes(cache)
        del out, cache
        generate_exactly(model, self.inputs, self.new_tokens)
        if cuda:
            torch.cuda.synchronize(device)
        return MemoryRun(
            peak_rss_bytes=peak_rss_bytes(), kv_cache_bytes=int(kv),
            cuda_peak_allocated_bytes=int(torch.cuda.max_memory_allocated(device)) if cuda else None,
            cuda_peak_reserved_bytes=int(torch.cuda.max_memory_reserved(device)) if cuda else None,
            state_bytes=int(state) if state else None)


def measure_memory(model: nn.Module, inputs: dict, layer: int, *, new_tokens: int = 8,
                   kinds: tuple[str, ...] | None = None) -> dict:
    """The profile's ``memory`` block: baseline and withdrawn figures and ``kv_cache_reduction``.

    ``kinds`` selects the withdrawn vision tokens as in :func:`vtwcli.withdraw` (default: all)."""
    device = next(model.parameters()).device
    section: dict = {}
    for variant, withdrawn in variants(model, layer, kinds):
        with withdrawn:
            figures = dataclasses.asdict(MemoryTracker(model, inputs, new_tokens, device).track())
            if figures["state_bytes"] is None:  # only models with conv / recurrent layers record their states
                del figures["state_bytes"]
            section[variant] = figures
    base, withdrawn = section["baseline"]["kv_cache_bytes"], section["withdrawn"]["kv_cache_bytes"]
    section["kv_cache_reduction"] = 1 - withdrawn / base if base else 0.0
    return section
