"""FLOPs of a multimodal forward with and without withdrawal: counted, analytic, and an fvcore cross-check.

Convention: FLOPs = 2 x multiply-accumulates (a (m x k) @ (k x n) matmul is 2*m*k*n FLOPs). Only
matmul-like work is counted (linear layers, convolutions, the two attention matmuls QK^T and AV);
norms, activations, softmax, RoPE, residual adds and embedding lookups are 0, in every counter here.

Scope of one "prefill": batch 1, one forward of the prompt (images + text) as ``generate()`` runs it,
so the lm_head covers the LAST position only (``logits_to_keep=1``), with and without withdrawal alike.
"Decode per token": one step of one new token against the prefill's KV cache.

Components: ``vision_tower`` (every layer of the tower: transformers runs all of them even when the
features come from layer -2), ``projector``, ``language_model`` (decoder layers + final norm +
embeddings, i.e. the decoder layers' matmuls), ``lm_head``; ``total`` is everything counted in the call.

Three counters:

* :func:`count_flops` runs the real model (any device but meta) under
  :class:`torch.utils.flop_counter.FlopCounterMode` and attributes FLOPs by module; the withdrawn
  figure comes from the real withdrawal hooks. CPU's fused SDPA kernel has no formula in torch, so one
  is registered (torch's own ``sdpa_flop_count``: both attention matmuls over the full q x k grid), and
  so is one for the grouped matmul of MoE experts (one row per token and routed expert: MoE layers count
  the router and the experts each token is routed to, never all experts) and one for the triangular solve
  of Qwen3.5's chunked Gated DeltaNet (:mod:`vtwcli.measure.counter`).
* :func:`count_flops_meta` builds nothing but shapes: the model on the ``meta`` device (any size, no
  weights, seconds for 7B), driven component by component and layer by layer (the full LLaVA forward
  cannot run on meta: its placeholder check reads tensor values). Withdrawal is applied as the
  definition says: from layer K on, only the text positions go through.
* :func:`analytic_flops` is the closed form from the config alone.
* :func:`fvcore_flops` (optional cross-check) traces the real model with fvcore's jit counter.

Causal attention is counted on the full q x k grid (what eager and SDPA kernels are charged by torch's
counter), not the triangle.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vtwcli.errors import UnsupportedError, VtwError
from vtwcli.measure.counter import new_counter as _counter
from vtwcli.measure.runs import VARIANTS, generate_exactly, new_cache, variants
from vtwcli.adapters.mechanism import config_layer_types
from vtwcli.adapters.model_types import TEXT_MODELS, VISION_TOWERS, text_model_of, vision_tower_of
from vtwcli.measure.text_layers import decode_flops, kernel_note, mm_flops, prefill_flops
from vtwcli.profile.model import FLOPS_COMPONENTS
from vtwcli.withdrawal import check_layer

__all__ = ["CONVENTION", "COUNTER", "COUNTER_META", "COMPONENTS", "LM_HEAD_NOTE", "PromptLayout", "PromptCounts",
           "tokens_per_image",
           "analytic_flops", "count_flops", "count_flops_meta", "fvcore_flops", "meta_model", "flops_convention",
           "flops_section",
           "require_fixed_image_layout"]

CONVENTION = ("FLOPs = 2 x multiply-accumulates; matmul work only (linear, conv, QK^T, AV over the full q x k grid); "
              "batch 1; prefill lm_head on the last position only (logits_to_keep=1, as generate() runs it); "
              "mixture of experts: the experts each token is routed to (top-k) and shared experts, not all experts")
COUNTER = "torch.utils.flop_counter.FlopCounterMode"
COUNTER_META = ("torch.utils.flop_counter.FlopCounterMode on the meta device (config only, no weights; components "
                "driven one by one, layers >= K on the text positions)")
COMPONENTS = FLOPS_COMPONENTS
LM_HEAD_NOTE = "lm_head counted on the last position only (logits_to_keep=1, as generate() runs the prefill)"

# -- prompt layout --------------------------------------------------------------------------------
def tokens_per_image(config) -> int:
    """Vision tokens one image becomes in the language model (576 for LLaVA-1.5's 336px CLIP-L/14)."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    spec = vision_tower_of(vision)
    has_cls = True if spec is None else spec.cls_token
    return patches + (1 if strategy == "full" and has_cls else 0)


@dataclass(frozen=True)
class PromptLayout:
    """A batch-1 prompt: ``text_before`` text tokens, ``images`` image blocks, then ``text_after`` tokens."""

    images: int
    tokens_per_image: int
    text_before: int
    text_after: int

    @property
    def vision_tokens(self) -> int:
        return self.images * self.tokens_per_image

    @property
    def text_tokens(self) -> int:
        return self.text_before + self.text_after

    @property
    def total(self) -> int:
        return self.vision_tokens + self.text_tokens

    @classmethod
    def for_config(cls, config, *, text_tokens: int, image_tokens: int | None = None) -> "PromptLayout":
        per_image = tokens_per_image(config)
        image_tokens = per_image if image_tokens is None else image_tokens
        if text_tokens < 1:
            raise VtwError(f"--text-tokens {text_tokens}: the prompt needs at least 1 text token (withdrawal "
                           "keeps only text tokens)")
        if image_tokens < per_image or image_tokens % per_image:
            raise VtwError(f"--image-tokens {image_tokens}: this model turns one image into {per_image} tokens; "
                           f"use a multiple of {per_image}")
        before = 1 if text_tokens >= 2 else 0  # a BOS-like token first, the question after the image
        return cls(images=image_tokens // per_image, tokens_per_image=per_image, text_before=before,
                   text_after=text_tokens - before)

    def vision_mask(self, device=None) -> torch.Tensor:
        mask = torch.zeros(1, self.total, dtype=torch.bool)
        mask[0, self.text_before:self.text_before + self.vision_tokens] = True
        return mask.to(device) if device is not None else mask

    def text_index(self) -> torch.Tensor:
        return (~self.vision_mask()[0]).nonzero().squeeze(1)

    def input_ids(self, config, *, seed: int = 0, vocab_limit: int | None = None,
                  exclude: tuple[int, ...] = ()) -> torch.Tensor:
        """Deterministic ids: random ordinary text tokens around the image tokens (never a special id)."""
        vocab = config.text_config.vocab_size if vocab_limit is None else min(vocab_limit, config.text_config.vocab_size)
        special = {config.image_token_id, *(getattr(config.text_config, k, None) for k in
                                            ("pad_token_id", "bos_token_id", "eos_token_id"))}
        special |= {getattr(config, "pad_token_id", None), *exclude}
        ordinary = torch.tensor([i for i in range(min(vocab, 4096)) if i not in special and i >= 1])
        if ordinary.numel() == 0:
            raise VtwError("the vocabulary has no ordinary text token to build a synthetic prompt from")
        generator = torch.Generator().manual_seed(seed)
        text = ordinary[torch.randint(len(ordinary), (self.text_tokens,), generator=generator)]
        ids = torch.cat([text[:self.text_before], torch.full((self.vision_tokens,), int(config.image_token_id)),
                         text[self.text_before:]])
        return ids[None]

    def pixel_values(self, config, *, seed: int = 0, dtype=torch.float32, device=None) -> torch.Tensor:
        size = config.vision_config.image_size
        channels = getattr(config.vision_config, "num_channels", 3)
        shape = (self.images, channels, size, size)
        if device is not None and torch.device(device).type == "meta":
            return torch.empty(shape, dtype=dtype, device="meta")
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(shape, generator=generator).to(dtype=dtype, device=device)


@dataclass(frozen=True)
class PromptCounts:
    """Token counts of a prompt built by a processor (any family): what the analytic model needs."""

    images: int
    vision_tokens: int
    text_tokens: int
    videos: int = 0
    frames: int = 0  # frames of each video (`--frames`); 0 without videos

    @property
    def total(self) -> int:
        return self.vision_tokens + self.text_tokens


# -- analytic -------------------------------------------------------------------------------------
def _text_dims(config):
    """(hidden, layers, vocab) of a text model the closed form knows (vtwcli.measure.text_layers)."""
    text = config.text_config
    if text_model_of(text) is None:
        raise UnsupportedError(f"analytic FLOPs know text models {', '.join(TEXT_MODELS)}, not {text.model_type}")
    if getattr(text, "enable_moe_block", False):
        raise UnsupportedError(f"analytic FLOPs do not cover {text.model_type}'s mixture-of-experts block")
    return text.hidden_size, text.num_hidden_layers, text.vocab_size


def _vision_flops(config, images: int) -> tuple[int, int]:
    """(vision tower, projector) FLOPs for ``images`` images."""
    vision = config.vision_config
    spec = vision_tower_of(vision)
    if spec is None:
        raise UnsupportedError(f"analytic FLOPs know vision towers {', '.join(VISION_TOWERS)}, not {vision.model_type}")
    hidden, inter, heads = vision.hidden_size, vision.intermediate_size, vision.num_attention_heads
    patches = (vision.image_size // vision.patch_size) ** 2
    channels = getattr(vision, "num_channels", 3)
    seq = patches + (1 if spec.cls_token else 0)
    patch_conv = mm_flops(patches, channels * vision.patch_size ** 2, hidden)
    head_dim = hidden // heads
    layer = 4 * mm_flops(seq, hidden, hidden) + 2 * heads * mm_flops(seq, head_dim, seq) + 2 * mm_flops(seq, hidden, inter)
    tower = images * (patch_conv + vision.num_hidden_layers * layer)
    feature_layers = 1 if isinstance(config.vision_feature_layer, int) else len(config.vision_feature_layer)
    text_hidden = config.text_config.hidden_size
    per_image = tokens_per_image(config)
    projector = images * (mm_flops(per_image, hidden * feature_layers, text_hidden) + mm_flops(per_image, text_hidden, text_hidden))
    return tower, projector


def _with_total(parts: dict) -> dict:
    return {"total": sum(parts.values()), **parts}


def analytic_flops(config, prompt, layer: int, *, vision: bool = True) -> dict:
    """Closed-form FLOPs from the config: {baseline, withdrawn, decode_per_token, covers} like the counted figures.

    ``prompt`` gives the token counts (``images``, ``vision_tokens``, ``text_tokens``, ``total``): a
    :class:`PromptLayout` or :class:`PromptCounts`. Withdrawn: layers < K see all N tokens; layers >= K see
    the text tokens only, attending over them. Decode: one token, keys = cache + 1, where the cache of
    layers >= K holds only the kept tokens. The vision tower and projector have a closed form only for
    the fixed LLaVA-1.5 layout (CLIP / SigLIP, ``vision=True``); otherwise ``covers`` lists the language
    model and lm_head only and ``total`` is their sum.
    """
    hidden, num_layers, vocab = _text_dims(config)
    check_layer(layer, num_layers)
    text = config.text_config
    types = config_layer_types(text, num_layers)
    n, kept = prompt.total, prompt.text_tokens
    lm_head = mm_flops(1, hidden, vocab)
    full_lm = prefill_flops(text, types, lambda i: n)
    withdrawn_lm = prefill_flops(text, types, lambda i: n if i < layer else kept)
    baseline = {"language_model": full_lm, "lm_head": lm_head}
    withdrawn = {"language_model": withdrawn_lm, "lm_head": lm_head}
    if vision:
        tower, projector = _vision_flops(config, prompt.images)
        baseline.update(vision_tower=tower, projector=projector)
        withdrawn.update(vision_tower=tower, projector=projector)
    windows = _sliding_windows(config.text_config, num_layers)

    def decode_step(context_of_layer) -> int:  # one new token against each layer's cached context
        return decode_flops(text, types, lambda i: _decode_keys(context_of_layer(i), windows[i])) + lm_head

    decode_kept = kept if layer < num_layers else n
    decode_base = decode_step(lambda i: n)
    decode_withdrawn = decode_step(lambda i: n if i < layer else decode_kept)
    return {"baseline": _with_total(baseline), "withdrawn": _with_total(withdrawn),
            "covers": [c for c in COMPONENTS if c in baseline],
            "decode_per_token": {"baseline": decode_base, "withdrawn": decode_withdrawn,
                                 "context_tokens": {"baseline": n, "withdrawn": decode_kept}}}


def _sliding_windows(text_config, num_layers: int) -> list[int | None]:
    """Per decoder layer: its sliding window, or None for full attention (as transformers' caches decide)."""
    types = getattr(text_config, "layer_types", None)
    window = getattr(text_config, "sliding_window", None)
    if not types:
        types = ["sliding_attention" if window is not None else "full_attention"] * num_layers
    return [window if kind == "sliding_attention" and window is not None else None for kind in types[:num_layers]]


def _decode_keys(context: int, window: int | None) -> int:
    """Keys one decode step attends over: the cache (a sliding layer keeps its last window - 1) + the new token."""
    return (context if window is None else min(context, window - 1)) + 1


def _component_modules(model: nn.Module, adapter) -> dict[str, nn.Module]:
    """Component -> the one module the adapter entry names for it (what the meta-device count drives)."""
    try:
        return {component: model.get_submodule(path) for component, (path,) in adapter.flops_components.items()}
    except (AttributeError, ValueError):
        paths = ", ".join(f"{c}: {', '.join(p)}" for c, p in adapter.flops_components.items())
        raise UnsupportedError(f"{type(model).__name__}: the meta-device count drives one module per component "
                               f"and this model does not have them as its adapter names them ({paths})") from None


def _module_flops(counts: dict, name: str) -> int:
    """FLOPs of the module at ``name``; a container that is never called itself (a ModuleList of blocks)
    has no entry of its own, so its direct children's entries are summed instead."""
    if name in counts:
        return int(sum(counts[name].values()))
    prefix = name + "."
    return int(sum(sum(v.values()) for key, v in counts.items() if key.startswith(prefix)
                   and "." not in key[len(prefix):]))


def _by_component(model: nn.Module, counter: FlopCounterMode) -> dict:
    """{total, vision_tower, projector, language_model, lm_head} from the counter, by the adapter's paths."""
    from vtwcli.adapters import adapter_for

    counts = counter.get_flop_counts()
    root = type(model).__name__
    parts = {component: sum(_module_flops(counts, f"{root}.{path}") for path in paths)
             for component, paths in adapter_for(model).flops_components.items()}
    return {"total": int(counter.get_total_flops()), **parts}


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _last_cached_layer(cache) -> int:
    """The last layer that holds keys/values of its own (a KV-sharing layer, e.g. Gemma 4's last ones, has none)."""
    layers = getattr(cache, "layers", [])
    return max((i for i, layer in enumerate(layers) if getattr(layer, "keys", None) is not None), default=0)


@torch.no_grad()
def count_flops(model: nn.Module, prompt, layer: int, *, seed: int = 0, kinds: tuple[str, ...] | None = None) -> dict:
    """Counted FLOPs of the prefill and of one decode step, baseline and withdrawn at ``layer``.

    ``prompt`` is the batch-1 model inputs (a dict, as a processor returns them: any family) or a
    :class:`PromptLayout` (LLaVA-1.5 layout: ids and pixels are synthesised; on the meta device this goes
    to :func:`count_flops_meta`). Runs the real model and the real withdrawal hooks. The decode step is
    the second forward of a greedy ``generate()``: the greedy next token against the prefill's cache, with
    the positions generate() gives each family (e.g. M-RoPE deltas). ``context_tokens``: what the last
    layer with keys/values of its own caches (conv / recurrent and KV-sharing layers have none). ``kinds`` selects the withdrawn vision
    tokens as in :func:`vtwcli.withdraw`. Returns {baseline, withdrawn, decode_per_token} (see module doc).
    """
    from vtwcli.withdrawal import num_decoder_layers

    if isinstance(prompt, PromptLayout):
        if _model_device(model).type == "meta":
            return count_flops_meta(model, prompt, layer)
        device = _model_device(model)
        prompt = {"input_ids": prompt.input_ids(model.config, seed=seed).to(device),
                  "pixel_values": prompt.pixel_values(model.config, seed=seed, dtype=_model_dtype(model),
                                                      device=device)}
    num_layers = num_decoder_layers(model)
    check_layer(layer, num_layers)
    inputs = dict(prompt)
    inputs.setdefault("attention_mask", torch.ones_like(inputs["input_ids"]))
    result: dict = {"decode_per_token": {"context_tokens": {}}}
    with _parameters_frozen(model):
        for variant, withdrawn in variants(model, layer, kinds):
            with withdrawn:
                counter = _counter()
                cache = new_cache(model)
                with counter:
                    out = model(**inputs, cache=cache, use_cache=True, logits_to_keep=1)
                result[variant] = _by_component(model, counter)
                result["decode_per_token"]["context_tokens"][variant] = int(
                    cache.get_seq_length(_last_cached_layer(cache)))
                del out, cache
                result["decode_per_token"][variant] = _decode_step_flops(model, inputs)
    return result


@contextlib.contextmanager
def _parameters_frozen(model: nn.Module):
    """Parameters with requires_grad off while counting: the counter's module tracker hooks every module input
    that requires grad, and fails on a parameter handed straight to a module (Idefics2's perceiver latents)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


def _decode_step_flops(model: nn.Module, inputs: dict) -> int:
    """FLOPs of one decode step as ``generate()`` makes it: its second forward (the greedy token against the
    prefill's cache, with the positions generate() derives for the family, e.g. M-RoPE deltas)."""
    counter, calls, inside = _counter(), [0], [False]

    def enter(module, args, kwargs):
        calls[0] += 1
        if calls[0] == 2:
            counter.__enter__()
            inside[0] = True

    def leave(module, args, output):
        if inside[0]:
            counter.__exit__(None, None, None)
            inside[0] = False

    hooks = [model.register_forward_pre_hook(enter, with_kwargs=True), model.register_forward_hook(leave)]
    try:
        generate_exactly(model, inputs, 2)
    finally:
        if inside[0]:
            counter.__exit__(None, None, None)
        for hook in hooks:
            hook.remove()
    return int(counter.get_total_flops())


def meta_model(config, *, attn: str = "sdpa") -> nn.Module:
    """The model of ``config`` on the meta device: shapes only, no memory, any size."""
    from transformers import AutoModelForImageTextToText

    config._attn_implementation = attn
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, attn_implementation=attn)
    return model.eval()


def _select_features(config, outputs) -> torch.Tensor:
    """LLaVA's feature selection from the vision tower's hidden states (layer(s), drop CLS for 'default')."""
    layers = config.vision_feature_layer
    chosen = [outputs.hidden_states[i] for i in ([layers] if isinstance(layers, int) else layers)]
    if getattr(config, "vision_feature_select_strategy", "default") == "default":
        chosen = [h[:, 1:] for h in chosen]
    return torch.cat(chosen, dim=-1)


def _drive_language_model(lm: nn.Module, hidden: torch.Tensor, positions: torch.Tensor, cache, layer: int | None,
                          kept: torch.Tensor | None) -> torch.Tensor:
    """The decoder layers of ``lm`` one by one; from ``layer`` on only the ``kept`` positions go through."""
    cos_sin = lm.rotary_emb(hidden, positions)
    for i, decoder_layer in enumerate(lm.layers):
        if layer is not None and i == layer and kept is not None:
            hidden = hidden.index_select(1, kept)
            cos_sin = tuple(t.index_select(1, kept) for t in cos_sin)
            positions = positions.index_select(1, kept)
        hidden = decoder_layer(hidden, attention_mask=None, position_embeddings=cos_sin, position_ids=positions,
                               cache=cache, use_cache=True)
    return lm.norm(hidden)


def require_fixed_image_layout(model: nn.Module):
    """The model's adapter, if its config alone fixes the image tokens (what config-only counting needs)."""
    from vtwcli.adapters import adapter_for

    adapter = adapter_for(model)
    if not adapter.fixed_image_layout:
        raise UnsupportedError(f"config-only FLOPs (--flops-only, meta device) need a config that fixes the image "
                               f"tokens (LLaVA-1.5) or the family's vision-token rule (Adapter.image_tokens); "
                               f"{adapter.family} sizes them from each image and has no rule yet: drop --flops-only "
                               "to count on the loaded model")
    return adapter


@torch.no_grad()
def count_flops_meta(model: nn.Module, layout: PromptLayout, layer: int) -> dict:
    """FlopCounterMode on shapes only: the components driven one by one (works on meta and real devices).

    Same figures and keys as :func:`count_flops`; withdrawal applied by definition (layers >= K get the
    text positions only, decode steps attend over the kept cache of those layers).
    """
    from transformers import DynamicCache

    from vtwcli.withdrawal import num_decoder_layers

    adapter = require_fixed_image_layout(model)
    num_layers = num_decoder_layers(model)
    check_layer(layer, num_layers)
    config = model.config
    device, dtype = _model_device(model), _model_dtype(model)
    parts = _component_modules(model, adapter)
    lm = parts["language_model"]
    ids = layout.input_ids(config).to(device)
    pixels = layout.pixel_values(config, dtype=dtype, device=device)
    kept = layout.text_index().to(device)

    def counted(fn):
        counter = _counter()
        with counter:
            value = fn()
        return value, int(counter.get_total_flops())

    features, tower = counted(lambda: _select_features(
        config, parts["vision_tower"](pixels, output_hidden_states=True, return_dict=True)))
    _, projector = counted(lambda: parts["projector"](features))
    result: dict = {"decode_per_token": {"context_tokens": {}}}
    for variant in VARIANTS:  # withdrawn by definition here: no hooks on a meta model
        withdraw_at = layer if variant == "withdrawn" and layer < num_layers else None
        cache = DynamicCache(config=config.text_config)
        positions = torch.arange(layout.total, device=device)[None]
        hidden, language = counted(lambda: _drive_language_model(
            lm, lm.embed_tokens(ids), positions, cache, withdraw_at, kept))
        _, head = counted(lambda: parts["lm_head"](hidden[:, -1:]))
        result[variant] = {"total": tower + projector + language + head, "vision_tower": tower,
                           "projector": projector, "language_model": language, "lm_head": head}
        context = int(cache.get_seq_length(num_layers - 1))
        step_position = torch.full((1, 1), layout.total, device=device)

        def decode():
            out = _drive_language_model(lm, lm.embed_tokens(ids[:, -1:]), step_position, cache, None, None)
            return parts["lm_head"](out)

        _, step = counted(decode)
        result["decode_per_token"][variant] = step
        result["decode_per_token"]["context_tokens"][variant] = context
    return result


# -- fvcore cross-check ---------------------------------------------------------------------------
FVCORE_NOTE = ("fvcore.nn.FlopCountAnalysis (jit trace of the prefill, logits_to_keep=1) counts multiply-accumulates; "
               "figures here are x2. fvcore skips scaled_dot_product_attention, so vtwcli adds a handle for it "
               "(2 matmuls, full q x k grid) and removes fvcore's norm/pool handles to count matmul work only, "
               "like FlopCounterMode")


def _fvcore_sdpa(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import get_shape

    query, key, value = (get_shape(v) for v in inputs[:3])
    batch_heads = math.prod(query[:-2])
    return batch_heads * query[-2] * key[-2] * (query[-1] + value[-1])  # multiply-accumulates


def _fvcore_zero(inputs, outputs) -> int:
    return 0  # (a None handle would only silence the op's warning, not stop fvcore's own norm counting)


class _Prefill(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, pixel_values):
        return self.model(input_ids=input_ids, pixel_values=pixel_values, use_cache=False, logits_to_keep=1).logits


@torch.no_grad()
def fvcore_flops(model: nn.Module, layout: PromptLayout, layer: int, *, seed: int = 0,
                 kinds: tuple[str, ...] | None = None) -> dict:
    """fvcore's count of the prefill total, baseline and withdrawn (``kinds`` as in :func:`vtwcli.withdraw`),
    x2 to FLOPs: {baseline_total, withdrawn_total, note}."""
    import warnings

    from fvcore.nn import FlopCountAnalysis

    if _model_device(model).type == "meta":
        raise VtwError("the fvcore cross-check needs real weights (it traces with jit); drop --fvcore for meta "
                       "(config-only) FLOPs")
    device = _model_device(model)
    ids = layout.input_ids(model.config, seed=seed).to(device)
    pixels = layout.pixel_values(model.config, seed=seed, dtype=_model_dtype(model), device=device)
    totals = {}
    for variant, withdrawn in variants(model, layer, kinds):
        with withdrawn:
            analysis = FlopCountAnalysis(_Prefill(model), (ids, pixels))
            analysis.set_op_handle(**{"aten::scaled_dot_product_attention": _fvcore_sdpa})
            analysis.set_op_handle(**{op: _fvcore_zero for op in ("aten::batch_norm", "aten::group_norm", "aten::layer_norm",
                                                          "aten::instance_norm", "aten::upsample_nearest2d",
                                                          "aten::upsample_bilinear2d", "aten::adaptive_avg_pool2d",
                                                          "aten::grid_sampler")})
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                totals[variant] = 2 * int(analysis.total())
    return {"baseline_total": totals["baseline"], "withdrawn_total": totals["withdrawn"], "note": FVCORE_NOTE}


# -- the profile section --------------------------------------------------------------------------
def flops_convention(config) -> str:
    """``flops.convention`` for this model: :data:`CONVENTION`, plus what its conv / recurrent layers' figures
    assume (transformers' torch kernels; vtwcli.measure.text_layers.kernel_note) where it has such layers."""
    text = config.get_text_config()
    note = kernel_note(text, config_layer_types(text, text.num_hidden_layers))
    return CONVENTION if note is None else f"{CONVENTION}; {note}"


def flops_section(counted: dict, layout: PromptLayout, *, analytic: dict | None = None, fvcore: dict | None = None,
                  counter: str = COUNTER, convention: str = CONVENTION) -> dict:
    """The profile's ``flops`` block from counted (and optional analytic / fvcore) figures; ``convention``:
    :func:`flops_convention` of the model."""
    baseline, withdrawn = counted["baseline"], counted["withdrawn"]
    section = {
        "convention": convention,
        "counter": counter,
        "tokens": {"vision": layout.vision_tokens, "text": layout.text_tokens, "images": layout.images,
                   **({"videos": layout.videos, "frames": layout.frames} if getattr(layout, "videos", 0) else {})},
        "baseline": {k: int(baseline[k]) for k in ("total", *COMPONENTS)},
        "withdrawn": {k: int(withdrawn[k]) for k in ("total", *COMPONENTS)},
        "reduction": 1 - withdrawn["total"] / baseline["total"] if baseline["total"] else 0.0,
        "decode_per_token": {
            "baseline": int(counted["decode_per_token"]["baseline"]),
            "withdrawn": int(counted["decode_per_token"]["withdrawn"]),
            "context_tokens": dict(counted["decode_per_token"]["context_tokens"]),
        },
    }
    if analytic is not None:
        covers = analytic.get("covers", list(COMPONENTS))
        section["analytic"] = {v: {k: int(analytic[v][k]) for k in ("total", *covers)}
                               for v in VARIANTS}
        section["analytic"]["covers"] = list(covers)
        section["analytic"]["decode_per_token"] = {v: int(analytic["decode_per_token"][v])
                                                   for v in VARIANTS}
    if fvcore is not None:
        section["fvcore"] = dict(fvcore)
    return section
