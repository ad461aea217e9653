"""The lmms-eval plugin: ``lmms-eval --model vtw --model_args base=<model>,profile=<profile.yaml>,<its args>``.

lmms-eval 0.7 reads the Python entry-point group ``lmms_eval.models`` at start-up; vtwcli's pyproject
points it at :func:`manifests`, which registers the model name ``vtw`` (a simple and a chat class, in
:mod:`vtwcli.lmms_eval_plugin.model`). That model builds the base lmms-eval model, finds the Hugging Face
model object it holds (:func:`find_hf_model`) and withdraws its vision tokens with
:func:`vtwcli.apply_profile` for the whole run.

This module imports nothing from lmms-eval at import time (vtwcli works without lmms-eval); only
:func:`manifests`, called by lmms-eval itself, and the ``model`` submodule do.
"""

from __future__ import annotations

from vtwcli.errors import VtwError

__all__ = ["MODEL_NAME", "manifests", "split_model_args", "find_hf_model", "apply_to_wrapper"]

MODEL_NAME = "vtw"
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def manifests():
    """The entry-point payload: lmms-eval's ``ModelManifest`` for ``vtw`` (called by lmms-eval at start-up)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    module = f"{__name__}.model"
    return [ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{module}.Vtw", chat_class_path=f"{module}.VtwChat")]


def split_model_args(kwargs: dict) -> tuple[str, str, bool, dict]:
    """(base model name, profile path, strict, the base model's own args) from the vtw model's keyword args.

    lmms-eval parses ``--model_args`` into keyword arguments (numbers and booleans already converted).
    """
    rest = dict(kwargs)
    base, profile, strict = rest.pop("base", None), rest.pop("profile", None), rest.pop("strict", True)
    if not base or not isinstance(base, str):
        raise VtwError("lmms-eval --model vtw needs base=<lmms-eval model name> in --model_args (e.g. "
                       "base=llava_hf,profile=my.yaml,pretrained=llava-hf/llava-1.5-7b-hf)")
    if base == MODEL_NAME:
        raise VtwError("lmms-eval --model vtw: base=vtw would wrap itself; give the model to wrap (e.g. base=llava_hf)")
    if not profile:
        raise VtwError(f"lmms-eval --model vtw (base={base}) needs profile=<profile.yaml> in --model_args; the "
                       "profile comes from vtw calibrate / vtw profile")
    if isinstance(strict, str):
        if strict.lower() not in _TRUE | _FALSE:
            raise VtwError(f"lmms-eval --model vtw: strict={strict!r} is not a boolean; use strict=True or "
                           "strict=False")
        strict = strict.lower() in _TRUE
    return base, str(profile), bool(strict), rest


# Where lmms-eval's Hugging Face wrappers keep the model: a `model` property that unwraps accelerate, or `_model`.
_MODEL_ATTRIBUTES = ("model", "_model")


def _unwrap(module):
    """The model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    for attribute in ("module", "_orig_mod"):
        inner = getattr(module, attribute, None)
        if inner is not None and hasattr(inner, "config"):
            return _unwrap(inner)
    return module


def find_hf_model(wrapper):
    """The Hugging Face model object an lmms-eval model wrapper holds (``wrapper.model`` or ``wrapper._model``)."""
    import torch

    for attribute in _MODEL_ATTRIBUTES:
        try:
            candidate = getattr(wrapper, attribute, None)
        except Exception:  # noqa: BLE001 - a property that fails (e.g. accelerate not set up) is just not it
            candidate = None
        if isinstance(candidate, torch.nn.Module):
            candidate = _unwrap(candidate)
            if hasattr(candidate, "config"):
                return candidate
    raise VtwError(f"lmms-eval model {type(wrapper).__name__} holds no Hugging Face model in .model or ._model; "
                   "the vtw plugin wraps lmms-eval's transformers-based models (e.g. llava_hf, qwen2_5_vl)")


def apply_to_wrapper(wrapper, profile_path, *, strict: bool = True):
    """Apply the profile at ``profile_path`` to the model inside ``wrapper``; return (handle, profile, model)."""
    from vtwcli.profile import apply_profile, load_profile

    profile = load_profile(profile_path)
    model = find_hf_model(wrapper)
    handle = apply_profile(model, profile, strict=strict)
    return handle, profile, model
