"""Config-only FLOPs for families that size their vision tokens from the image (`vtw profile --flops-only`).

Nothing but the config files is needed: ``config.json`` (the model, built on the meta device: shapes only,
any size) and ``preprocessor_config.json`` (the image processor: how an image of W x H is resized / tiled; with
videos, ``video_preprocessor_config.json`` where the model has one).

* Vision tokens per image: the adapter's rule (``Adapter.image_tokens``, vtwcli/vision_tokens.py).
* Vision tower + projector: the model's own ``get_image_features`` on the meta device, fed what the image
  processor makes of seeded random images of W x H (pixels moved to meta, grids and sizes kept as the
  integers they are); the features it returns must number what the rule says. Videos likewise: the adapter's
  ``Adapter.video_tokens`` rule and the model's ``get_video_features`` on what the video processor makes of
  seeded random videos (vtwcli/measure/config_video.py).
* Language model + lm_head: the language model's own forward on meta ``inputs_embeds`` of text + vision
  tokens; withdrawn: pre-hooks hand layers >= K the kept positions only (hidden states, rotary tables and
  position ids cut at the text positions), as the definition of VTW says; then one decode step against the
  prefill's cache (whose layers >= K hold the kept tokens only).

Same keys as :func:`vtwcli.measure.flops.count_flops`; the test suite checks the figures against
``count_flops`` on the loaded tiny model of the same config (real hooks, real processor prompt).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from vtwcli.defaults import DEFAULT_VIDEO_FRAMES
from vtwcli.errors import UnsupportedError, VtwError
from vtwcli.measure.flops import PromptCounts, _counter, _last_cached_layer, _model_dtype

__all__ = ["COUNTER_CONFIG", "vision_tokens_per_image", "count_flops_from_config"]

COUNTER_CONFIG = ("torch.utils.flop_counter.FlopCounterMode on the meta device (config.json and "
                  "preprocessor_config.json only: the vision features of seeded random W x H images, then the "
                  "language model on text + vision positions, layers >= K on the text positions)")


def vision_tokens_per_image(model: nn.Module, image_processor, width: int, height: int, images: int = 1) -> int:
    from vtwcli.adapters import adapter_for

    adapter = adapter_for(model)
    if adapter.image_tokens is None:
        raise UnsupportedError(f"config-only FLOPs (--flops-only) of {adapter.family} need its vision-token rule "
                               "(Adapter.image_tokens); drop --flops-only to count on the loaded model")
    try:
        return int(adapter.image_tokens(model.config, image_processor, width, height, images))
    except ValueError as error:  # the image processor's own refusal (e.g. Qwen's aspect ratio of at most 200)
        raise VtwError(f"--image-size {width}x{height}: the image processor rejects it ({error}); use a less "
                       "extreme size") from None


_debug_meta = False
# Vision-tower modules (by attribute name) whose inputs are moved to meta: they derive tables from integer grids.
_META_INPUT_MODULES = ("rotary_pos_emb", "rotary_emb", "rope", "embeddings")


class _OnMeta(TorchFunctionMode):
    """What a real device does and the meta device does not, while the config-only model runs:

    * host-side float tables meet the weights on the device: a CPU floating-point tensor in an op with a meta
      tensor goes to meta (e.g. Qwen3-VL's position-embedding interpolation weights, computed from the integer
      grid). Integer and bool tensors stay where they are: their values may fix shapes;
    * the MoE experts' grouped matmul runs in bfloat16 (torch's meta kernel accepts nothing else; FLOPs do
      not depend on the dtype), its result cast back."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if any(t.is_meta for t in tensors) and any(_host_float(t) for t in tensors):
            move = (lambda t: t.to("meta") if isinstance(t, torch.Tensor) and _host_float(t) else t)
            args, kwargs = pytree.tree_map(move, (args, kwargs))
        if func in _GROUPED_MM and tensors[0].is_meta and tensors[0].dtype != torch.bfloat16:
            bf16 = (lambda t: t.to(torch.bfloat16) if isinstance(t, torch.Tensor) and t.is_floating_point() else t)
            return func(*pytree.tree_map(bf16, args), **pytree.tree_map(bf16, kwargs)).to(tensors[0].dtype)
        return func(*args, **kwargs)


