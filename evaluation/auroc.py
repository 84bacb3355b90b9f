"""AUROC with sample weights, vectorizable over many small problems (bootstrap resamples of region x class
matrices make thousands of them), plus the task-level averages of the reference (macro multiclass, positive-count
weighted over region x class)."""
from __future__ import annotations

import numpy as np


def auroc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative) + P(tie) / 2, weighted; NaN when
    either class is missing."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    w = np.ones(len(s)) if weights is None else np.asarray(weights, dtype=np.float64)
    pos_total, neg_total = float(w[y].sum()), float(w[~y].sum())
    if pos_total == 0 or neg_total == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    s, y, w = s[order], y[order], w[order]
    uniq, start = np.unique(s, return_index=True)
    pos = np.add.reduceat(np.where(y, w, 0.0), start)
    neg = np.add.reduceat(np.where(y, 0.0, w), start)
    neg_below = np.concatenate(([0.0], np.cumsum(neg)[:-1]))
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (pos_total * neg_total))


def macro_auroc(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Multiclass one-vs-rest AUROC per class on ``probs`` (n, C) with integer ``labels``, averaged over the classes
    with positives and negatives. Deliberately unlike torchmetrics' ``MulticlassAUROC``, which counts a class without positives as 0:
    on the full MS-CXR test set every class occurs, so only bootstrap resamples that miss a rare class differ."""
    values = [auroc(probs[:, c], labels == c, weights) for c in range(probs.shape[1])]
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def region_auroc(probs: np.ndarray, targets: np.ndarray, present: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """Region classification over ``probs``/``targets`` (n, R, C) where ``present`` (n, R) marks the regions an image
    has: ``weighted`` = sum over (region, class) of n_pos * AUROC / total n_pos; ``macro`` = per class the
    positive-weighted AUROC over regions, averaged over classes; ``global_macro`` = AUROC of the max over present
    regions against "any region positive", averaged over classes."""
    n, r, c = probs.shape
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    auc = np.full((r, c), np.nan)
    n_pos = np.zeros((r, c))
    labelled = targets.astype(bool) & present[..., None]
    # only pairs with a positive and a negative in the full set can have an AUROC in any resample
    for ri, ci in zip(*np.nonzero(labelled.any(0) & (present[..., None] & ~labelled).any(0))):
        rows = present[:, ri] & (w > 0)
        y = labelled[rows, ri, ci]
        n_pos[ri, ci] = float(w[rows][y].sum())
        auc[ri, ci] = auroc(probs[rows, ri, ci], y, w[rows])
    valid = ~np.isnan(auc) & (n_pos > 0)
    weighted = float((auc[valid] * n_pos[valid]).sum() / n_pos[valid].sum()) if valid.any() else float("nan")
    per_class = [float((auc[valid[:, ci], ci] * n_pos[valid[:, ci], ci]).sum() / n_pos[valid[:, ci], ci].sum())
                 for ci in range(c) if valid[:, ci].any()]
    glob_p = np.where(present[..., None], probs, -np.inf).max(axis=1)
    glob_y = labelled.any(axis=1)
    glob = [auroc(glob_p[:, ci], glob_y[:, ci], w) for ci in np.flatnonzero(glob_y.any(0) & ~glob_y.all(0))]
    glob = [v for v in glob if v == v]
    return {"weighted": weighted, "macro": float(np.mean(per_class)) if per_class else float("nan"),
            "global_macro": float(np.mean(glob)) if glob else float("nan")}

