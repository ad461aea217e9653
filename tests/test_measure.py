"""Latency statistics, exact KV-cache bytes, memory figures and the full `vtw profile` run on a saved tiny LLaVA."""

from __future__ import annotations

import functools
import json
import statistics

import pytest
import torch
from tiny_models import save_tiny_llava, tiny_llava
from typer.testing import CliRunner

from vtwcli import withdraw
from vtwcli.cli import app
from vtwcli.measure.flops import PromptLayout
from vtwcli.measure.latency import summarize
from vtwcli.measure.memory import kv_cache_bytes, measure_memory, peak_rss_bytes, reset_peak_rss


def test_summarize_against_statistics():
    samples = [12.0, 10.5, 11.25, 30.0, 9.75, 10.0, 10.75, 11.0, 12.5, 10.25, 9.5]
    stats = summarize(samples)
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    assert stats["median"] == pytest.approx(statistics.median(samples))
    assert stats["p10"] == pytest.approx(deciles[0]) and stats["p90"] == pytest.approx(deciles[8])
    assert stats["stdev"] == pytest.approx(statistics.stdev(samples), abs=1e-4)
    assert stats["runs"] == len(samples)
    assert stats["p10"] <= stats["median"] <= stats["p90"]
    assert summarize([4.0]) == {"median": 4.0, "p10": 4.0, "p90": 4.0, "stdev": 0.0, "runs": 1}
    with pytest.raises(ValueError):
        summarize([])


@functools.lru_cache(maxsize=None)
def tiny() -> torch.nn.Module:
    return tiny_llava(4, "sdpa")


def expected_kv_bytes(config, *, layer: int, total: int, kept: int, batch: int, dtype=torch.float32) -> int:
    """Independent count: layers < K hold every token, layers >= K the kept ones; k and v each."""
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    per_token = 2 * text.num_key_value_heads * head_dim * torch.tensor([], dtype=dtype).element_size() * batch
    return per_token * (layer * total + (text.num_hidden_layers - layer) * kept)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("layer", [1, 3, 4])
def test_kv_cache_bytes_with_withdrawal(layer, batch):
    model = tiny()
    layout = PromptLayout.for_config(model.config, text_tokens=6)
    ids = layout.input_ids(model.config).repeat(batch, 1)
    pixels = layout.pixel_values(model.config).repeat(batch, 1, 1, 1)
    with torch.no_grad(), withdraw(model, layer=layer):
        out = model(input_ids=ids, pixel_values=pixels, use_cache=True, logits_to_keep=1)
    got = kv_cache_bytes(out.cache if hasattr(out, "cache") else out.past_key_values)
    kept = layout.text_tokens if layer < 4 else layout.total
    assert got == expected_kv_bytes(model.config, layer=layer, total=layout.total, kept=kept, batch=batch)


def test_measure_memory_section():
    model = tiny()
    layout = PromptLayout.for_config(model.config, text_tokens=6)
    inputs = {"input_ids": layout.input_ids(model.config), "pixel_values": layout.pixel_values(model.config)}
    section = measure_memory(model, inputs, 2, new_tokens=3)
    full = expected_kv_bytes(model.config, layer=4, total=layout.total, kept=layout.total, batch=1)
    withdrawn = expected_kv_bytes(model.config, layer=2, total=layout.total, kept=layout.text_tokens, batch=1)
    assert section["baseline"]["kv_cache_bytes"] == full
    assert section["withdrawn"]["kv_cache_bytes"] == withdrawn
    assert section["kv_cache_reduction"] == pytest.approx(1 - withdrawn / full)
    for variant in ("baseline", "withdrawn"):
        assert section[variant]["peak_rss_bytes"] > 10 * 2 ** 20
        assert section[variant]["cuda_peak_allocated_bytes"] is None


def test_peak_rss_reset_sees_a_later_smaller_peak():
    if not reset_peak_rss():
        pytest.skip("the RSS high-water mark cannot be reset on this OS")
    block = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB resident
    block += 1
    high = peak_rss_bytes()
    del block
    reset_peak_rss()
    assert peak_rss_bytes() < high - 32 * 2 ** 20


