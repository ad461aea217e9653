"""The bundled demo model loads offline like any saved model, uses its image, and withdrawal at layer 1 breaks it."""

from __future__ import annotations

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from vtwcli import bundled_model_path, withdraw
from vtwcli.datasets import load_dataset, sample_dataset
from vtwcli.prompts import make_batch, score_answer

torch.set_num_threads(1)
SETS = ("synthetic_color", "synthetic_position")  # the tasks it answers (near) perfectly


def answers(model, processor, samples, layer=None):
    inputs = make_batch(processor, samples)
    handle = withdraw(model, layer=layer) if layer is not None else None
    try:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    finally:
        if handle is not None:
            handle.remove()
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_bundled_model_sees_the_image_and_withdrawal_at_layer_1_breaks_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoModelForImageTextToText.from_pretrained(bundled_model_path()).eval()
    processor = AutoProcessor.from_pretrained(bundled_model_path())
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert len(model.model.language_model.layers) >= 8
    samples = [s for name in SETS for s in sample_dataset(load_dataset(name), 12, seed=0)]
    full = [score_answer(a, s) for a, s in zip(answers(model, processor, samples), samples)]
    blind = [score_answer(a, s) for a, s in zip(answers(model, processor, samples, layer=1), samples)]
    assert sum(full) / len(full) >= 0.9
    assert sum(blind) / len(blind) <= 0.5  # 4 answers per task: chance is 25%