_GROUPED_MM = tuple(f for f in (getattr(torch, "_grouped_mm", None), getattr(torch.nn.functional, "grouped_mm", None))
                    if f is not None)


def _host_float(tensor: torch.Tensor) -> bool:
    return not tensor.is_meta and tensor.is_floating_point() and tensor.dim() > 0


def _to_meta(module, args, kwargs):
    move = (lambda v: v.to("meta") if isinstance(v, torch.Tensor) else v)
    return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}


def _pixel_inputs(model: nn.Module, image_processor, images: int, width: int, height: int, seed: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    pictures = [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(images)]
    try:
        out = dict(image_processor(images=[pictures], return_tensors="pt"))
    except Exception as error:  # noqa: BLE001 - the image processor's own refusal, in one line
        raise VtwError(f"the image processor rejected {images} image(s) of {width}x{height}: {error}") from None
    return _meta_inputs(model, out, "get_image_features")


def _meta_inputs(model: nn.Module, out: dict, features: str) -> dict:
    """A processor's output as the arguments of ``model.model.<features>`` on the meta device."""
    accepted = inspect.signature(getattr(model.model, features)).parameters
    dtype = _model_dtype(model)
    # Pixels (and pixel masks) go to meta; integer grids and sizes stay the values they are.
    return {key: (value.to("meta", dtype=dtype) if value.is_floating_point() else
                  value.to("meta") if value.dtype == torch.bool else value)
            for key, value in out.items() if key in accepted and isinstance(value, torch.Tensor)}


def _feature_rows(features, width: int) -> int:
    if isinstance(features, (list, tuple)):
        return sum(_feature_rows(f, width) for f in features)
    return features.numel() // width


@torch.no_grad()
def _vision_flops(model: nn.Module, pixels: dict, expected_tokens: int, features: str = "get_image_features",
                  rule: str = "Adapter.image_tokens") -> tuple[dict, int]:
    """({vision_tower, projector}, the last decoder layer its DeepStack features go into, else 0) of one
    ``features`` call (get_image_features / get_video_features) on meta; its feature count checked against what
    the adapter's ``rule`` says."""
    import torch.fx.experimental._config as fx_config

    from vtwcli.adapters import adapter_for

    # Rotary tables and patch position ids computed from integer grids or masks: their inputs go to meta too
    # (the values do not matter for FLOPs; the grids' integers stay real where shapes depend on them).
    hooks = [module.register_forward_pre_hook(_to_meta, with_kwargs=True) for name, module in model.named_modules()
             if name.rsplit(".", 1)[-1] in _META_INPUT_MODULES]
    previous = fx_config.meta_nonzero_assume_all_nonzero
    fx_config.meta_nonzero_assume_all_nonzero = True  # every synthetic image is a real one (Idefics3's check)
    counter = _counter()
    components = {name: paths for name, paths in adapter_for(model).flops_components.items()
                  if name in ("vision_tower", "projector")}
    spent = dict.fromkeys(components, 0)
    for component, paths in components.items():  # each component's share: the counter's total across its calls
        for path in paths:
            for module in _called_modules(model, path):
                hooks += _meter(module, counter, spent, component)
    try:
        with counter, _OnMeta():
            output = getattr(model.model, features)(**pixels)
    except (NotImplementedError, RuntimeError) as error:
        if _debug_meta:
            raise
        raise UnsupportedError(f"{type(model).__name__}: the vision tower does not run on the meta device "
                               f"({type(error).__name__}); drop --flops-only to count on the loaded model") from None
    finally:
        fx_config.meta_nonzero_assume_all_nonzero = previous
        for hook in hooks:
            hook.remove()
    features = getattr(output, "pooler_output", output)
    rows = _feature_rows(features, model.config.get_text_config().hidden_size)
    if rows != expected_tokens:
        raise VtwError(f"{type(model).__name__}: the vision-token rule gives {expected_tokens} tokens but the model "
                       f"makes {rows} features; the rule ({rule}) does not fit this config")
    deepstack, injected = adapter_for(model).deepstack, getattr(output, "deepstack_features", None)
    return spent, max(deepstack.target_layers(injected), default=0) if deepstack and injected else 0


def _called_modules(model: nn.Module, path: str) -> list[nn.Module]:
    """The modules at ``path`` that forward() is called on (a ModuleList of blocks: its children)."""
    module = model.get_submodule(path)
    return list(module.children()) if isinstance(module, nn.ModuleList) else [module]


def _meter(module: nn.Module, counter, spent: dict, component: str) -> list:
    start: list[int] = []

    def before(*_):
        start.append(int(counter.get_total_flops()))

    def after(*_):
        spent[component] += int(counter.get_total_flops()) - start.pop()

    return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]


