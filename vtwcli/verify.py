"""`vtw verify`: prove that withdrawal is exact on the user's own model, its processor and its transformers.

The exactness suite of the tests runs on tiny random models; this runs the same kind of checks on the
real thing (weights, processor, chat template, installed transformers), on a few prompts:

* **vision tokens** — the adapter's vision token ids are the model's own (vtwcli/model_vision.py, read off the
  model, not the adapter): every position they mark holds a language-model input that is not its token's
  embedding (the model put something from the vision side there), every token id at which the first layer's
  input changes with the pixels (the same prompt run again with other pixel values) is one of them, and each
  of them is found there. Kept markers whose inputs come from the vision
  side but are the same for any image (Ovis2's visual indicators) are text-side tokens, as to withdrawal.
  transformers refuses a forward whose placeholder count differs from its feature count, so this also checks
  the processor's count per image.
* **removed at K** — under ``withdraw(model, K)`` layer K receives, per row, exactly the full model's hidden
  states at the non-vision, non-padding positions, and nothing else (the vision tokens are gone).
* **K = L** — withdrawal at the last layer gives bit-identical logits.
* **reference at K** — each row's last-token logits of the batched, left-padded withdrawn forward equal an
  independent reference of that row alone. Attention-only models: an ordinary forward that keeps the
  vision tokens but masks them out of every attention of layers >= K through explicit 4-D masks (the model's
  own mask minus the vision columns; sliding windows and chunks counted in kept tokens, as withdrawal counts
  them). Otherwise (recurrent or convolutional layers): layers >= K re-run by hand on the kept tokens.
  The vision positions of the reference are the model's vision token ids (above), not the adapter's.
* **generate at K** — cached greedy ``generate()`` of the withdrawn model equals ``generate(use_cache=False)``
  token for token, logits within the tolerance.

Tolerance: ``max |logit difference| <= RELATIVE_TOLERANCE[dtype] * max(1, max |reference logit|)``:
1e-4 in float32, 1e-2 in float16, 5e-2 in bfloat16 (the two sides run the same math in a different
order: different sequence lengths and padding change the kernels' reduction order).

No I/O and no printing here: the CLI (cli/verify_cmd.py) renders the result and writes the profile section.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from vtwcli.adapters import adapter_for
from vtwcli.errors import VtwError, error_text
from vtwcli.model_vision import language_model_of, model_vision, vision_problem
from vtwcli.profile.model import VerificationCheck, record_dict
from vtwcli.withdrawal import exact_layers, withdraw

__all__ = ["RELATIVE_TOLERANCE", "ATTENTION_TYPES", "VerifyCheck", "VerifyResult", "default_layers", "layers_to_check",
           "tolerance", "verify", "verification_section", "weights_sha256", "language_model_of"]

RELATIVE_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
# Layer types the masked reference handles: attention that an explicit 4-D mask fully describes.
ATTENTION_TYPES = ("full_attention", "sliding_attention", "chunked_attention")
DEFAULT_NEW_TOKENS = 4


# One check: ``name`` says which (vision tokens, removed, bit-identical, reference, generate). The profile's
# record (verification.checks[]), so the result serialises straight into the profile.
VerifyCheck = VerificationCheck


@dataclass
class VerifyResult:
    layers: list[int]
    num_layers: int
    dtype: torch.dtype
    reference: str  # "attention masks" or "per-row recompute"
    samples: int
    new_tokens: int
    checks: list[VerifyCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[VerifyCheck]:
        return [check for check in self.checks if not check.passed]

    def failure_message(self) -> str | None:
        if self.passed:
            return None
        first = self.failed[0]
        more = f" (and {len(self.failed) - 1} more failed check(s))" if len(self.failed) > 1 else ""
        return f"withdrawal is not exact on this model: {first.name}: {first.detail}{more}"


def default_layers(num_layers: int) -> list[int]:
    """A few K spread over the depth: 1, L/4, L/2 and L-1 (distinct, in 1..L-1)."""
    picks = {1, num_layers // 4, num_layers // 2, num_layers - 1}
    return sorted(k for k in picks if 1 <= k < num_layers)


def layers_to_check(model: nn.Module, layers=None) -> list[int]:
    """The K verify withdraws at: ``layers`` (each in 1..L-1 and exact on this model, else the error says why),
    or the :func:`default_layers` at which withdrawal can be exact (KV sharing rules some out)."""
    adapter = adapter_for(model)
    num_layers = len(adapter.decoder_layers(model))
    if not layers:
        exact = exact_layers(adapter, adapter.text_config(model.config), num_layers)
        return [k for k in default_layers(num_layers) if k in exact]
    for k in sorted(set(layers)):
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < num_layers:
            raise VtwError(f"--layer {k}: verify withdraws at K in 1..{num_layers - 1} (K = {num_layers}, no "
                           "withdrawal, is always checked)")
        withdraw(model, layer=k).remove()  # a K that cannot be exact here is refused up front, in withdraw's words
    return sorted(set(layers))


def tolerance(dtype: torch.dtype, reference: torch.Tensor) -> float:
    """The stated tolerance for logits of ``reference``'s magnitude computed in ``dtype``."""
    relative = RELATIVE_TOLERANCE.get(dtype, RELATIVE_TOLERANCE[torch.bfloat16])
    return relative * max(1.0, float(reference.detach().abs().max()))


