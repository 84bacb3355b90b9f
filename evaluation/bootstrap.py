"""Bootstrap standard deviations as the reference draws them (chex-reference §5): one torch ``Generator`` seeded
2147483647, per resample ``torch.randint(b, (b,))`` over the b samples, the metric recomputed, then the mean and the
numpy std (ddof 0) over the resamples. With the same per-sample values the means and stds are the reference's.

A resample is a vector of per-sample counts, so metrics that take sample weights (AP, AUROC, IoU sums) need no
copies of the data; metrics that cannot take weights expand the counts into indices with ``np.repeat``. A sample is
the reference's unit: an image for detection, grounding (all phrases of an image together), CIG regions and text;
a box for MS-CXR region classification.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

SEED = 2147483647  # the reference's torch Generator seed


def resample_counts(n: int, resamples: int, seed: int = SEED) -> np.ndarray:
    """(resamples, n) counts of each sample in each bootstrap resample of size n, drawn as the reference draws."""
    if not n or not resamples:  # no samples, or no bootstrap wanted (a point estimate during training)
        return np.zeros((resamples, n), int)
    g = torch.Generator().manual_seed(seed)
    return np.stack([np.bincount(torch.randint(n, size=(n,), generator=g).numpy(), minlength=n) for _ in range(resamples)])


def indices(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def bootstrap(metric: Callable[[np.ndarray], dict[str, float]], n: int, resamples: int, seed: int = SEED) -> dict[str, dict[str, float]]:
    """``metric(weights)`` on the full set (weights 1) and on ``resamples`` resamples:
    ``{key: {"value", "mean", "std"}}`` (std over resamples with ddof 0, as numpy's default the reference uses; a
    resample whose value is NaN, e.g. a metric left without any class, is left out: the reference's mean would be
    NaN)."""
    full = metric(np.ones(n, dtype=np.int64))
    draws: dict[str, list[float]] = {k: [] for k in full}
    for counts in resample_counts(n, resamples, seed):
        for k, v in metric(counts).items():
            if k in draws and v == v:
                draws[k].append(float(v))
    out = {}
    for k, v in full.items():
        d = np.asarray(draws[k])
        out[k] = {"value": float(v), "mean": float(d.mean()) if d.size else float("nan"),
                  "std": float(d.std()) if d.size else float("nan")}
    return out


def per_group(metric: Callable[[np.ndarray], dict[str, float]], group: np.ndarray) -> tuple[Callable[[np.ndarray], dict[str, float]], int]:
    """A metric over samples (weights per sample) as a metric over their groups (weights per group, e.g. the image of
    each grounded phrase), and the number of groups: a resample draws whole groups."""
    _, inverse = np.unique(np.asarray(group), return_inverse=True)
    n = int(inverse.max()) + 1 if inverse.size else 0
    return (lambda w: metric(np.asarray(w)[inverse])), n