def _cut(value, index: torch.Tensor, dim: int):
    if isinstance(value, torch.Tensor):
        return value.index_select(dim if dim >= 0 else value.dim() + dim, index.to(value.device))
    if isinstance(value, (tuple, list)):
        return type(value)(_cut(v, index, dim) for v in value)
    return value


@torch.no_grad()
def _language_flops(model: nn.Module, total: int, kept: torch.Tensor, layer: int | None) -> tuple[int, int, int, int]:
    """(prefill language model, lm_head, decode step, cached tokens of the last layer with keys/values) on meta."""
    from transformers import DynamicCache

    from vtwcli.adapters import adapter_for
    from vtwcli.model_vision import language_model_of

    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    language_model = language_model_of(model, layers)
    text_config = adapter.text_config(model.config)
    dtype = _model_dtype(model)
    embeds = torch.empty(1, total, text_config.hidden_size, device="meta", dtype=dtype)
    hooks = []
    if layer is not None:
        def cut(module, args, kwargs):
            kwargs = dict(kwargs)
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if module is layers[layer]:
                hidden = hidden.index_select(1, kept)
            if kwargs.get("position_embeddings") is not None:
                kwargs["position_embeddings"] = _cut(kwargs["position_embeddings"], kept,
                                                     adapter.position_embeddings_seq_dim)
            if kwargs.get("position_ids") is not None:
                kwargs["position_ids"] = _cut(kwargs["position_ids"], kept, adapter.position_ids_seq_dim)
            kwargs["attention_mask"] = None  # causal over the kept tokens; FLOPs are charged on the full grid
            return (hidden, *args[1:]), kwargs

        def carry(module, args, kwargs):  # layers > K receive the kept hidden states already
            kwargs = dict(kwargs)
            for key, dim in (("position_embeddings", adapter.position_embeddings_seq_dim),
                             ("position_ids", adapter.position_ids_seq_dim)):
                value = kwargs.get(key)
                if value is not None and _seq_len(value, dim) == total:
                    kwargs[key] = _cut(value, kept, dim)
            kwargs["attention_mask"] = None
            return args, kwargs

        hooks.append(layers[layer].register_forward_pre_hook(cut, with_kwargs=True))
        hooks += [later.register_forward_pre_hook(carry, with_kwargs=True) for later in layers[layer + 1:]]
    cache = DynamicCache(config=text_config)
    try:
        counter = _counter()
        with counter, _OnMeta():
            hidden = language_model(inputs_embeds=embeds, cache=cache, use_cache=True).last_hidden_state
        prefill = int(counter.get_total_flops())
    finally:
        for hook in hooks:
            hook.remove()
    counter = _counter()
    with counter:
        model.lm_head(hidden[:, -1:])
    head = int(counter.get_total_flops())
    context = int(cache.get_seq_length(_last_cached_layer(cache)))
    position = torch.full((1, 1), total, dtype=torch.long, device="meta")
    counter = _counter()
    with counter, _OnMeta():
        step = language_model(inputs_embeds=embeds[:, :1], cache=cache, use_cache=True,
                              position_ids=position).last_hidden_state
        model.lm_head(step)
    return prefill, head, int(counter.get_total_flops()), context


def _seq_len(value, dim: int) -> int | None:
    if isinstance(value, torch.Tensor):
        return value.shape[dim] if value.dim() else None
    if isinstance(value, (tuple, list)) and value:
        return _seq_len(value[0], dim)
    return None


