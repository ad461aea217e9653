"""FLOPs: counted (real hooks, FlopCounterMode) vs the closed form vs the meta-device count vs fvcore."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_llava, tiny_llava_config
from transformers import LlavaForConditionalGeneration
from typer.testing import CliRunner

from vtwcli.cli import app
from vtwcli.errors import VtwError
from vtwcli.loading import load_config
from vtwcli.measure.flops import (COMPONENTS, PromptLayout, analytic_flops, count_flops, count_flops_meta,
                                  fvcore_flops, meta_model)

ROOT = Path(__file__).resolve().parents[1]
LLAVA_7B = ROOT / "profiles" / "configs" / "llava-1.5-7b"
KEYS = ("total", *COMPONENTS)


def assert_close_per_component(counted: dict, analytic: dict, rel: float = 1e-3) -> None:
    for variant in ("baseline", "withdrawn"):
        for key in KEYS:
            a, c = analytic[variant][key], counted[variant][key]
            assert abs(a - c) <= rel * max(c, 1), (variant, key, c, a)
    for variant in ("baseline", "withdrawn"):
        a, c = analytic["decode_per_token"][variant], counted["decode_per_token"][variant]
        assert abs(a - c) <= rel * c, ("decode", variant, c, a)
    assert counted["decode_per_token"]["context_tokens"] == analytic["decode_per_token"]["context_tokens"]


def variant_model(attn: str, *, feature_layer=-1, strategy="default", layers: int = 4) -> LlavaForConditionalGeneration:
    """Tiny LLaVA with GQA (4 heads, 2 kv heads); optionally LLaVA-1.5's feature layer -2 / 'full' features."""
    config = tiny_llava_config(layers, attn)
    config.vision_feature_layer = feature_layer
    config.vision_feature_select_strategy = strategy
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


@functools.lru_cache(maxsize=None)
def tiny(attn: str):
    return tiny_llava(4, attn)


@functools.lru_cache(maxsize=None)
def counted_tiny(attn: str, layer: int, text_tokens: int = 7) -> dict:
    model = tiny(attn)
    return count_flops(model, PromptLayout.for_config(model.config, text_tokens=text_tokens), layer)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("layer", [1, 2, 3, 4])
