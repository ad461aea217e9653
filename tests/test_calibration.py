"""The shared-prefix KL equals the KL of a plain withdrawn forward, for every candidate K."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import image_prompt, left_padded_batch, pixel_values, tiny_llava

from vtwcli import withdraw
from vtwcli.calibration import first_layer_under, kl_divergence, layer_statistics, shared_prefix_kl

LAYERS = 6


def independent_kl(p_logits, q_logits):
    p = torch.softmax(p_logits.double(), -1)
    return (p * (torch.log(p) - torch.log_softmax(q_logits.double(), -1))).sum(-1)


def inputs():
    rows = [image_prompt([1, 7, 8, 9], 1, [9, 10, 11, 12, 13]), image_prompt([1, 7], 2, [13, 14]),
            image_prompt([1], 1, [15])]
    ids, mask = left_padded_batch(rows)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixel_values(4), "position_ids": positions}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_shared_prefix_kl_equals_plain_withdrawn_forward(attn):
    model = tiny_llava(LAYERS, attn)
    batch = inputs()
    layers = list(range(1, LAYERS + 1))
    for direction in ("withdrawn_to_full", "full_to_withdrawn"):
        fast = shared_prefix_kl(model, batch, layers, direction=direction).kl
        with torch.no_grad():
            full = model(**batch).logits[:, -1]
            for column, k in enumerate(layers):
                with withdraw(model, layer=k):
                    withdrawn = model(**batch).logits[:, -1]
                pair = (withdrawn, full) if direction == "withdrawn_to_full" else (full, withdrawn)
                expected = independent_kl(*pair).float()
                torch.testing.assert_close(fast[:, column], expected, atol=1e-5, rtol=0)
        assert fast[:, :-1].min() > 0  # random model: withdrawal changes the distributions
        assert torch.equal(fast[:, -1], torch.zeros(3))


def test_teacher_forced_scores_every_answer_position():
    model = tiny_llava(LAYERS, "sdpa")
    batch = inputs()
    score = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    score[:, -2:] = True
    fast = shared_prefix_kl(model, batch, [2, 4], score_mask=score).kl
    with torch.no_grad():
        full = model(**batch).logits[:, -2:]
        for column, k in enumerate([2, 4]):
            with withdraw(model, layer=k):
                withdrawn = model(**batch).logits[:, -2:]
            expected = independent_kl(withdrawn, full).mean(-1).float()
            torch.testing.assert_close(fast[:, column], expected, atol=1e-5, rtol=0)


def test_kl_is_float32_and_matches_definition_in_half_precision():
    p = torch.randn(4, 50).to(torch.bfloat16)
    q = torch.randn(4, 50).to(torch.bfloat16)
    got = kl_divergence(p, q)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), independent_kl(p.float(), q.float()), atol=1e-6, rtol=1e-5)


def test_layer_statistics_and_choice():
    kl = np.array([[0.5, 0.01, 0.001], [0.3, 0.02, 0.002], [0.4, 0.0, 0.003], [0.2, 0.03, 0.0]])
    stats = layer_statistics(kl, [1, 2, 3], resamples=2000, seed=0)
    assert [s["layer"] for s in stats] == [1, 2, 3]
    np.testing.assert_allclose([s["kl_mean"] for s in stats], kl.mean(0))
    np.testing.assert_allclose([s["kl_max"] for s in stats], kl.max(0))
    np.testing.assert_allclose([s["kl_p90"] for s in stats], np.percentile(kl, 90, axis=0))
    for s in stats:
        assert s["kl_ci_low"] <= s["kl_mean"] <= s["kl_ci_high"]
    assert stats == layer_statistics(kl, [1, 2, 3], resamples=2000, seed=0)  # seeded
    assert first_layer_under(stats, 0.003) == 3
    assert first_layer_under(stats, 0.02) == 2
    assert first_layer_under(stats, 0.0001) is None
