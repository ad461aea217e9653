"""A complete, internally consistent example profile (every documented section), for tests."""

from __future__ import annotations

import copy

SHA_MODEL = "a" * 64
SHA_DATA = "0123456789abcdef" * 4

# kl_mean per candidate layer 1..7 (K = L = 8 withdraws nothing); the first <= THRESHOLD (0.003) is layer 5
KL_MEANS = [1.2, 0.4, 0.05, 0.01, 0.002, 0.004, 0.0005]
THRESHOLD = 0.003
LAYER = 5


def _per_layer(means):
    rows = []
    for layer, mean in enumerate(means, start=1):
        rows.append({"layer": layer, "kl_mean": mean, "kl_max": mean * 3 + 0.001, "kl_p90": mean * 2,
                     "kl_ci_low": mean * 0.8, "kl_ci_high": mean * 1.25})
    return rows


def _stats(median: float) -> dict:
    return {"median": median, "p10": median * 0.9, "p90": median * 1.1, "stdev": median * 0.05, "runs": 5}


def example_profile(*, layer: int | None = LAYER) -> dict:
    """A valid profile dict that passes `vtw check` (a deep copy every call)."""
    baseline = {"total": 1_000_000, "vision_tower": 200_000, "projector": 50_000, "language_model": 700_000,
                "lm_head": 50_000}
    withdrawn = {"total": 600_000, "vision_tower": 200_000, "projector": 50_000, "language_model": 300_000,
                 "lm_head": 50_000}
    lat_base = {"prefill_ms": _stats(40.0), "decode_ms_per_token": _stats(10.0), "end_to_end_ms": _stats(120.0)}
    lat_with = {"prefill_ms": _stats(25.0), "decode_ms_per_token": _stats(8.0), "end_to_end_ms": _stats(90.0)}
    profile = {
        "schema_version": 1,
        "created_at": "2026-11-26T07:00:00+00:00",
        "tool": {"name": "vtwcli", "command": "vtw calibrate --model bundled"},
        "model": {
            "name_or_path": "bundled",
            "architecture": "LlavaForConditionalGeneration",
            "num_layers": 8,
            "dtype": "float32",
            "device": "cpu",
            "attn_implementation": "sdpa",
            "config_sha256": SHA_MODEL,
        },
        "data": [
            {"name": "synthetic_color", "path": "bundled:synthetic_color", "sha256": SHA_DATA, "samples": 3,
             "seed": 0, "sample_ids": ["color-0001", "color-0002", "color-0003"]},
        ],
        "calibration": {
            "criterion": "last_token",
            "direction": "withdrawn_to_full",
            "threshold": THRESHOLD,
            "min_layer": 1,
            "layer": layer,
            "bootstrap": {"resamples": 1000, "seed": 0, "confidence": 0.95},
            "per_layer": _per_layer(KL_MEANS),
            "per_dataset": [
                {"name": "synthetic_color", "layer": 5,
                 "per_layer": [{"layer": i + 1, "kl_mean": m} for i, m in enumerate(KL_MEANS)]},
            ],
            "per_sample": [
                {"dataset": "synthetic_color", "id": f"color-000{i}", "kl": list(KL_MEANS)} for i in (1, 2, 3)
            ],
            "cost": {"full_forward_equivalents": 1.6, "seconds": 12.3},
            "diagnose": [{"layer": 0, "system": 0.5, "vision": 0.3, "text": 0.2}],
        },
        "evaluation": {"samples": 80, "baseline": {"accuracy": 0.95}, "withdrawn": {"accuracy": 0.94, "layer": layer}},
        "withdrawal": {"layer": layer if layer is not None else LAYER},
        "flops": {
            "convention": "FLOPs = 2 x multiply-accumulates",
            "counter": "torch.utils.flop_counter.FlopCounterMode",
            "tokens": {"vision": 576, "text": 64},
            "baseline": baseline,
            "withdrawn": withdrawn,
            "reduction": 0.4,
            "decode_per_token": {"baseline": 9000, "withdrawn": 6000,
                                 "context_tokens": {"baseline": 640, "withdrawn": 64}},
            "analytic": {"baseline": dict(baseline), "withdrawn": dict(withdrawn)},
            "fvcore": {"baseline_total": 990_000, "withdrawn_total": 590_000, "note": "fvcore counts 1 MAC as 1"},
        },
        "latency": {
            "device": "cpu",
            "device_name": "Test CPU",
            "threads": 2,
            "new_tokens": 8,
            "baseline": lat_base,
            "withdrawn": lat_with,
            "speedup": {"prefill": 40.0 / 25.0, "decode_per_token": 10.0 / 8.0, "end_to_end": 120.0 / 90.0},
            "flops_ratio": 1_000_000 / 600_000,
        },
        "memory": {
            "baseline": {"peak_rss_bytes": 1_000_000_000, "kv_cache_bytes": 4_000_000,
                         "cuda_peak_allocated_bytes": None, "cuda_peak_reserved_bytes": None},
            "withdrawn": {"peak_rss_bytes": 900_000_000, "kv_cache_bytes": 1_000_000,
                          "cuda_peak_allocated_bytes": None, "cuda_peak_reserved_bytes": None},
            "kv_cache_reduction": 0.75,
        },
        "environment": {"vtwcli": "0.1.0", "python": "3.11.7", "torch": "2.13.0", "transformers": "5.24.0",
                        "platform": "Linux-x86_64", "device_name": "Test CPU"},
    }
    if layer is None:  # a strict threshold nothing meets
        profile["calibration"]["threshold"] = 0.00001
        profile["calibration"]["per_dataset"][0]["layer"] = None
        profile["evaluation"]["withdrawn"]["accuracy"] = None
        del profile["withdrawal"]
    return copy.deepcopy(profile)
