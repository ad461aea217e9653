"""device_map on every family: decoder layers placed by accelerate (half of them offloaded to disk) give the
same withdrawn logits and greedy generations as the same model in one piece.

The device map is derived from where the family's adapter says the decoder layers are, so a new family is
covered as soon as arch_models.py builds it.
"""

from __future__ import annotations

import tempfile

import pytest
import torch
from arch_models import FAMILIES, family_batch

from vtwcli import withdraw
from vtwcli.adapters import adapter_for

LAYERS = 4
LAYER = 2  # exact on every tiny family (Gemma 4's KV sharing allows 1, 2 and 4)


def layers_path(model) -> str:
    layers = adapter_for(model).decoder_layers(model)
    return next(name for name, module in model.named_modules() if module is layers)


def offloading_map(model) -> dict[str, str]:
    """Every module beside the path to the decoder layers on the CPU, the first half of the layers on the CPU
    and the second half offloaded to disk (accelerate moves their weights in at call time)."""
    path = layers_path(model)
    mapping, module, prefix = {}, model, ""
    for part in path.split("."):
        for name, _ in module.named_children():
            if name != part:
                mapping[prefix + name] = "cpu"
        for name, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            mapping[prefix + name] = "cpu"  # tensors held by the module itself (LLaVA-NeXT's image_newline)
        module, prefix = getattr(module, part), prefix + part + "."
    for index in range(len(module)):
        mapping[f"{path}.{index}"] = "cpu" if index < len(module) // 2 else "disk"
    return mapping


@pytest.mark.parametrize("name", list(FAMILIES))
def test_dispatched_model_with_offloaded_layers_is_exact(name):
    from accelerate import dispatch_model

    family = FAMILIES[name]
    batch, _ = family_batch(family)
    plain = family.build(LAYERS, "sdpa", 0)
    with torch.no_grad():
        with withdraw(plain, layer=LAYER):
            expected = plain(**batch).logits
            expected_generate = plain.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        dispatched = family.build(LAYERS, "sdpa", 0)
        with tempfile.TemporaryDirectory() as offload:
            dispatch_model(dispatched, device_map=offloading_map(dispatched), main_device="cpu",
                           offload_dir=offload)
            last = adapter_for(dispatched).decoder_layers(dispatched)[LAYERS - 1]
            assert hasattr(last, "_hf_hook")  # really placed by accelerate
            with withdraw(dispatched, layer=LAYER):
                got = dispatched(**batch).logits
                got_generate = dispatched.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert torch.equal(got_generate, expected_generate)
