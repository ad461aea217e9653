"""An independent recomputation of the stratified bootstrap distribution of K, for the tests."""

from __future__ import annotations

import numpy as np


def reference_k_distribution(kl, datasets, layers, threshold, resamples, seed):
    """The documented seed semantics, written out plainly: per resample, per dataset (first-appearance
    order) draw n_d row positions with rng.integers(0, n_d, n_d); pool the drawn rows; first layer whose
    mean is <= threshold."""
    kl = np.asarray(kl, dtype=float)
    order = []
    for name in datasets:
        if name not in order:
            order.append(name)
    members = {name: [i for i, d in enumerate(datasets) if d == name] for name in order}
    rng = np.random.default_rng(seed)
    counts = {}
    for _ in range(resamples):
        drawn = []
        for name in order:
            positions = rng.integers(0, len(members[name]), size=len(members[name]))
            drawn += [members[name][p] for p in positions]
        means = np.mean(kl[drawn], axis=0)
        choice = "none"
        for layer, mean in zip(layers, means):
            if mean <= threshold:
                choice = str(layer)
                break
        counts[choice] = counts.get(choice, 0) + 1
    return {k: v / resamples for k, v in counts.items()}
