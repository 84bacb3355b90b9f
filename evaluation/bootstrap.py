"""Bootstrap standard deviations (as the reference: resample samples with replacement, recompute, mean and std).

A resample is a vector of per-sample counts, so metrics that take sample weights (AP, AUROC, IoU sums) need no
copies of the data; metrics that cannot take weights expand the counts into indices with ``np.repeat``.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

SEED = 2147483647  # the reference's torch Generator seed


def resample_counts(n: int, resamples: int, seed: int = SEED) -> np.ndarray:
    """(resamples, n) counts of each sample in each bootstrap resample of size n."""
    rng = np.random.default_rng(seed)
    if not n or not resamples:  # no samples, or no bootstrap wanted (a point estimate during training)
        return np.zeros((resamples, n), int)
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])


def indices(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def bootstrap(metric: Callable[[np.ndarray], dict[str, float]], n: int, resamples: int, seed: int = SEED) -> dict[str, dict[str, float]]:
    """``metric(weights)`` on the full set (weights 1) and on ``resamples`` resamples:
    ``{key: {"value", "mean", "std"}}`` (std over resamples, ddof 1; NaN results of a resample are skipped)."""
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
                  "std": float(d.std(ddof=1)) if d.size > 1 else float("nan")}
    return out
