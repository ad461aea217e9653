"""Prefill and decode of a LLaVA-1.5-7B-shaped model with and without withdrawal at K=16, on a GPU.

The model is randomly initialised from profiles/configs/llava-1.5-7b (the public shapes: CLIP
ViT-L/14-336 -> 576 image tokens, 32 Llama layers of width 4096) directly on the device in bf16: no
download, and FLOPs/latency do not depend on the weights' values. Runs alternate baseline / withdrawn
(vtwcli.measure.latency: CUDA events, synchronised); FLOPs come from the meta-device count, KV-cache
bytes from the cache tensors, CUDA peaks from torch.cuda.max_memory_*.

    python benchmarks/bench_gpu_llava7b.py                     # 7B shapes, bf16, cuda (needs ~16 GB)
    python benchmarks/bench_gpu_llava7b.py --shape small       # a small shape: runs on CPU in seconds-minutes

With --shape small (or no CUDA) it runs on CPU in float32 with K = half the layers, so the script is
exercised without a GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_speedup import build_model, synthetic_inputs  # noqa: E402

from vtwcli.measure.flops import count_flops_meta, meta_model  # noqa: E402
from vtwcli.measure.latency import LatencyPlan, device_name, measure_latency  # noqa: E402
from vtwcli.measure.memory import measure_memory  # noqa: E402
from vtwcli.withdrawal import num_decoder_layers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="7b", choices=["7b", "small", "tiny", "medium"])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on cuda, float32 on cpu), bfloat16, float32")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--layer", type=int, default=None, help="K (default 16 for 7b, half the layers otherwise)")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--min-runs", type=int, default=10)
    parser.add_argument("--min-time", type=float, default=10.0)
    parser.add_argument("--max-time", type=float, default=60.0, help="time budget of the timed pairs")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU path)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.shape == "7b" and device.type != "cuda":
        print("no CUDA device: the 7B shape needs a GPU; use --shape small for the CPU path", file=sys.stderr)
        sys.exit(2)
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "bfloat16": torch.bfloat16,
             "float32": torch.float32}[args.dtype]
    model = build_model(args.shape, device=str(device), dtype=dtype, attn=args.attn)
    layers = num_decoder_layers(model)
    layer = args.layer or (16 if args.shape == "7b" else layers // 2)
    inputs, layout = synthetic_inputs(model, args.text_tokens)
    flops = count_flops_meta(meta_model(model.config.__class__.from_dict(model.config.to_dict()), attn=args.attn),
                             layout, layer)
    ratio = flops["baseline"]["total"] / flops["withdrawn"]["total"]
    latency = measure_latency(model, inputs, layer, new_tokens=args.new_tokens, flops_ratio=ratio,
                              plan=LatencyPlan(warmup=args.warmup, min_runs=args.min_runs, min_time_s=args.min_time,
                                               max_time_s=max(args.min_time, args.max_time)))
    memory = measure_memory(model, inputs, layer, new_tokens=args.new_tokens)

    print(f"device: {device_name(device)} ({device}), {dtype}, attn {args.attn}, torch {torch.__version__}")
    print(f"model: random LLaVA shape '{args.shape}', {layers} layers, K = {layer}; prompt {layout.vision_tokens} "
          f"vision + {layout.text_tokens} text tokens; {args.new_tokens} new tokens; "
          f"{latency['baseline']['prefill_ms']['runs']} alternating runs per variant")
    print(f"{'':18}{'baseline ms':>14}{'withdrawn ms':>14}{'speedup':>10}")
    for label, metric, speed in (("prefill", "prefill_ms", "prefill"),
                                 ("decode / token", "decode_ms_per_token", "decode_per_token"),
                                 ("end to end", "end_to_end_ms", "end_to_end")):
        b, w = latency["baseline"][metric], latency["withdrawn"][metric]
        print(f"{label:18}{b['median']:14.2f}{w['median']:14.2f}{latency['speedup'][speed]:10.3f}"
              f"   (p10..p90 {b['p10']:.2f}..{b['p90']:.2f} / {w['p10']:.2f}..{w['p90']:.2f})")
    print(f"prefill FLOPs: {flops['baseline']['total'] / 1e12:.3f} -> {flops['withdrawn']['total'] / 1e12:.3f} TFLOPs "
          f"(ratio {ratio:.3f}); decode/token {flops['decode_per_token']['baseline'] / 1e9:.2f} -> "
          f"{flops['decode_per_token']['withdrawn'] / 1e9:.2f} GFLOPs")
    kv_b, kv_w = memory["baseline"]["kv_cache_bytes"], memory["withdrawn"]["kv_cache_bytes"]
    print(f"KV cache after prefill: {kv_b / 2 ** 20:.1f} -> {kv_w / 2 ** 20:.1f} MiB "
          f"({memory['kv_cache_reduction']:.1%} less)")
    if device.type == "cuda":
        print(f"CUDA peak allocated: {memory['baseline']['cuda_peak_allocated_bytes'] / 2 ** 30:.2f} -> "
              f"{memory['withdrawn']['cuda_peak_allocated_bytes'] / 2 ** 30:.2f} GiB")


if __name__ == "__main__":
    main()