def test_cli_profile_on_saved_tiny_llava(tmp_path):
    from vtwcli.profile import read_profile_dict, write_profile

    model_dir = save_tiny_llava(tmp_path / "model")
    out = tmp_path / "prof.yaml"
    result = CliRunner().invoke(app, ["profile", "--model", model_dir, "--layer", "2", "--text-tokens", "6",
                                      "--new-tokens", "3", "--warmup", "0", "--min-runs", "2", "--min-time", "0", "--max-time", "0",
                                      "--threads", "1", "--device", "cpu", "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    data = read_profile_dict(out)
    for key in ("withdrawal", "flops", "latency", "memory"):
        assert data[key] == printed[key]
    latency = data["latency"]
    assert latency["threads"] == 1 and latency["new_tokens"] == 3 and latency["device"] == "cpu"
    for variant in ("baseline", "withdrawn"):
        for metric in ("prefill_ms", "decode_ms_per_token", "end_to_end_ms"):
            stats = latency[variant][metric]
            assert stats["runs"] >= 2 and stats["p10"] <= stats["median"] <= stats["p90"]
    # pairs: the speedup is the median of the pairs' ratios; the 95% interval needs 6 pairs, 2 give none
    assert latency["pairs"] == latency["baseline"]["prefill_ms"]["runs"] == latency["withdrawn"]["prefill_ms"]["runs"]
    interval = latency["speedup_interval"]["prefill"]
    assert interval["low"] is None and interval["p10"] <= latency["speedup"]["prefill"] <= interval["p90"]
    assert latency["noise"]["noisy"] and "too few for a 95% interval" in latency["noise"]["reasons"][0]
    assert latency["noise"]["cpus"] >= 1 and latency["noise"]["max_time_s"] == 0
    assert latency["flops_ratio"] == pytest.approx(data["flops"]["baseline"]["total"] / data["flops"]["withdrawn"]["total"])
    assert data["flops"]["counter"] == "torch.utils.flop_counter.FlopCounterMode"
    assert data["flops"]["analytic"]["baseline"] == data["flops"]["baseline"]
    assert data["memory"]["kv_cache_reduction"] > 0
    assert data["model"]["device"] == "cpu" and data["model"]["num_layers"] == 4

    # --profile: K from calibration.layer, the calibration kept, written beside the input
    calibration = dict(data)
    for key in ("withdrawal", "flops", "latency", "memory"):
        calibration.pop(key)
    calibration["calibration"] = {"criterion": "last_token", "direction": "withdrawn_to_full", "threshold": 0.003,
                                  "min_layer": 1, "layer": 3,
                                  "per_layer": [{"layer": k, "kl_mean": 1.0 / k ** 3, "kl_max": 2.0 / k ** 3, "kl_p90": 1.5 / k ** 3,
                                                "kl_ci_low": 0.9 / k ** 3, "kl_ci_high": 1.1 / k ** 3}
                                               for k in range(1, 5)]}
    calib = write_profile(calibration, tmp_path / "calib.yaml")
    result = CliRunner().invoke(app, ["profile", "--profile", str(calib), "--flops-only"])
    assert result.exit_code == 0, result.output
    extended = read_profile_dict(tmp_path / "calib.profile.yaml")
    assert extended["withdrawal"] == {"layer": 3}
    assert extended["calibration"] == calibration["calibration"]
    assert extended["model"] == data["model"]  # the calibrated model's section is kept
    assert "calib.profile.yaml" in " ".join(result.output.split())
    # in place only with --force
    result = CliRunner().invoke(app, ["profile", "--profile", str(calib), "--flops-only", "--force"])
    assert result.exit_code == 0, result.output
    assert read_profile_dict(calib)["withdrawal"] == {"layer": 3}


def test_variants_run_baseline_then_withdrawn_and_remove_the_hooks():
    """variants(): the baseline runs the plain model, the withdrawn variant equals withdraw(model, layer)
    (compared to an independent run of it), and the hooks are gone afterwards, also after an error."""
    from vtwcli.measure.runs import variants

    model = tiny_llava(4, "sdpa")
    layout = PromptLayout.for_config(model.config, text_tokens=5)
    inputs = {"input_ids": layout.input_ids(model.config), "pixel_values": layout.pixel_values(model.config)}
    with torch.no_grad():
        plain = model(**inputs).logits[:, -1]
        with withdraw(model, layer=2):
            reference = model(**inputs).logits[:, -1]
        seen = {}
        for name, context in variants(model, 2):
            with context:
                seen[name] = model(**inputs).logits[:, -1]
    assert list(seen) == ["baseline", "withdrawn"]
    assert torch.equal(seen["baseline"], plain) and torch.equal(seen["withdrawn"], reference)
    assert not torch.equal(plain, reference)  # the variants differ, so the comparison above means something
    assert not model._forward_pre_hooks
    with pytest.raises(RuntimeError, match="boom"):
        for name, context in variants(model, 2):
            with context:
                if name == "withdrawn":
                    raise RuntimeError("boom")
    layers = model.model.language_model.layers
    assert not model._forward_pre_hooks and all(not layer._forward_pre_hooks for layer in layers)


def test_trackers_return_the_profiles_dataclasses():
    """One tracker per quantity: LatencyTracker records only tracked runs and summarises them as the
    profile's TimingStats (checked against statistics on its own samples); MemoryTracker returns the
    profile's MemoryRun with the exact KV bytes of the variant it ran under."""
    from vtwcli.measure.latency import LatencyTracker
    from vtwcli.measure.memory import MemoryTracker
    from vtwcli.measure.runs import variant
    from vtwcli.profile import MemoryRun, TimingStats

    model = tiny()
    layout = PromptLayout.for_config(model.config, text_tokens=6)
    inputs = {"input_ids": layout.input_ids(model.config), "pixel_values": layout.pixel_values(model.config)}
    tracker = LatencyTracker(model, inputs, 3, torch.device("cpu"))
    tracker.track(record=False)
    assert tracker.runs == 0
    tracker.track()
    tracker.track()
    assert tracker.runs == 2
    result = tracker.result()
    assert list(result) == ["prefill_ms", "decode_ms_per_token", "end_to_end_ms"]
    for metric, stats in result.items():
        values = tracker.samples[metric]
        assert isinstance(stats, TimingStats) and stats.runs == 2
        assert stats.median == pytest.approx(statistics.median(values), abs=1e-4)
        assert stats.p10 == pytest.approx(min(values) + 0.1 * (max(values) - min(values)), abs=1e-4)
    with variant(model, "withdrawn", 2):
        run = MemoryTracker(model, inputs, 3, torch.device("cpu")).track()
    assert isinstance(run, MemoryRun) and run.cuda_peak_allocated_bytes is None
    assert run.kv_cache_bytes == expected_kv_bytes(model.config, layer=2, total=layout.total, kept=layout.text_tokens,
                                                   batch=1)
