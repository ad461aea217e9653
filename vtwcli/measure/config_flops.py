"""Config-only FLOPs for families that size their vision tokens from the image (`vtw profile --flops-only`).

Nothing but the config files is needed: ``config.json`` (the model, built on the meta device: shapes only,
any size) and ``preprocessor_config.json`` (the image processor: how an image of W x H is resized / tiled; with
videos, ``video_preprocessor_config.json`` where the model has one).

* Vision tokens per image: the adapter's rule (``Adapter.image_tokens``, vtwcli/vision_tokens.py).
* Vision tower + projector: the model's own ``get_image_features``, fed what the image processor makes of
  seeded random images of W x H as real CPU tensors: what the model computes from them alone (grids, masks,
  padding checks, pooling maps) stays real, what touches a weight runs on the meta device (``_MetaAtWeights``);
  the features it returns must number what the rule says. Videos likewise: the adapter's
  ``Adapter.video_tokens`` rule and the model's ``get_video_features`` on what the video processor makes of
  seeded random videos (vtwcli/measure/config_video.py).
* Language model + lm_head: the language model's own forward on meta token ids of text + vision positions
  (embedding lookups cost no FLOPs); withdrawn: pre-hooks hand layers >= K the kept positions only (hidden
  states, per-position layer arguments, rotary tables and position ids cut at the text positions), as the
  definition of VTW says; then one decode step against the prefill's cache (whose layers >= K hold the kept
  tokens only).

Same keys as :func:`vtwcli.measure.flops.count_flops`; the test suite checks the figures against
``count_flops`` on the loaded tiny model of the same config (real hooks, real processor prompt).
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from vtwcli.defaults import DEFAULT_VIDEO_FRAMES
from vtwcli.errors import UnsupportedError, VtwError, error_text, is_out_of_memory
from vtwcli.measure.flops import PromptCounts, _counter, _last_cached_layer, _model_dtype, _parameters_frozen

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
        return int(adapter.image_tokens(model.config, _as_called(adapter, model.config, image_processor), width, height,
                                        images))
    except ValueError as error:  # the image processor's own refusal (e.g. Qwen's aspect ratio of at most 200)
        raise VtwError(f"--image-size {width}x{height}: the image processor rejects it ({error}); use a less "
                       "extreme size") from None
    except RULE_FAULTS as error:  # a zero patch size, a string where a number belongs, another family's processor
        raise rule_fault(adapter.family, "image", "preprocessor_config.json", error) from None


# What a vision-token rule raises on an image (video) processor config with values it cannot work with.
RULE_FAULTS = (ArithmeticError, TypeError, AttributeError, KeyError, IndexError)


def rule_fault(family: str, kind: str, file: str, error: BaseException) -> VtwError:
    return VtwError(f"--flops-only: {family}'s {kind}-token rule cannot work with the {kind} processor of {file} "
                    f"({error_text(error)}); check its patch, merge and pixel-bound values "
                    "against the model repository's file")


def _as_called(adapter, config, image_processor):
    """The image processor as the family's processor calls it (a copy): the processor class's call defaults
    (``vision_tokens.processor_call_defaults``, over preprocessor_config.json's values), then what the processor
    computes for every call (``Adapter.image_processor_kwargs``)."""
    from vtwcli.vision_tokens import processor_call_defaults

    image_processor = copy.copy(image_processor)
    for key, value in processor_call_defaults(config).items():
        if hasattr(image_processor, key):  # settings of the image processor (not output switches)
            setattr(image_processor, key, value)
    for key, value in (adapter.image_processor_kwargs(config) if adapter.image_processor_kwargs else {}).items():
        setattr(image_processor, key, value)
    return image_processor


_debug_meta = False


def _pixel_inputs(model: nn.Module, image_processor, images: int, width: int, height: int, seed: int) -> dict:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    # PIL images, as the loaded model's synthetic prompt hands them over: an array of a height of 1 or 3 would be
    # read as channels first by the image processor (a 1 x W image as W x 3, say)
    pictures = [Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)) for _ in range(images)]
    try:
        out = dict(image_processor(images=[pictures], return_tensors="pt"))
    except Exception as error:  # noqa: BLE001 - the image processor's own refusal, in one line
        if is_out_of_memory(error):
            raise
        raise VtwError(f"the image processor rejected {images} image(s) of {width}x{height} ({error_text(error)}); "
                       "check the values of its preprocessor_config.json, or use another --image-size") from None
    return _feature_inputs(model, out, "get_image_features")


def _feature_inputs(model: nn.Module, out: dict, features: str) -> dict:
    """A processor's output as the arguments of ``model.model.<features>`` (real CPU tensors, see below)."""
    accepted = inspect.signature(getattr(model.model, features)).parameters
    dtype = _model_dtype(model)
    # Real CPU tensors (pixels in the model's dtype): what the model reads of their values (grids, sizes, masks,
    # padding checks) is what the loaded model reads; they go to meta where they meet the weights (_MetaAtWeights).
    return {key: (value.to(dtype) if value.is_floating_point() else value)
            for key, value in out.items() if key in accepted and isinstance(value, torch.Tensor)}


_META = torch.device("meta")
_INDEXING = (torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
             torch.ops.aten._unsafe_index.Tensor)


class _MetaAtWeights(TorchDispatchMode):
    """Real where the values come from the inputs, meta where they come from the weights: an op that mixes real
    and meta tensors runs on meta, with a real boolean index turned into the positions it selects (so a mask
    of real values still picks as many rows as on the loaded model). FLOPs depend on shapes only. With
    ``real_factories`` (the vision side), a tensor made from no tensor (arange, zeros, full) on the meta device is
    made real: its values are the loaded model's (LFM2-VL compares such a range with the images' real sizes)."""

    def __init__(self, real_factories: bool = False):
        super().__init__()
        self.real_factories = real_factories

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if self.real_factories and not tensors and kwargs.get("device") == _META:
            return func(*args, **{**kwargs, "device": torch.device("cpu")})
        if func is torch.ops.aten._to_copy.default and not tensors[0].is_meta and kwargs.get("device") == _META:
            return func(*args, **{**kwargs, "device": tensors[0].device})  # a real value stays real
        if any(t.is_meta for t in tensors) and not all(t.is_meta for t in tensors):
            if func in _INDEXING:
                args = (args[0], [i for index in args[1] for i in _positions(index)], *args[2:])
            args, kwargs = tree_map(_meta, (args, kwargs))
        if func in _GROUPED_MM and tensors[0].is_meta and tensors[0].dtype != torch.bfloat16:
            # the MoE experts' grouped matmul: torch's meta kernel takes bfloat16 only (FLOPs do not depend on it)
            out = func(*tree_map(_bf16, args), **tree_map(_bf16, kwargs))
            return out.to(tensors[0].dtype)
        return func(*args, **kwargs)


_GROUPED_MM = tuple(op.default for op in (getattr(torch.ops.aten, "_grouped_mm", None),) if op is not None)


def _bf16(value):
    return value.to(torch.bfloat16) if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def _positions(index) -> list:
    if isinstance(index, torch.Tensor) and index.dtype == torch.bool and not index.is_meta:
        return list(index.nonzero().unbind(1))
    return [index]


def _meta(value):
    return value.to("meta") if isinstance(value, torch.Tensor) and not value.is_meta else value


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
    from vtwcli.adapters import adapter_for

    hooks = []
    counter = _counter()
    components = {name: paths for name, paths in adapter_for(model).flops_components.items()
                  if name in ("vision_tower", "projector")}
    spent = dict.fromkeys(components, 0)
    for component, paths in components.items():  # each component's share: the counter's total across its calls
        for path in paths:
            for module in _called_modules(model, path):
                hooks += _meter(module, counter, spent, component)
    try:
        with _parameters_frozen(model), counter, _MetaAtWeights(real_factories=True):
            output = getattr(model.model, features)(**pixels)
    except NotImplementedError as error:
        if _debug_meta:
            raise
        raise UnsupportedError(f"{type(model).__name__}: the vision tower does not run on the meta device "
                               f"({type(error).__name__}); drop --flops-only to count on the loaded model") from None
    except RuntimeError as error:  # a shape that does not fit (or an operation meta tensors cannot do)
        if _debug_meta:
            raise
        raise UnsupportedError(f"{type(model).__name__}: the vision tower failed on the meta device on what the "
                               f"processor made of the input ({error_text(error)}); check config.json's vision_config "
                               "and that the processor config agrees with it (patch, merge and temporal patch sizes), "
                               "else drop --flops-only to count on the loaded model") from None
    finally:
        for hook in hooks:
            hook.remove()
    features = getattr(output, "pooler_output", output)
    deepstack = adapter_for(model).deepstack
    if features is None and deepstack is not None and deepstack.injected_features is not None:
        features = deepstack.injected_features(output)  # features that enter through DeepStack alone
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
    ids = torch.zeros(1, total, dtype=torch.long, device="meta")  # token ids: what every language model takes
    # count_flops asks the model for the last position's logits only; a language model that takes the request
    # itself (Gemma 4: its KV-shared layers then run the last query only) gets it here too
    last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(language_model.forward).parameters else {}
    hooks = []
    if layer is not None:
        def cut(module, args, kwargs):  # layer K cuts the hidden states; layers > K receive them cut already
            kwargs = dict(kwargs)
            args = list(args) if args else [kwargs.pop("hidden_states")]
            if module is layers[layer]:
                args[0] = args[0].index_select(1, kept)
            for index in adapter.per_position_layer_args:  # e.g. Gemma 4's per-layer inputs, sliced likewise
                if index < len(args) and _seq_len(args[index], 1) == total:
                    args[index] = _cut(args[index], kept, 1)
            for key, dim in (("position_embeddings", adapter.position_embeddings_seq_dim),
                             ("position_ids", adapter.position_ids_seq_dim)):
                value = kwargs.get(key)
                if value is not None and _seq_len(value, dim) == total:
                    kwargs[key] = _cut(value, kept, dim)
            kwargs["attention_mask"] = None  # causal over the kept tokens; FLOPs are charged on the full grid
            return tuple(args), kwargs

        hooks += [later.register_forward_pre_hook(cut, with_kwargs=True) for later in layers[layer:]]
    cache = DynamicCache(config=text_config)
    try:
        counter = _counter()
        with counter, _MetaAtWeights():
            hidden = language_model(input_ids=ids, cache=cache, use_cache=True, **last).last_hidden_state
        prefill = int(counter.get_total_flops())
    except RuntimeError as error:  # shapes that do not fit, e.g. attention heads not a multiple of the kv heads
        if _debug_meta:
            raise
        raise UnsupportedError(f"{type(model).__name__}: the language model failed on the meta device "
                               f"({error_text(error)}); check config.json's text model values (attention and key/value "
                               "heads, head size) against the model repository, else drop --flops-only to count on "
                               "the loaded model") from None
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
    with counter, _MetaAtWeights():
        step = language_model(input_ids=ids[:, :1], cache=cache, use_cache=True,
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
    from vtwcli.withdrawal import check_exact, deepstack_keeps_vision, num_decoder_layers, refuse_kept_blocks

    adapter = adapter_for(model)
    check_exact(adapter, adapter.text_config(model.config), num_decoder_layers(model), layer)
    if images < 0 or images < 1 and videos < 1:
        raise VtwError(f"--images {images}: the prompt needs at least 1 image" + (" or video" if videos else ""))
    if text_tokens < 1:
        raise VtwError(f"--text-tokens {text_tokens}: the prompt needs at least 1 text token (withdrawal keeps only "
                       "text tokens)")
    width, height = image_size
    image_processor = _as_called(adapter, model.config, image_processor)
    image_vision = images * vision_tokens_per_image(model, image_processor, width, height, images) if images else 0
    video_vision = videos * video_tokens_per_video(model, video_processor, frames, width, height) if videos else 0
    total = image_vision + video_vision + text_tokens
    media = "--images / --image-size" + (" / --videos / --frames" if videos else "")
    adapter.check_prompt_fits(model.config, total, fix=f"lower --text-tokens / {media}")  # before such tensors exist
    kept, withdrawn = _kept_positions(text_tokens, image_vision, video_vision, kinds, adapter.video_kind)
    present = tuple(kind for kind, tokens in (("image", image_vision), (adapter.video_kind, video_vision)) if tokens)
    # the prompt's vision token ids (one of each kind it holds): a kept kind whose blocks are bidirectional (Gemma 4)
    refuse_kept_blocks(adapter, model.config, kinds, torch.tensor(adapter.vision_token_ids(model.config, present)))
    tower, injected = dict.fromkeys(("vision_tower", "projector"), 0), 0
    if images:
        spent, last = _vision_flops(model, _pixel_inputs(model, image_processor, images, width, height, seed),
                                    image_vision)
        tower, injected = {key: tower[key] + spent[key] for key in tower}, max(injected, last)
    if videos:
        pixels = _feature_inputs(model, video_processor_output(video_processor, videos, frames, width, height, seed),
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


# The files transformers builds a processor from (processor_config.json: transformers 5's save_pretrained)
PROCESSOR_FILES = {"image": ("preprocessor_config.json", "processor_config.json"),
                   "video": ("video_preprocessor_config.json", "preprocessor_config.json", "processor_config.json")}
# What transformers raises on a processor config file it cannot build a processor from
PROCESSOR_FILE_FAULTS = (OSError, ValueError, TypeError, AttributeError, KeyError)


def processor_file(source: str, kind: str) -> str | None:
    """The processor config file of ``kind`` in the directory ``source`` that transformers reads, None if none."""
    from pathlib import Path

    return next((name for name in PROCESSOR_FILES[kind] if (Path(source) / name).is_file()), None)


def broken_processor_file(source: str, kind: str, error: BaseException) -> VtwError | None:
    """The one line for a processor config file that exists but cannot be read; None where none exists."""
    name = processor_file(source, kind)
    if name is None:
        return None
    return VtwError(f"--flops-only: the {kind} processor cannot be built from {name} in {source} "
                    f"({error_text(error)}); fix the file or copy it again from the model "
                    "repository")


def image_processor_for_flops(source: str, family: str):
    """The image processor of a config-only directory (or hub id), from its preprocessor_config.json."""
    from vtwcli.vision_tokens import image_processor_of

    try:
        return image_processor_of(source)
    except ValueError as error:  # transformers: "... Missing optional dependencies: torchvision. ..."
        if "torchvision" not in str(error):
            raise broken_processor_file(source, "image", error) or _needs_preprocessor_config(source, family,
                                                                                              error) from None
        raise VtwError(f"--flops-only: {family}'s image processor (transformers) needs torchvision, which does not "
                       f"import here; install the torchvision that matches torch {torch.__version__}") from None
    except PROCESSOR_FILE_FAULTS as error:
        raise broken_processor_file(source, "image", error) or _needs_preprocessor_config(source, family,
                                                                                          error) from None


def _needs_preprocessor_config(source: str, family: str, error: Exception) -> VtwError:
    return VtwError(f"--flops-only: {family} sizes its vision tokens from each image, so it needs "
                    f"preprocessor_config.json beside config.json in {source} ({type(error).__name__}); copy it "
                    "from the model repository")
