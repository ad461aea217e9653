"""`--generic`: an adapter derived from the model itself, for an architecture that has no entry yet.

It covers the standard layout of transformers 5 image-text-to-text models:

* the text decoder's layers are the one ``nn.ModuleList`` of ``text_config.num_hidden_layers`` modules,
  outside the vision tower, whose owner also holds the final ``norm`` (e.g. ``model.language_model.layers``
  and ``model.language_model.norm``);
* the config names the vision placeholder ids (``image_token_id`` / ``image_token_index``, and
  ``video_token_id`` / ``video_token_index`` for video), each one token per vision feature;
* layer types come from ``text_config.layer_types`` (full / sliding / chunked attention), positions either
  from the mask or, where the model has ``get_rope_index`` (M-RoPE), from the model itself.

What it cannot know from the layout alone, and why it never runs without `vtw verify`: features injected
into the language model after the embedding (DeepStack-style additions at vision positions inside the
decoder), masks that are not causal over the text (prefix-LM models such as PaliGemma let the prompt attend
bidirectionally), per-layer inputs beside the hidden states, recurrent layers without ``layer_types``, or
vision tokens without an id in the config. :func:`adopt` therefore derives the adapter, runs
:func:`vtwcli.verify.verify`, and refuses (one line, naming the failed check) unless every check passes.
"""

from __future__ import annotations

from torch import nn

from vtwcli import adapters
from vtwcli.adapters import Adapter
from vtwcli.errors import CheckFailed, UnsupportedError

__all__ = ["VISION_ID_KEYS", "derive_adapter", "register", "adopt", "adopt_with_section", "forget"]

# Config keys of vision placeholder ids, and the --withdraw kind of each.
VISION_ID_KEYS = {"image_token_id": "image", "image_token_index": "image", "video_token_id": "video",
                  "video_token_index": "video"}
_VISION_TOWER_WORDS = ("vision", "visual", "image", "video", "audio")


def _text_config(config):
    return getattr(config, "text_config", None) or config


def _decoder_layers_path(model: nn.Module, num_layers: int) -> str:
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) != num_layers or not name.endswith("layers"):
            continue
        if any(word in name.lower() for word in _VISION_TOWER_WORDS):
            continue
        owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        if isinstance(getattr(owner, "norm", None), nn.Module):
            candidates.append(name)
    architecture = type(model).__name__
    if not candidates:
        raise UnsupportedError(f"--generic: {architecture} has no standard text decoder (a ModuleList of "
                               f"{num_layers} layers beside a final `norm`); it needs an adapter entry "
                               "(docs/architectures.md)")
    if len(candidates) > 1:
        raise UnsupportedError(f"--generic: {architecture} has several candidate decoders ({', '.join(candidates)}); "
                               "it needs an adapter entry (docs/architectures.md)")
    return candidates[0]


def _first_child(model: nn.Module, base: str, names: tuple[str, ...]) -> tuple[str, ...]:
    owner = model.get_submodule(base) if base else model
    for name in names:
        if isinstance(getattr(owner, name, None), nn.Module):
            return (f"{base}.{name}" if base else name,)
    return ()