def test_counted_matches_analytic_per_component(attn, layer):
    model = tiny(attn)
    layout = PromptLayout.for_config(model.config, text_tokens=7)
    counted = counted_tiny(attn, layer)
    assert_close_per_component(counted, analytic_flops(model.config, layout, layer))
    # attention matmuls are in the count (CPU's fused SDPA kernel included): the language model's FLOPs exceed
    # its projections + MLP alone
    text = model.config.text_config
    n = layout.total
    no_attention = text.num_hidden_layers * 2 * n * text.hidden_size * (
        2 * text.hidden_size + 2 * text.hidden_size // 2 + 3 * text.intermediate_size)
    assert counted["baseline"]["language_model"] == no_attention + text.num_hidden_layers * 4 * n * n * text.hidden_size


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_feature_layer_minus_two_full_strategy_and_two_images(attn):
    model = variant_model(attn, feature_layer=-2, strategy="full")
    per_image = 17  # 4x4 patches + CLS ("full" keeps it)
    layout = PromptLayout.for_config(model.config, text_tokens=5, image_tokens=2 * per_image)
    assert layout.images == 2 and layout.vision_tokens == 34
    for layer in (1, 3):
        assert_close_per_component(count_flops(model, layout, layer), analytic_flops(model.config, layout, layer))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_meta_driver_equals_real_hooks(attn):
    """The meta path drives the components itself: it must count exactly what the real hooks run."""
    model = tiny(attn)
    layout = PromptLayout.for_config(model.config, text_tokens=7)
    meta = meta_model(tiny_llava_config(4, attn), attn=attn)
    assert next(meta.parameters()).device.type == "meta"
    assert count_flops_meta(meta, layout, 2) == counted_tiny(attn, 2)


def test_withdrawn_is_cheaper_and_reduction_matches():
    previous = None
    for layer in (1, 2, 3):
        counted = counted_tiny("sdpa", layer)
        base, new = counted["baseline"], counted["withdrawn"]
        assert new["total"] < base["total"] and new["language_model"] < base["language_model"]
        for key in ("vision_tower", "projector", "lm_head"):
            assert new[key] == base[key]  # withdrawal only touches the decoder layers >= K
        assert sum(base[k] for k in COMPONENTS) == base["total"]
        assert sum(new[k] for k in COMPONENTS) == new["total"]
        assert counted["decode_per_token"]["withdrawn"] < counted["decode_per_token"]["baseline"]
        if previous is not None:
            assert new["total"] > previous  # withdrawing later saves less
        previous = new["total"]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_fvcore_equals_counted(attn):
    model = tiny(attn)
    layout = PromptLayout.for_config(model.config, text_tokens=7)
    counted = counted_tiny(attn, 2)
    fv = fvcore_flops(model, layout, 2)
    assert fv["baseline_total"] == counted["baseline"]["total"]
    assert fv["withdrawn_total"] == counted["withdrawn"]["total"]
    assert "x2" in fv["note"] and "scaled_dot_product_attention" in fv["note"]


def test_fvcore_passes_kinds_to_the_withdrawal():
    """The fvcore cross-check withdraws the selected kinds like every other measurement (it once dropped them):
    LLaVA has image tokens only, so ("image",) counts what the default does and ("video",) is refused."""
    from vtwcli.errors import UnsupportedError

    model = tiny("sdpa")
    layout = PromptLayout.for_config(model.config, text_tokens=7)
    assert fvcore_flops(model, layout, 2, kinds=("image",)) == fvcore_flops(model, layout, 2)
    with pytest.raises(UnsupportedError, match="no vision token id"):
        fvcore_flops(model, layout, 2, kinds=("video",))
    assert not model._forward_pre_hooks  # the refused variant left no hook behind


def test_fvcore_without_the_sdpa_handle_misses_attention():
    """Why the handle exists: fvcore alone does not count SDPA (eager's matmuls it does count)."""
    from fvcore.nn import FlopCountAnalysis

    from vtwcli.measure.flops import _Prefill

    model = tiny("sdpa")
    layout = PromptLayout.for_config(model.config, text_tokens=7)
    plain = FlopCountAnalysis(_Prefill(model), (layout.input_ids(model.config), layout.pixel_values(model.config)))
    plain.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    assert 2 * plain.total() < counted_tiny("sdpa", 4)["baseline"]["total"]


# -- CLI, config only ------------------------------------------------------------------------------
def run_cli(args):
    result = CliRunner().invoke(app, args)
    return result


def test_cli_flops_only_on_config_only_dirs(tmp_path):
    tiny_dir = tmp_path / "tiny"
    config = tiny_llava_config(4)
    config.architectures = ["LlavaForConditionalGeneration"]
    config.save_pretrained(tiny_dir)
    assert sorted(p.name for p in tiny_dir.iterdir()) == ["config.json"]
    out = tmp_path / "tiny.yaml"
    result = run_cli(["profile", "--model", str(tiny_dir), "--flops-only", "--layer", "2", "--text-tokens", "7",
                      "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert set(printed) >= {"withdrawal", "flops"} and printed["withdrawal"] == {"layer": 2}

    from vtwcli.profile import read_profile_dict

    data = read_profile_dict(out)
    assert "latency" not in data and "memory" not in data
    flops = data["flops"]
    assert flops["convention"].startswith("FLOPs = 2 x multiply-accumulates")
    assert "meta" in flops["counter"]
    assert flops["tokens"] == {"vision": 16, "text": 7, "images": 1}
    layout = PromptLayout.for_config(config, text_tokens=7)
    expected = analytic_flops(config, layout, 2)
    assert flops["baseline"] == expected["baseline"] and flops["withdrawn"] == expected["withdrawn"]
    assert flops["reduction"] == pytest.approx(1 - flops["withdrawn"]["total"] / flops["baseline"]["total"])
    assert set(flops["decode_per_token"]) == {"baseline", "withdrawn", "context_tokens"}
    assert data["model"]["device"] == "meta" and data["model"]["num_layers"] == 4

    out7 = tmp_path / "7b.yaml"
    result = run_cli(["profile", "--model", str(LLAVA_7B), "--flops-only", "--layer", "16", "--output", str(out7)])
    assert result.exit_code == 0, result.output
    assert "576 vision tokens (1 image) + 64 text tokens" in " ".join(result.output.split())
    seven = read_profile_dict(out7)
    assert seven["flops"]["tokens"] == {"vision": 576, "text": 64, "images": 1}
    assert seven["withdrawal"] == {"layer": 16}
    assert 0.4 < seven["flops"]["reduction"] < 0.45
    # the meta count of the 7B shapes against the closed form, per component, prefill and decode
    config7 = load_config(str(LLAVA_7B))
    expected7 = analytic_flops(config7, PromptLayout.for_config(config7, text_tokens=64), 16)
    assert_close_per_component(seven["flops"], expected7)
    # the public rough figure: ~2 * 7e9 params * 640 tokens ~ 9 TFLOPs
    assert 8e12 < seven["flops"]["baseline"]["total"] < 1e13


def test_shipped_profiles_are_current():
    """profiles/llava-1.5-*-flops.yaml hold what the CLI computes today from the shipped configs."""
    from vtwcli.profile import read_profile_dict

    for name, layer in (("7b", 16), ("13b", 20)):
        data = read_profile_dict(ROOT / "profiles" / f"llava-1.5-{name}-flops.yaml")
        config = load_config(str(ROOT / "profiles" / "configs" / f"llava-1.5-{name}"))
        layout = PromptLayout.for_config(config, text_tokens=64)
        assert data["withdrawal"]["layer"] == layer
        expected = analytic_flops(config, layout, layer)
        assert data["flops"]["baseline"] == expected["baseline"]
        assert data["flops"]["withdrawn"] == expected["withdrawn"]


@pytest.mark.parametrize("args, message", [
    (["--layer", "9"], "out of range"),
    (["--layer", "0"], "out of range"),
    ([], "pass --layer K or --profile"),
])
def test_cli_errors_are_one_liners(tmp_path, args, message):
    config = tiny_llava_config(4)
    config.architectures = ["LlavaForConditionalGeneration"]
    config.save_pretrained(tmp_path)
    result = run_cli(["profile", "--model", str(tmp_path), "--flops-only", *args])
    assert isinstance(result.exception, VtwError), result.output
    assert message in str(result.exception) and "\n" not in str(result.exception)


def test_cli_profile_without_calibration_layer(tmp_path):
    from profile_fixtures import example_profile

    from vtwcli.profile import write_profile

    data = example_profile(layer=None)
    write_profile(data, tmp_path / "calib.yaml")
    result = run_cli(["profile", "--profile", str(tmp_path / "calib.yaml"), "--flops-only"])
    assert isinstance(result.exception, VtwError)
    assert "calibration.layer is null" in str(result.exception)
    del data["calibration"], data["evaluation"]
    write_profile(data, tmp_path / "nocalib.yaml")
    result = run_cli(["profile", "--profile", str(tmp_path / "nocalib.yaml"), "--flops-only"])
    assert isinstance(result.exception, VtwError)
    assert "no calibration" in str(result.exception)


@pytest.mark.parametrize("left", [True, False])
def test_counter_charges_a_triangular_solve_as_the_product_by_the_inverse(left):
    """torch's counter has no formula for aten.linalg_solve_triangular (Qwen3.5's chunked Gated DeltaNet solves two
    unit-triangular systems per chunk); vtwcli's counter charges A X = B (X A = B) with A n x n as the matmul
    A^-1 B (B A^-1): 2 x n x n x columns per batch entry, here 2 x 3 x (5 x 5 x 4). The matmul by the inverse
    counts the same under torch's own mm formula."""
    from torch.utils.flop_counter import FlopCounterMode

    from vtwcli.measure.counter import new_counter

    system = torch.eye(5).expand(2, 3, 5, 5) + torch.randn(2, 3, 5, 5).tril(-1)
    rhs = torch.randn(2, 3, 5, 4) if left else torch.randn(2, 3, 4, 5)
    counter = new_counter()
    with counter:
        torch.linalg.solve_triangular(system, rhs, upper=False, left=left, unitriangular=True)
    assert counter.get_total_flops() == 2 * 3 * 2 * 5 * 5 * 4
    inverse = torch.linalg.inv(system)
    plain = FlopCounterMode(display=False)
    with plain:
        _ = inverse @ rhs if left else rhs @ inverse
    assert plain.get_total_flops() == counter.get_total_flops()
