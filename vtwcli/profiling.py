"""`vtw profile` orchestration: FLOPs, latency and memory with and without withdrawal, as profile sections.

* :func:`run_profile` measures a loaded model (weights on a real device): counted FLOPs through the real
  withdrawal hooks (+ the analytic count, + fvcore if asked), latency (alternating runs), memory.
* :func:`run_flops_only` needs nothing but a config: the model is built on the meta device, so the
  FLOPs of any size (7B, 13B, 72B) are counted on a laptop in seconds.

Both return ``{"withdrawal": ..., "flops": ..., ["latency": ..., "memory": ...]}`` shaped as
docs/profile-keys.md says, plus :func:`flops_only_model_section` / :func:`vtwcli.loading.model_section`
for the profile's ``model`` block. No file I/O here (the CLI writes the YAML).
"""

from __future__ import annotations

import torch

from vtwcli.errors import UnsupportedError, VtwError
from vtwcli.loading import LoadedModel, config_sha256
from vtwcli.measure.flops import (COUNTER, COUNTER_META, PromptLayout, analytic_flops, count_flops,
                                  count_flops_meta, flops_section, fvcore_flops, meta_model)
from vtwcli.defaults import DEFAULT_TEXT_TOKENS
from vtwcli.measure.latency import measure_latency
from vtwcli.measure.memory import measure_memory
from vtwcli.withdrawal import num_decoder_layers

__all__ = ["DEFAULT_TEXT_TOKENS", "run_profile", "run_flops_only", "flops_only_model_section", "check_layer",
           "prompt_inputs"]


def check_layer(layer: int, num_layers: int) -> None:
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= num_layers:
        raise VtwError(f"--layer {layer}: out of range for this model with {num_layers} decoder layers; use "
                       f"1..{num_layers} ({num_layers} = no withdrawal)")


def _analytic_or_none(config, layout: PromptLayout, layer: int) -> dict | None:
    try:
        return analytic_flops(config, layout, layer)
    except UnsupportedError:
        return None  # an architecture the closed form does not know: the counted figures stand alone


def flops_only_model_section(name_or_path: str, model, *, attn: str, dtype: str | None = None) -> dict:
    """The profile's ``model`` block for a config-only (meta device) model."""
    from vtwcli.loading import architecture_of

    config = model.config
    if dtype is None:
        dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    return {
        "name_or_path": name_or_path,
        "architecture": architecture_of(config),
        "num_layers": num_decoder_layers(model),
        "dtype": dtype.removeprefix("torch."),
        "device": "meta",
        "attn_implementation": attn,
        "config_sha256": config_sha256(config),
    }


def run_flops_only(config, *, layer: int, text_tokens: int = DEFAULT_TEXT_TOKENS, image_tokens: int | None = None,
                   attn: str = "sdpa", model=None) -> dict:
    """``withdrawal`` and ``flops`` sections from a config alone (meta device, no weights, no processor)."""
    model = meta_model(config, attn=attn) if model is None else model
    check_layer(layer, num_decoder_layers(model))
    layout = PromptLayout.for_config(model.config, text_tokens=text_tokens, image_tokens=image_tokens)
    counted = count_flops_meta(model, layout, layer)
    analytic = _analytic_or_none(model.config, layout, layer)
    return {"withdrawal": {"layer": layer},
            "flops": flops_section(counted, layout, analytic=analytic, counter=COUNTER_META)}


def prompt_inputs(loaded: LoadedModel, layout: PromptLayout, *, seed: int = 0) -> dict:
    """A deterministic synthetic prompt: random ordinary text tokens around the image tokens, and a
    seeded random image through the model's own image processor (or random pixels of the right shape)."""
    import numpy as np

    config = loaded.model.config
    processor = loaded.processor
    tokenizer = getattr(processor, "tokenizer", None)
    vocab_limit = len(tokenizer) if tokenizer is not None else None
    exclude = tuple(getattr(tokenizer, "all_special_ids", ()) or ())
    input_ids = layout.input_ids(config, seed=seed, vocab_limit=vocab_limit, exclude=exclude)
    image_processor = getattr(processor, "image_processor", None)
    pixels = None
    if image_processor is not None:
        rng = np.random.default_rng(seed)
        size = config.vision_config.image_size
        images = [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(layout.images)]
        try:
            pixels = image_processor(images=images, return_tensors="pt")["pixel_values"]
        except Exception:  # noqa: BLE001 - any processor quirk: fall back to random pixels of the right shape
            pixels = None
        expected = (layout.images, getattr(config.vision_config, "num_channels", 3), size, size)
        if pixels is not None and tuple(pixels.shape) != expected:
            pixels = None
    if pixels is None:
        pixels = layout.pixel_values(config, seed=seed)
    return {"input_ids": input_ids.to(loaded.device),
            "pixel_values": pixels.to(device=loaded.device, dtype=loaded.dtype)}


def run_profile(loaded: LoadedModel, *, layer: int, text_tokens: int = DEFAULT_TEXT_TOKENS,
                image_tokens: int | None = None, new_tokens: int = 8, warmup: int = 1, min_runs: int = 5,
                min_time_s: float = 2.0, threads: int | None = None, fvcore: bool = False,
                flops_only: bool = False, seed: int = 0) -> dict:
    """``withdrawal``, ``flops``, ``latency`` and ``memory`` sections for a loaded model at layer K.

    FLOPs are counted on the real model through the real withdrawal hooks; ``flops_only`` stops there.
    """
    model = loaded.model
    check_layer(layer, num_decoder_layers(model))
    layout = PromptLayout.for_config(model.config, text_tokens=text_tokens, image_tokens=image_tokens)
    counted = count_flops(model, layout, layer, seed=seed)
    analytic = _analytic_or_none(model.config, layout, layer)
    cross_check = fvcore_flops(model, layout, layer, seed=seed) if fvcore else None
    flops = flops_section(counted, layout, analytic=analytic, fvcore=cross_check, counter=COUNTER)
    sections = {"withdrawal": {"layer": layer}, "flops": flops}
    if flops_only:
        return sections
    inputs = prompt_inputs(loaded, layout, seed=seed)
    ratio = flops["baseline"]["total"] / flops["withdrawn"]["total"] if flops["withdrawn"]["total"] else None
    sections["latency"] = measure_latency(model, inputs, layer, new_tokens=new_tokens, warmup=warmup,
                                          min_runs=min_runs, min_time_s=min_time_s, threads=threads,
                                          flops_ratio=ratio)
    sections["memory"] = measure_memory(model, inputs, layer, new_tokens=new_tokens)
    if loaded.device.type == "cuda":
        torch.cuda.empty_cache()
    return sections
