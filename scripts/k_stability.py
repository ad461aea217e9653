"""How many calibration samples make K stable? Measured on a model and its calibration sets.

Calibrates once on every sample of the sets (the per-sample KL of each candidate layer), then, for each
sample size n per set, takes many seeded draws of n samples per set (exactly what `vtw calibrate
--samples n --seed s` takes) and reports, from the stored KL:

  * the K of each draw (the mean rule): how often a draw of n picks the K that every sample picks;
  * what one draw (seed 0) would print: its stability line (stratified bootstrap) and whether its
    interval at K straddles the threshold;
  * what `--samples auto` (rounds of --auto-step per set until the modal K's share is >= --auto-target)
    would stop at, over the same draw seeds: samples used and how often it lands on the all-samples K.

The KL of a sample does not depend on the other samples of its batch (up to float rounding), so the
draws reuse one calibration. Prints markdown (docs/calibration.md, "How many samples").

    python scripts/k_stability.py                          # bundled model, bundled synthetic sets
    python scripts/k_stability.py --model DIR --dataset photo_vqa --sizes 5,10,18
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
import torch

from vtwcli.calibration import CalibrationOptions, DatasetSelection, calibrate, layer_statistics
from vtwcli.datasets import draw_order, load_dataset, sample_dataset
from vtwcli.defaults import DEFAULT_THRESHOLD
from vtwcli.loading import load_model
from vtwcli.selection import (AutoOptions, RoundFigures, Rule, k_bootstrap, layer_choice, samples_auto, stability_line,
                              straddles)


def shares_text(counter: Counter, total: int) -> str:
    ranked = sorted(counter.items(), key=lambda item: -item[1])
    return ", ".join(f"{'none' if k is None else k}: {count / total:.0%}" for k, count in ranked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory or hub id (default: the bundled model)")
    parser.add_argument("--dataset", action="append", default=None, help="calibration set (repeatable; default: "
                        "the bundled synthetic sets)")
    parser.add_argument("--sizes", default="2,5,10,20,40", help="samples per set to measure (comma-separated)")
    parser.add_argument("--draws", type=int, default=100, help="seeded draws per sample size")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--auto-step", type=int, default=5)
    parser.add_argument("--auto-target", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.dataset or ["synthetic_color", "synthetic_count", "synthetic_position", "synthetic_shape"]

    started = time.perf_counter()
    loaded = load_model(args.model, device="cpu")
    sets = [load_dataset(name) for name in names]
    options = CalibrationOptions(threshold=args.threshold, evaluate=False, bootstrap_resamples=args.resamples)
    result = calibrate(loaded.model, loaded.processor, [DatasetSelection(d, list(d.samples), 0) for d in sets],
                       options)
    layers = result.layers
    kl_of = {(s["dataset"], s["id"]): s["kl"] for s in result.per_sample}
    everything = result.layer

    def rows(draw: list[list]) -> tuple[np.ndarray, list[str]]:
        kl = np.array([kl_of[(d.name, x.id)] for d, samples in zip(sets, draw) for x in samples])
        return kl, [d.name for d, samples in zip(sets, draw) for _ in samples]

    def mean_k(kl: np.ndarray) -> int | None:
        return layer_choice(Rule("mean"), [{"layer": layer, "kl_mean": float(kl[:, i].mean())}
                                           for i, layer in enumerate(layers)], args.threshold)

    def curve(kl: np.ndarray) -> list[dict]:
        return layer_statistics(kl, layers, resamples=args.resamples, seed=0)

    smallest = min(len(d.samples) for d in sets)
    sizes = [n for n in (int(v) for v in args.sizes.split(",")) if n <= smallest]
    print(f"model {args.model or 'bundled'}, sets {', '.join(names)}, threshold {args.threshold:g}; all "
          f"{sum(len(d.samples) for d in sets)} samples choose K = {everything}; {args.draws} seeded draws per "
          f"size, {args.resamples} bootstrap resamples\n")
    print("| samples per set (total) | K over the draws | draws picking K = "
          f"{everything} | seed 0: K, stability line | seed 0: interval at K straddles the threshold |")
    print("|---|---|---:|---|---|")
    for n in sizes:
        draws = 1 if n == smallest and all(len(d.samples) == n for d in sets) else args.draws
        picked = Counter()
        for seed in range(draws):
            kl, _ = rows([sample_dataset(d, n, seed) for d in sets])
            picked[mean_k(kl)] += 1
        kl, strata = rows([sample_dataset(d, n, 0) for d in sets])
        shares = k_bootstrap(kl, strata, layers, args.threshold, resamples=args.resamples, seed=0)
        per_layer = curve(kl)
        k0 = layer_choice(Rule("mean"), per_layer, args.threshold)
        print(f"| {n} ({n * len(sets)}) | {shares_text(picked, draws)} | {picked[everything] / draws:.0%} | "
              f"K = {k0}: {stability_line(shares)} | {'yes' if straddles(per_layer, k0, args.threshold) else 'no'} |")

    auto = AutoOptions(target=args.auto_target, step=args.auto_step)
    for share_only in (False, True):
        used, landed, stops = [], 0, Counter()
        for seed in range(args.draws):
            orders = [draw_order(d, seed) for d in sets]

            def measure(counts: list[int]) -> RoundFigures:
                kl, strata = rows([sample_dataset(d, c, seed) for d, c in zip(sets, counts)])
                shares = k_bootstrap(kl, strata, layers, args.threshold, resamples=args.resamples, seed=0)
                return RoundFigures(shares, not share_only and straddles(curve(kl), mean_k(kl), args.threshold))

            outcome = samples_auto([len(o) for o in orders], measure, auto)
            kl, _ = rows([sample_dataset(d, c, seed) for d, c in zip(sets, outcome.counts)])
            used.append(sum(outcome.counts))
            landed += mean_k(kl) == everything
            stops[outcome.stopped] += 1
        rule = ("the modal share alone (not what --samples auto does)" if share_only else
                "the modal share and a clear interval at K (--samples auto)")
        print(f"\n`--samples auto --auto-step {args.auto_step} --auto-target {args.auto_target:g}`, stopping on {rule}, "
              f"over {args.draws} draw seeds: stops at {int(np.median(used))} samples (median; {min(used)}.."
              f"{max(used)}), K = {everything} in {landed / args.draws:.0%} of them; stopped because "
              + ", ".join(f"{why} {count / args.draws:.0%}" for why, count in stops.most_common()))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