def derive_adapter(model: nn.Module) -> Adapter:
    """An adapter for ``model`` read off its module tree and config (see the module docstring), or
    UnsupportedError naming what is missing. Not registered: :func:`adopt` does that after verification."""
    config = model.config
    architecture = type(model).__name__
    text_config = _text_config(config)
    num_layers = getattr(text_config, "num_hidden_layers", None)
    if not isinstance(num_layers, int):
        raise UnsupportedError(f"--generic: {architecture}'s text config has no num_hidden_layers; it needs an "
                               "adapter entry (docs/architectures.md)")
    path = _decoder_layers_path(model, num_layers)
    owner = path.rpartition(".")[0]
    keys, seen = [], set()
    for key in VISION_ID_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value not in seen:
            keys.append(key)
            seen.add(value)
    if not keys:
        raise UnsupportedError(f"--generic: {architecture}'s config names no vision token id "
                               f"({', '.join(VISION_ID_KEYS)}); it needs an adapter entry (docs/architectures.md)")
    base = owner.rpartition(".")[0]  # the multimodal model that holds the language model and the vision tower
    components = {
        "vision_tower": _first_child(model, base, ("vision_tower", "visual", "vision_model", "vision_encoder")),
        "projector": _first_child(model, base, ("multi_modal_projector", "connector", "mm_projector", "projector",
                                                "vision_projection")),
        "language_model": (owner,),
        "lm_head": ("lm_head",) if isinstance(getattr(model, "lm_head", None), nn.Module) else (),
    }
    has_rope_index = any(callable(getattr(module, "get_rope_index", None)) for module in (model, getattr(model, "model", None))
                         if module is not None)
    return Adapter(
        family=f"{architecture} (generic)",
        architectures=(architecture,),
        vision_token_id_keys=tuple(keys),
        decoder_layers=lambda m: m.get_submodule(path),
        final_norm=lambda m: m.get_submodule(f"{owner}.norm" if owner else "norm"),
        text_config=_text_config,
        vision_token_kinds={key: VISION_ID_KEYS[key] for key in keys},
        positions_from_mask=not has_rope_index,
        flops_components=components,  # a component not found counts 0 FLOPs (its work lands in the total only)
        notes=f"derived by --generic: layers at {path}, vision ids {', '.join(keys)}",
    )


def register(model: nn.Module) -> Adapter | None:
    """Register a derived adapter for ``model`` when its architecture has no entry; None when it has one
    (an entry always wins). The caller must verify before relying on it (see :func:`adopt`)."""
    architecture = type(model).__name__
    if adapters.has_entry(architecture):
        return None
    adapter = adapters.DERIVED[architecture] = derive_adapter(model)
    return adapter


def adopt(model: nn.Module, processor, samples: list, *, layers: list[int] | None = None, new_tokens: int = 2,
          progress=None):
    """Derive an adapter for ``model``, verify withdrawal with it on ``samples``, and register it for this process.

    Returns the :class:`vtwcli.verify.VerifyResult` (None where the architecture has an entry). Raises
    CheckFailed (exit 1) naming the first failed check when withdrawal is not exact with the derived
    adapter; nothing stays registered then.
    """
    from vtwcli.verify import verify

    architecture = type(model).__name__
    if register(model) is None:
        return None  # the architecture has an entry: nothing to derive
    try:
        result = verify(model, processor, samples, layers=layers, new_tokens=new_tokens, progress=progress)
    except BaseException:
        forget(architecture)
        raise
    if not result.passed:
        forget(architecture)
        raise CheckFailed(f"--generic: {architecture} cannot be handled exactly with a derived adapter: "
                          + result.failure_message().removeprefix("withdrawal is not exact on this model: "))
    return result


def forget(architecture: str) -> None:
    """Unregister a derived adapter (no-op if none)."""
    adapters.DERIVED.pop(architecture, None)


def adopt_with_section(model: nn.Module, processor, samples: list, data: list[dict], **kwargs) -> dict | None:
    """:func:`adopt`, and the profile's ``verification`` section of the passed verification (None where the
    architecture has an entry)."""
    from vtwcli.verify import verification_section

    result = adopt(model, processor, samples, **kwargs)
    if result is None:
        return None
    section = verification_section(result, model, data)
    section["adapter"] = {"derived": True, "notes": adapters.DERIVED[type(model).__name__].notes}
    return section


def verification_samples(selections=None, count: int = 2) -> tuple[list, list[dict]]:
    """The prompts `--generic` verifies on before calibrate / profile: the first ``count`` samples of the
    first calibration dataset, else of the bundled photo_vqa set; and their ``data`` record."""
    from vtwcli.datasets import load_dataset, sample_dataset

    if selections:
        dataset, samples = selections[0].dataset, list(selections[0].samples[:count])
    else:
        dataset = load_dataset("photo_vqa")
        samples = sample_dataset(dataset, count, 0)
    return samples, [{"name": dataset.name, "sha256": dataset.sha256, "sample_ids": [s.id for s in samples]}]
