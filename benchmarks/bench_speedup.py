"""Realized speedup of withdrawal versus its FLOPs ratio, measured side by side in one run (CPU by default).

Same model, same synthetic prompt (one image + --text-tokens text tokens, seeded), alternating baseline /
withdrawn runs (vtwcli.measure.latency). Prints the prefill, decode and end-to-end speedups (baseline
median / withdrawn median) next to the prefill FLOPs ratio (baseline / withdrawn, FlopCounterMode).
Target: prefill speedup <= FLOPs ratio + 0.10 (a speedup above the compute saved would mean the
measurement, not withdrawal, is doing the work).

    python benchmarks/bench_speedup.py [--model DIR | --shape small|tiny] [--layer K] [--min-runs 5]

Default model: the bundled demo model if it has been trained, else a randomly initialised "small"
LLaVA (CLIP 224px/14 -> 256 image tokens, 8 Llama layers of width 512), built here from a config.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vtwcli.measure.flops import PromptLayout, count_flops  # noqa: E402
from vtwcli.measure.latency import LatencyPlan, device_name, measure_latency  # noqa: E402
from vtwcli.withdrawal import num_decoder_layers  # noqa: E402

SHAPES = {
    # vision (hidden, layers, heads, image, patch), text (hidden, layers, heads, kv heads, intermediate, vocab)
    "tiny": ((32, 2, 4, 16, 4), (32, 4, 4, 2, 64, 64)),
    "small": ((384, 6, 6, 224, 14), (512, 8, 8, 8, 1376, 4096)),
    "medium": ((768, 12, 12, 336, 14), (1024, 16, 16, 16, 2816, 8192)),
}


def llava_config(shape: str):
    """A LLaVA-1.5-layout config: CLIP tower, feature layer -2, 'default' strategy, 2-layer GELU projector, Llama."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if shape == "7b":
        from vtwcli.loading import load_config

        return load_config(str(Path(__file__).resolve().parents[1] / "profiles" / "configs" / "llava-1.5-7b"))
    (v_hidden, v_layers, v_heads, image, patch), (hidden, layers, heads, kv, inter, vocab) = SHAPES[shape]
    vision = CLIPVisionConfig(hidden_size=v_hidden, intermediate_size=4 * v_hidden, num_hidden_layers=v_layers,
                              num_attention_heads=v_heads, image_size=image, patch_size=patch, projection_dim=v_hidden)
    text = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=3, projector_hidden_act="gelu",
                         vision_feature_select_strategy="default", vision_feature_layer=-2)
    config.architectures = ["LlavaForConditionalGeneration"]
    return config


def build_model(shape: str, *, device: str = "cpu", dtype=torch.float32, attn: str = "sdpa", seed: int = 0):
    """A randomly initialised LLaVA of ``shape``, built directly on ``device`` in ``dtype``, in eval mode."""
    from transformers import LlavaForConditionalGeneration

    config = llava_config(shape)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = config.text_config.pad_token_id or 0
    model.generation_config.eos_token_id = None  # random weights: never stop early
    return model.eval()


def load_or_build(model_dir: str | None, shape: str | None, attn: str = "sdpa"):
    """(model, description): --model DIR, else the bundled model if trained, else a built shape."""
    from vtwcli.loading import bundled_model_path, load_model

    if model_dir is None and shape is None and (bundled_model_path() / "config.json").is_file():
        model_dir = str(bundled_model_path())
    if model_dir is not None:
        loaded = load_model(model_dir, device="cpu", dtype="float32", attn=attn)
        loaded.model.generation_config.eos_token_id = None
        return loaded.model, f"{model_dir} (trained weights)"
    shape = shape or "small"
    return build_model(shape, attn=attn), f"random LLaVA, shape '{shape}'"


def synthetic_inputs(model, text_tokens: int, seed: int = 0, device=None, dtype=None) -> tuple[dict, PromptLayout]:
    layout = PromptLayout.for_config(model.config, text_tokens=text_tokens)
    param = next(model.parameters())
    inputs = {"input_ids": layout.input_ids(model.config, seed=seed).to(device or param.device),
              "pixel_values": layout.pixel_values(model.config, seed=seed, dtype=dtype or param.dtype,
                                                  device=device or param.device)}
    return inputs, layout


def machine() -> str:
    return f"{device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads, torch {torch.__version__}, " \
           f"{platform.system()}"


def timing_arguments(description: str) -> argparse.ArgumentParser:
    """The options every latency benchmark here shares: which model, prompt size and timing budget."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: bundled if trained, else --shape)")
    parser.add_argument("--shape", default=None, choices=sorted(SHAPES), help="build a random LLaVA of this shape")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--min-runs", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=5.0)
    parser.add_argument("--max-time", type=float, default=60.0, help="time budget of the timed pairs")
    parser.add_argument("--threads", type=int, default=2)
    return parser


def main() -> None:
    parser = timing_arguments(__doc__)
    parser.add_argument("--layer", type=int, default=None, help="K (default: half the decoder layers)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, description = load_or_build(args.model, args.shape)
    layers = num_decoder_layers(model)
    layer = args.layer or layers // 2
    inputs, layout = synthetic_inputs(model, args.text_tokens)
    counted = count_flops(model, layout, layer)
    flops_ratio = counted["baseline"]["total"] / counted["withdrawn"]["total"]
    latency = measure_latency(model, inputs, layer, new_tokens=args.new_tokens, threads=args.threads,
                              plan=LatencyPlan(warmup=args.warmup, min_runs=args.min_runs, min_time_s=args.min_time,
                                               max_time_s=max(args.min_time, args.max_time)),
                              flops_ratio=flops_ratio)
    decode_ratio = counted["decode_per_token"]["baseline"] / counted["decode_per_token"]["withdrawn"]

    print(f"machine: {machine()}")
    print(f"model: {description}; {layers} decoder layers; K = {layer}; prompt {layout.vision_tokens} vision + "
          f"{layout.text_tokens} text tokens; {args.new_tokens} new tokens; "
          f"{latency['baseline']['prefill_ms']['runs']} alternating runs per variant")
    print(f"{'':24}{'baseline ms':>14}{'withdrawn ms':>14}{'speedup':>10}{'FLOPs ratio':>13}")
    rows = (("prefill", "prefill_ms", "prefill", flops_ratio),
            ("decode / token", "decode_ms_per_token", "decode_per_token", decode_ratio),
            ("end to end", "end_to_end_ms", "end_to_end", None))
    for label, metric, speed, ratio in rows:
        base, new = latency["baseline"][metric]["median"], latency["withdrawn"][metric]["median"]
        print(f"{label:24}{base:14.2f}{new:14.2f}{latency['speedup'][speed]:10.3f}"
              + (f"{ratio:13.3f}" if ratio else f"{'':13}"))
    speedup = latency["speedup"]["prefill"]
    verdict = "PASS" if speedup <= flops_ratio + 0.10 else "FAIL"
    print(f"target: prefill speedup {speedup:.3f} <= FLOPs ratio {flops_ratio:.3f} + 0.10 -> {verdict}")


if __name__ == "__main__":
    main()
