"""Calibration cost: shared-prefix search over every K versus one full forward and the naive search.

Prints, side by side in one run (same model, same samples, same batches):
  (a) calibrating every candidate K with the shared prefix (vtwcli.shared_prefix.shared_prefix_kl),
  (b) one full forward over the same samples,
  (c) the naive search: one full forward plus one withdrawn forward per candidate K (what the
      reference implementation pays),
with wall times (median of alternating repeats) and FLOPs counted by torch's FlopCounterMode.
Targets: (a)/(b) <= 3 and (c)/(a) >= 5.

    python benchmarks/bench_calibration.py [--model DIR] [--samples 20] [--repeats 5]
    python benchmarks/bench_calibration.py --shape small    # random LLaVA-1.5 layout, 256 image tokens

The ratio (c)/(a) grows with the share of vision tokens in the prompt and with the depth: the naive search
re-runs the vision tower and every layer below K on every token once per K. The bundled demo model is
tiny and shallow with 16 image tokens, so `--shape` adds a random model with a real LLaVA-1.5 layout.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from vtwcli.shared_prefix import shared_prefix_kl
from vtwcli.datasets import default_datasets, load_dataset, sample_dataset
from vtwcli.loading import load_model
from vtwcli.profile import environment_section
from vtwcli.prompts import make_batch
from vtwcli.withdrawal import num_decoder_layers, withdraw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory or hub id (default: the bundled model)")
    parser.add_argument("--samples", type=int, default=20, help="samples per dataset")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", default=None, help="random LLaVA-layout model of bench_speedup.py's SHAPES "
                        "with synthetic prompts, instead of --model")
    parser.add_argument("--text-tokens", type=int, default=24, help="with --shape: text tokens after the image")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.shape:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_speedup import build_model, synthetic_inputs

        model = build_model(args.shape)
        model_name = f"random LLaVA, shape '{args.shape}'"
        prompts = [synthetic_inputs(model, args.text_tokens, seed=i)[0] for i in range(args.samples)]
        batches = [{key: torch.cat([p[key] for p in prompts[i:i + args.batch_size]]) for key in prompts[0]}
                   for i in range(0, len(prompts), args.batch_size)]
        for inputs in batches:
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        count = len(prompts)
    else:
        loaded = load_model(args.model, device="cpu", dtype="float32")
        model, processor, model_name = loaded.model, loaded.processor, loaded.name_or_path
        samples = []
        for dataset_name in default_datasets(loaded.is_bundled):
            data = load_dataset(dataset_name)
            samples += sample_dataset(data, min(args.samples, len(data.samples)), seed=0)
        batches = [dict(make_batch(processor, samples[i:i + args.batch_size]))
                   for i in range(0, len(samples), args.batch_size)]
        count = len(samples)
    num_layers = num_decoder_layers(model)
    layers = list(range(1, num_layers))
    for inputs in batches:  # generate()'s positions, as calibration uses them
        inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp_min(0)

    @torch.no_grad()
    def shared():
        for inputs in batches:
            shared_prefix_kl(model, inputs, layers)

    @torch.no_grad()
    def full():
        for inputs in batches:
            model(**inputs, logits_to_keep=1)

    @torch.no_grad()
    def naive():
        for inputs in batches:
            model(**inputs, logits_to_keep=1)
            for k in layers:
                with withdraw(model, layer=k):
                    model(**inputs, logits_to_keep=1)

    variants = {"(a) shared-prefix, all K": shared, "(b) one full forward": full, "(c) naive, one forward per K": naive}
    flops = {}
    for name, run in variants.items():
        with FlopCounterMode(display=False) as counter:
            run()
        flops[name] = counter.get_total_flops()
        run()  # warm-up
    times = {name: [] for name in variants}
    for _ in range(args.repeats):  # alternate, so drift on a shared machine hits every variant alike
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}

    a, b, c = variants
    vision = int(torch.isin(batches[0]["input_ids"][0], torch.tensor([model.config.image_token_id])).sum())
    print(f"model: {model_name} ({num_layers} decoder layers, {vision} image tokens in the first prompt of "
          f"{batches[0]['input_ids'].shape[1]}), {count} samples, "
          f"batch {args.batch_size}, {len(layers)} candidate layers, {args.threads} threads")
    print(f"machine: {environment_section('cpu')['device_name']}, {platform.system()}, torch {torch.__version__}")
    print(f"{'variant':34} {'median s':>9} {'GFLOPs':>10}")
    for name in variants:
        print(f"{name:34} {median[name]:9.3f} {flops[name] / 1e9:10.3f}")
    print(f"(a)/(b) time {median[a] / median[b]:.2f}  FLOPs {flops[a] / flops[b]:.2f}   (target <= 3)")
    print(f"(c)/(a) time {median[c] / median[a]:.2f}  FLOPs {flops[c] / flops[a]:.2f}   (target >= 5)")


if __name__ == "__main__":
    main()