def count_flops_from_config(model: nn.Module, image_processor, *, layer: int, images: int = 1,
                            image_size: tuple[int, int], text_tokens: int, seed: int = 0, videos: int = 0,
                            frames: int = DEFAULT_VIDEO_FRAMES, video_processor=None,
                            kinds: tuple[str, ...] | None = None) -> tuple[dict, PromptCounts]:
    """Counted FLOPs (the keys of ``count_flops``) of a prompt of ``images`` images and ``videos`` videos of
    ``frames`` frames, all of ``image_size`` (W, H), and ``text_tokens`` text tokens, from the config alone; and
    the prompt's token counts (``kinds``: the vision tokens withdrawn, the others stay like text)."""
    from vtwcli.adapters import adapter_for
    from vtwcli.measure.config_video import video_processor_output, video_tokens_per_video
    from vtwcli.withdrawal import deepstack_keeps_vision, num_decoder_layers

    if images < 0 or images < 1 and videos < 1:
        raise VtwError(f"--images {images}: the prompt needs at least 1 image" + (" or video" if videos else ""))
    if text_tokens < 1:
        raise VtwError(f"--text-tokens {text_tokens}: the prompt needs at least 1 text token (withdrawal keeps only "
                       "text tokens)")
    width, height = image_size
    image_vision = images * vision_tokens_per_image(model, image_processor, width, height, images) if images else 0
    video_vision = videos * video_tokens_per_video(model, video_processor, frames, width, height) if videos else 0
    total = image_vision + video_vision + text_tokens
    adapter_for(model).check_prompt_fits(model.config, total)  # before tensors of that length are built
    adapter = adapter_for(model)
    kept, withdrawn = _kept_positions(text_tokens, image_vision, video_vision, kinds, adapter.video_kind)
    tower, injected = dict.fromkeys(("vision_tower", "projector"), 0), 0
    if images:
        spent, last = _vision_flops(model, _pixel_inputs(model, image_processor, images, width, height, seed),
                                    image_vision)
        tower, injected = {key: tower[key] + spent[key] for key in tower}, max(injected, last)
    if videos:
        pixels = _meta_inputs(model, video_processor_output(video_processor, videos, frames, width, height, seed),
                              "get_video_features")
        spent, last = _vision_flops(model, pixels, video_vision, "get_video_features", "Adapter.video_tokens")
        tower, injected = {key: tower[key] + spent[key] for key in tower}, max(injected, last)
    if layer < injected and withdrawn < image_vision + video_vision:  # as withdraw() refuses it on the loaded model
        raise deepstack_keeps_vision(adapter, injected, kinds)
    num_layers = num_decoder_layers(model)
    result: dict = {"decode_per_token": {"context_tokens": {}}}
    for variant in ("baseline", "withdrawn"):
        withdraw_at = layer if variant == "withdrawn" and layer < num_layers else None
        language, head, step, context = _language_flops(model, total, kept, withdraw_at)
        result[variant] = {"total": tower["vision_tower"] + tower["projector"] + language + head, **tower,
                           "language_model": language, "lm_head": head}
        result["decode_per_token"][variant] = step
        result["decode_per_token"]["context_tokens"][variant] = context
    return result, PromptCounts(images=images, vision_tokens=withdrawn, text_tokens=total - withdrawn, videos=videos,
                                frames=frames if videos else 0)


def _kept_positions(text_tokens: int, image_vision: int, video_vision: int, kinds: tuple[str, ...] | None,
                    video_kind: str = "video") -> tuple[torch.Tensor, int]:
    """(positions kept in layers >= K, tokens withdrawn) of the prompt [BOS-like token] [image tokens] [video
    tokens] [question]: the vision tokens of the ``kinds`` withdrawn (None: all; the video tokens are of
    ``video_kind``, Adapter.video_kind), everything else kept."""
    before = 1 if text_tokens >= 2 else 0  # a BOS-like token first, the question after the vision tokens
    blocks = ((before, False), (image_vision, kinds is None or "image" in kinds),
              (video_vision, kinds is None or video_kind in kinds), (text_tokens - before, False))
    kept, start, withdrawn = [], 0, 0
    for length, gone in blocks:
        if gone:
            withdrawn += length
        else:
            kept.append(torch.arange(start, start + length))
        start += length
    return torch.cat(kept).to("meta"), withdrawn


def image_processor_for_flops(source: str, family: str):
    """The image processor of a config-only directory (or hub id), from its preprocessor_config.json."""
    from vtwcli.vision_tokens import image_processor_of

    try:
        return image_processor_of(source)
    except (OSError, ValueError) as error:
        raise VtwError(f"--flops-only: {family} sizes its vision tokens from each image, so it needs "
                       f"preprocessor_config.json beside config.json in {source} ({type(error).__name__}); copy it "
                       "from the model repository") from None