# ----------------------------------------------------------------------------------------------- helpers

def _last_logits(output) -> torch.Tensor:
    return output.logits[:, -1].float()


class _Capture:
    """Forward pre-hooks that record, in one forward, the hidden states chosen layers receive."""

    def __init__(self, layers: nn.ModuleList, record_layers=()):
        self.hidden: dict[int, torch.Tensor] = {}
        self._hooks = [layers[index].register_forward_pre_hook(self._layer(index), with_kwargs=True)
                       for index in record_layers]

    def _layer(self, index):
        def hook(module, args, kwargs):
            self.hidden[index] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    def remove(self):
        for hook in self._hooks:
            hook.remove()


def _allowed(mask, length: int, device) -> torch.Tensor:
    """(S, S) bool "query may attend key" from the mask a layer received (None = plain causal)."""
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    if mask is None:
        return causal
    if not isinstance(mask, torch.Tensor):
        raise VtwError(f"a decoder layer received an attention mask of type {type(mask).__name__}; verify "
                       "needs sdpa or eager attention (--attn)")
    square = mask.reshape(-1, *mask.shape[-2:])[0][-length:, -length:]
    if square.dtype == torch.bool:
        return square.to(device)
    return (square > torch.finfo(square.dtype).min / 2).to(device)


def _withdrawn_pattern(allowed: torch.Tensor, keep: torch.Tensor, kind: str, text_config) -> torch.Tensor:
    """What the kept tokens may attend in a withdrawn layer of type ``kind``, on the full-length sequence:
    the model's own pattern without the vision columns; past windows and chunks counted in kept tokens (as
    the short sequence of withdrawal counts them). Every row attends at least itself (vision rows only that)."""
    length = keep.shape[0]
    rank = keep.long().cumsum(0) - 1
    past = torch.ones(length, length, dtype=torch.bool, device=keep.device).tril()
    if kind == "sliding_attention":
        window = int(text_config.sliding_window)
        pattern = (allowed & ~past) | (past & (rank[:, None] - rank[None, :] < window))
    elif kind == "chunked_attention":
        chunk = int(text_config.attention_chunk_size)
        pattern = (allowed & ~past) | (past & (rank[:, None] // chunk == rank[None, :] // chunk))
    else:
        pattern = allowed
    pattern = pattern & keep[None, :]
    return pattern | torch.eye(length, dtype=torch.bool, device=keep.device)


def _float_mask(pattern: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    mask = torch.zeros(pattern.shape, dtype=dtype, device=pattern.device)
    return mask.masked_fill(~pattern, torch.finfo(dtype).min)[None, None]


def _model_kept(model: nn.Module, row: dict, vision_ids: list[int] | None) -> torch.Tensor:
    """(S,) bool: the positions of one row that do not hold the model's vision token ids (``vision_ids``, or read
    off the model on this row: model_vision), whatever the adapter says."""
    if vision_ids is None:
        adapter = adapter_for(model)
        vision_ids = model_vision(model, adapter.decoder_layers(model), row, adapter.pixel_input_keys).ids
    ids = row["input_ids"][0]
    return ~torch.isin(ids, torch.tensor(vision_ids, dtype=ids.dtype, device=ids.device))


@torch.no_grad()
def masked_reference_logits(model: nn.Module, row: dict, layer: int, vision_ids: list[int] | None = None
                            ) -> torch.Tensor:
    """Last-token logits (float32) of one unpadded row with its vision tokens (the model's: see
    :func:`_model_kept`) masked out of every attention of layers >= ``layer``: an ordinary forward, no gather,
    no position change, only explicit 4-D masks."""
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    text_config = adapter.text_config(model.config)
    types = adapter.layer_types(text_config, len(layers))
    kept = _model_kept(model, row, vision_ids)

    def mask_layer(index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            keep = kept.to(hidden.device)
            allowed = _allowed(kwargs.get("attention_mask"), hidden.shape[1], hidden.device)
            pattern = _withdrawn_pattern(allowed, keep, types[index], text_config)
            return args, {**kwargs, "attention_mask": _float_mask(pattern, hidden.dtype)}
        return hook

    hooks = [layers[i].register_forward_pre_hook(mask_layer(i), with_kwargs=True) for i in range(layer, len(layers))]
    try:
        return _last_logits(model(**row, use_cache=False))[0]
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def recompute_reference_logits(model: nn.Module, row: dict, layer: int, vision_ids: list[int] | None = None
                               ) -> torch.Tensor:
    """Last-token logits (float32) of one unpadded row, layers >= ``layer`` re-run by hand on the kept tokens
    (the tokens without the model's vision token ids: see :func:`_model_kept`).

    One ordinary forward (no cache) records what every layer receives; then layers ``layer``..L-1 run again on
    the kept hidden states, each given its recorded arguments cut to the kept positions: the rotary tables
    and position ids at the kept original positions, every other per-token tensor (B, S, ...) at the kept
    slots, and for attention layers the model's own mask restricted to the kept tokens (windows in kept tokens).
    """
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    text_config = adapter.text_config(model.config)
    types = adapter.layer_types(text_config, len(layers))
    seen: dict[int, tuple] = {}
    keep = _model_kept(model, row, vision_ids)

    def record(index):
        def hook(module, args, kwargs):
            seen[index] = (args, dict(kwargs))
        return hook

    hooks = [layers[i].register_forward_pre_hook(record(i), with_kwargs=True) for i in range(layer, len(layers))]
    try:
        model(**row, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()

    args, _ = seen[layer]
    hidden = args[0] if args else seen[layer][1]["hidden_states"]
    length = hidden.shape[1]
    kept = keep.to(hidden.device).nonzero().squeeze(1)

    def cut(value, dim: int):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[dim] == length:
            return value.index_select(dim if dim >= 0 else value.dim() + dim, kept.to(value.device))
        if isinstance(value, (tuple, list)):
            return type(value)(cut(v, dim) for v in value)
        return value

    hidden = hidden[:, kept]
    for index in range(layer, len(layers)):
        args, kwargs = seen[index]
        kwargs = dict(kwargs)
        for key, value in kwargs.items():
            if key == "position_ids":
                kwargs[key] = cut(value, adapter.position_ids_seq_dim)
            elif key == "position_embeddings":
                kwargs[key] = cut(value, adapter.position_embeddings_seq_dim)
            elif key != "attention_mask":
                kwargs[key] = cut(value, 1)
        if types[index] in ATTENTION_TYPES:
            allowed = _allowed(kwargs.get("attention_mask"), length, hidden.device)[kept][:, kept]
            pattern = _withdrawn_pattern(allowed, torch.ones(len(kept), dtype=torch.bool, device=hidden.device),
                                         types[index], text_config)
            kwargs["attention_mask"] = _float_mask(pattern, hidden.dtype)
        elif isinstance(kwargs.get("attention_mask"), torch.Tensor) and kwargs["attention_mask"].dim() == 2:
            kwargs["attention_mask"] = kwargs["attention_mask"][:, kept]
        rest = tuple(cut(value, 1) for value in args[1:])
        if args:
            output = layers[index](hidden.to(args[0].device), *rest, **kwargs)
        else:
            output = layers[index](hidden_states=hidden, **{k: v for k, v in kwargs.items() if k != "hidden_states"})
        hidden = output[0] if isinstance(output, tuple) else output
    norm = adapter.final_norm(model)
    return model.get_output_embeddings()(norm(hidden))[0, -1].float()


def reference_kind(model: nn.Module) -> str:
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    types = adapter.layer_types(adapter.text_config(model.config), len(layers))
    return "attention masks" if all(kind in ATTENTION_TYPES for kind in types) else "per-row recompute"


# --------------------------------------------------------------------------------------------- verify

def _inputs(processor, samples, device) -> dict:
    """The processor's batch for inference (some processors, e.g. PaliGemma's, add training ``labels``)."""
    from vtwcli.prompts import make_batch

    batch = dict(make_batch(processor, samples).to(device))
    batch.pop("labels", None)
    return batch


def _describe_counts(counts: list[int], media: list[tuple[int, int]]) -> str:
    """Vision tokens per prompt, and per image where a prompt holds only images of one count each."""
    parts = []
    for count, (images, videos) in zip(counts, media):
        per = f" ({count // images} per image)" if images and not videos and count % images == 0 else ""
        parts.append(f"{count}{per}")
    return "per prompt " + ", ".join(parts)


@torch.no_grad()
def verify(model: nn.Module, processor, samples: list, *, layers: list[int] | None = None,
           new_tokens: int = DEFAULT_NEW_TOKENS, batch_size: int = 4,
           progress: Callable[[int], None] | None = None) -> VerifyResult:
    """Run every check of the module docstring on ``samples`` (datasets.Sample) at ``layers`` (default:
    :func:`default_layers`). Returns the checks; raises VtwError only for bad arguments."""
    from vtwcli.prompts import check_prompts_fit, refuse_videos_without_video_input

    adapter = adapter_for(model)
    decoder_layers = adapter.decoder_layers(model)
    num_layers = len(decoder_layers)
    layers = layers_to_check(model, layers)
    if new_tokens < 1:
        raise VtwError(f"--new-tokens {new_tokens}: generate at least 1 token")
    if not samples:
        raise VtwError("verify needs at least one sample; pass --dataset and --samples N >= 1")
    refuse_videos_without_video_input(adapter, model.config, samples, "verify")
    check_prompts_fit(processor, model.config, adapter, [samples], batch_size=batch_size)  # each prompt on its own
    dtype = next(model.parameters()).dtype
    result = VerifyResult(layers=layers, num_layers=num_layers, dtype=dtype, reference=reference_kind(model),
                          samples=len(samples), new_tokens=new_tokens)
    reference = masked_reference_logits if result.reference == "attention masks" else recompute_reference_logits
    vision_ids = adapter.vision_token_ids(model.config)
    device = model.device
    tick = progress or (lambda n: None)

    found: list[int] = []
    media: list[tuple[int, int]] = []
    worst: dict = {}  # (check, layer) -> (max diff, tolerance, failure detail or None)

    def note(name: str, layer, diff: float, tol: float, problem: str | None = None):
        if problem is None and diff > tol:
            problem = f"max |logit difference| {diff:.3g} > tolerance {tol:.3g}"
        old_diff, old_tol, old_problem = worst.get((name, layer), (0.0, 0.0, None))
        worst[(name, layer)] = (max(old_diff, diff), max(old_tol, tol), old_problem or problem)

    removal_problems: dict[int, str] = {}
    effect: dict[int, float] = {}  # K -> max |full - withdrawn logit|: what withdrawal changes (not vacuous)
    vision_fault: str | None = None
    constant_kept: set[int] = set()  # kept ids whose inputs come from the vision side, the same for any pixels
    deep_rows = 0  # prompts whose features do not reach the first layer: located by the inserted inputs
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batch = _inputs(processor, chunk, device)
        ids = batch["input_ids"]
        adapter.check_prompt_fits(model.config, ids.shape[1], extra=new_tokens, what="the verify prompt",
                                  why=f" + {new_tokens} new tokens (--new-tokens)", fix="lower --new-tokens")
        padding = batch.get("attention_mask")
        real = padding.bool() if padding is not None else torch.ones_like(ids, dtype=torch.bool)
        capture = _Capture(decoder_layers, layers)
        try:
            full = _last_logits(model(**batch))
        finally:
            capture.remove()
        try:
            located = model_vision(model, decoder_layers, batch, adapter.pixel_input_keys)
            inserted, features, model_ids = located.inserted & real, located.features & real, located.ids
            deep_rows += int(located.deep.sum())
        except VtwError as error:
            vision_fault = vision_fault or str(error)
            inserted, features, model_ids = torch.zeros_like(real), torch.zeros_like(real), []
        marked = torch.isin(ids, torch.tensor(vision_ids, device=ids.device)) & real
        vision = torch.isin(ids, torch.tensor(model_ids, dtype=ids.dtype, device=ids.device)) & real
        constant_kept.update(int(i) for i in ids[inserted & ~vision].tolist())
        for row, sample in enumerate(chunk):
            found.append(int(marked[row].sum()))
            media.append((len(sample.images), len(sample.videos)))
            vision_fault = vision_fault or vision_problem(sample.where(), vision_ids, ids[row], marked[row],
                                                          inserted[row], features[row])
        tick(1)

        with withdraw(model, layer=num_layers):
            same = _last_logits(model(**batch))
        if not torch.equal(same, full):
            note("K = L bit-identical", num_layers, float((same - full).abs().max()), 0.0,
                 "withdrawal at the last layer changed the logits")
        else:
            note("K = L bit-identical", num_layers, 0.0, 0.0)
        tick(1)

        keep = ~vision & real
        rows = [_inputs(processor, [sample], device) for sample in chunk]
        for k in layers:
            handle = withdraw(model, layer=k)
            entering: dict = {}
            hook = decoder_layers[k].register_forward_pre_hook(
                lambda module, args, kwargs: entering.__setitem__("hidden", (args[0] if args else
                                                                             kwargs["hidden_states"]).detach()),
                with_kwargs=True)
            try:
                withdrawn = _last_logits(model(**batch))
            except Exception as error:  # noqa: BLE001 - a failure of the withdrawn forward is what verify reports
                problem = f"the withdrawn forward raised {error_text(error)}"
                note(f"reference at K={k}", k, float("inf"), 0.0, problem)
                removal_problems.setdefault(k, problem)
                continue
            finally:
                hook.remove()
                handle.remove()
            problem = _removal_problem(entering["hidden"], capture.hidden[k], keep, chunk, k)
            if problem is not None:
                removal_problems.setdefault(k, problem)
            for row, single in enumerate(rows):
                try:
                    expected = reference(model, single, k, model_ids)
                except Exception as error:  # noqa: BLE001
                    note(f"reference at K={k}", k, float("inf"), 0.0, f"the reference raised {error_text(error)}")
                    continue
                got = withdrawn[row].to(expected.device)
                effect[k] = max(effect.get(k, 0.0), float((full[row].to(expected.device) - got).abs().max()))
                note(f"reference at K={k}", k, float((got - expected).abs().max()), tolerance(dtype, expected))
            tick(1)
            note(f"generate at K={k}", k, *_generate_check(model, batch, k, new_tokens, vision_ids, dtype))
            tick(1)

    notes = [f"kept: ids {sorted(constant_kept)}, vision-side inputs the same for any pixels"] if constant_kept else []
    notes += [f"{deep_rows} prompt(s) by the inserted inputs: no pixel change reaches layer 0"] if deep_rows else []
    result.checks.append(VerifyCheck(
        "vision tokens", vision_fault is None,
        vision_fault or f"ids {vision_ids} = where the model put per-image vision features"
        + (f" ({'; '.join(notes)})" if notes else "") + "; " + _describe_counts(found, media)))
    details = {
        "K = L bit-identical": "withdraw(model, layer=L): bit-identical logits",
        "reference": f"batched withdrawn logits = {result.reference} reference per row",
        "generate": f"cached greedy generate() = use_cache=False, {new_tokens} token(s) each",
    }

    def from_worst(name: str, layer: int, ok_detail: str) -> VerifyCheck:
        diff, tol, problem = worst[(name, layer)]
        return VerifyCheck(name, problem is None, problem or ok_detail, layer=layer,
                           max_abs_diff=None if diff == float("inf") else diff, tolerance=tol)

    result.checks.append(from_worst("K = L bit-identical", num_layers, details["K = L bit-identical"]))
    for k in layers:
        result.checks.append(VerifyCheck(f"removed at K={k}", k not in removal_problems,
                                         removal_problems.get(k, f"layer {k} gets exactly the full model's non-vision tokens"), layer=k))
        result.checks.append(from_worst(f"reference at K={k}", k, details["reference"]
                                        + f" (withdrawal moves them by {effect.get(k, 0.0):.3g})"))
        if (f"generate at K={k}", k) in worst:
            result.checks.append(from_worst(f"generate at K={k}", k, details["generate"]))
    return result


def _removal_problem(entering: torch.Tensor, full: torch.Tensor, keep: torch.Tensor, chunk: list, layer: int):
    """Why what entered layer K under withdrawal is not exactly each row's kept tokens of the full forward
    (right-aligned, filler before them), or None."""
    counts = keep.sum(1)
    if entering.shape[1] != int(counts.max()):
        return (f"layer {layer} received {entering.shape[1]} tokens per row, expected {int(counts.max())} (the "
                "longest row's non-vision tokens)")
    for row in range(len(chunk)):
        n = int(counts[row])
        expected = full[row, keep[row].to(full.device)]
        if not torch.equal(entering[row, entering.shape[1] - n:].to(expected.device), expected):
            return f"{chunk[row].where()}: the tokens entering layer {layer} are not the full model's non-vision tokens"
    return None


def _generate_check(model, batch: dict, layer: int, new_tokens: int, vision_ids: list[int], dtype):
    """(max logit difference, tolerance, problem or None) of cached vs uncached greedy generate() at K."""
    suppress = sorted(set(vision_ids) | set(getattr(model.generation_config, "suppress_tokens", None) or []))
    kwargs = dict(batch, max_new_tokens=new_tokens, do_sample=False, num_beams=1, output_logits=True,
                  return_dict_in_generate=True, suppress_tokens=suppress)
    try:
        with withdraw(model, layer=layer):
            cached = model.generate(**kwargs)
            uncached = model.generate(**kwargs, use_cache=False)
    except Exception as error:  # noqa: BLE001 - reported as the check's failure
        return float("inf"), 0.0, f"generate() raised {error_text(error)}"
    diff, tol = 0.0, 0.0
    for got, expected in zip(cached.logits, uncached.logits):
        expected = expected.float()
        finite = expected.isfinite() & got.isfinite()
        diff = max(diff, float((got.float() - expected)[finite].abs().max()) if finite.any() else 0.0)
        tol = max(tol, tolerance(dtype, expected[finite]))
    if not torch.equal(cached.sequences, uncached.sequences):
        return diff, tol, "cached generate() chose other tokens than generate(use_cache=False)"
    return diff, tol, None


# --------------------------------------------------------------------------------------------- profile

def weights_sha256(model: nn.Module) -> str | None:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes) in state_dict order; None where
    weights are not materialised here (meta / offloaded)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if tensor.is_meta:
            return None
        digest.update(f"{name}:{str(tensor.dtype)}:{tuple(tensor.shape)}".encode())
        data = tensor.detach().contiguous().cpu()
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def verification_section(result: VerifyResult, model: nn.Module, data: list[dict]) -> dict:
    """The profile's ``verification`` block (docs/profile-schema.md)."""
    import transformers

    from vtwcli import __version__
    from vtwcli.loading import config_sha256

    return {
        "passed": result.passed,
        "vtwcli": __version__,
        "transformers": transformers.__version__,
        "torch": str(torch.__version__),
        "config_sha256": config_sha256(model.config),
        "weights_sha256": weights_sha256(model),
        "dtype": str(result.dtype).removeprefix("torch."),
        "reference": result.reference,
        "relative_tolerance": RELATIVE_TOLERANCE.get(result.dtype, RELATIVE_TOLERANCE[torch.bfloat16]),
        "layers": list(result.layers),
        "new_tokens": result.new_tokens,
        "data": data,
        "checks": [record_dict(check) for check in result.checks],
    }
