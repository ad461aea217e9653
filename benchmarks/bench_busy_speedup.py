"""Can `vtw profile`'s speedup be trusted on a busy machine? Two runs of `vtw profile`, every core busy.

A random LLaVA-1.5-layout model (CLIP 336px/14 -> 576 image tokens, small widths so a prefill takes about
0.1 s on a quiet core yet is dominated by the image tokens) is saved with a processor; while BUSY processes spin
on every core (started here, stopped at the end, each bounded by a deadline), `vtw profile --layer K` runs
twice as a user runs it. Printed, as ratios:

* agreement: run 1's prefill speedup / run 2's (target: within 10%, i.e. 0.90..1.10);
* each run's prefill speedup / the FLOPs ratio (target: 0.85..1.15; far above it is noise too).

    python benchmarks/bench_busy_speedup.py [--busy N] [--max-time S] [--threads T] [--layer K]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

IMAGE, PATCH = 336, 14  # LLaVA-1.5: (336 / 14)^2 = 576 image tokens


def save_model(directory: Path, layers: int) -> None:
    """A random LLaVA-1.5-layout model + processor: vision 64 wide x 2 layers, Llama 128 wide x ``layers``."""
    import torch
    from tiny_models import tiny_processor
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                              image_size=IMAGE, patch_size=PATCH, projection_dim=64)
    text = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=512, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048, pad_token_id=0,
                       bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=3, projector_hidden_act="gelu",
                         vision_feature_select_strategy="default", vision_feature_layer=-2)
    config.architectures = ["LlavaForConditionalGeneration"]
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = None  # random weights: never stop early
    model.save_pretrained(directory)
    processor = tiny_processor()
    processor.image_processor.size = {"shortest_edge": IMAGE}
    processor.image_processor.crop_size = {"height": IMAGE, "width": IMAGE}
    processor.patch_size = PATCH
    processor.save_pretrained(directory)


BUSY = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def start_busy(count: int, seconds: float) -> list[subprocess.Popen]:
    """``count`` processes spinning a core each, each ending by itself after ``seconds`` at most."""
    return [subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=seconds)]) for _ in range(count)]


def profile_once(model: Path, output: Path, args) -> dict:
    command = [sys.executable, "-c", "from vtwcli.cli import main; main()", "profile", "--model", str(model),
               "--layer", str(args.layer), "--new-tokens", str(args.new_tokens), "--max-time", str(args.max_time),
               "--threads", str(args.threads), "--device", "cpu", "--output", str(output), "--force", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"vtw profile failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy processes (default: one a core)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--layer", type=int, default=4, help="K (default: half the layers)")
    parser.add_argument("--max-time", type=float, default=60.0, help="vtw profile --max-time of each run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        model = Path(work) / "model"
        save_model(model, args.layers)
        load_before = os.getloadavg()[0]
        busy = start_busy(args.busy, seconds=2 * (args.max_time + 120))
        try:
            time.sleep(1.0)
            runs = [profile_once(model, Path(work) / f"run{i}.yaml", args) for i in (1, 2)]
        finally:
            for process in busy:
                process.terminate()
            for process in busy:
                process.wait()
    flops_ratio = runs[0]["latency"]["flops_ratio"]
    speedups = [run["latency"]["speedup"]["prefill"] for run in runs]
    tokens = runs[0]["flops"]["tokens"]
    print(f"model: random LLaVA-1.5 layout, {tokens['vision']} image + {tokens['text']} text tokens, "
          f"{args.layers} layers, K = {args.layer}; {args.threads} thread(s) per run; {args.busy} busy processes; "
          f"load average before {load_before:.2f}")
    for i, run in enumerate(runs, start=1):
        latency, interval = run["latency"], run["latency"]["speedup_interval"]["prefill"]
        noise = latency["noise"]
        ci = "-" if interval["low"] is None else f"{interval['low']:.3f}..{interval['high']:.3f}"
        print(f"run {i}: prefill speedup {latency['speedup']['prefill']:.3f} (95% CI {ci}), {latency['pairs']} pairs "
              f"in {noise['seconds']:.1f} s, load {noise['load_start']}->{noise['load_end']}, "
              f"{'NOISY' if noise['noisy'] else 'usable'}; baseline prefill median "
              f"{latency['baseline']['prefill_ms']['median']:.1f} ms")
    agreement = speedups[0] / speedups[1]
    print(f"FLOPs ratio (prefill): {flops_ratio:.3f}")
    ok_agree = 0.90 <= agreement <= 1.10
    print(f"agreement run 1 / run 2: {agreement:.3f} (target 0.90..1.10) -> {'PASS' if ok_agree else 'FAIL'}")
    for i, speedup in enumerate(speedups, start=1):
        share = speedup / flops_ratio
        print(f"run {i} speedup / FLOPs ratio: {share:.3f} (target 0.85..1.15) -> "
              f"{'PASS' if 0.85 <= share <= 1.15 else 'FAIL'}")


if __name__ == "__main__":
    main()
