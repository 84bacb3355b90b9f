"""Sentence-grounding mIoU as the reference computes it: boxes rasterized on a 1024 x 1024 grid; for each score
threshold the dataset-level sum of intersections over the sum of unions of the predicted-union mask (boxes scoring
at least the threshold) and the ground-truth-union mask; mIoU is the mean over thresholds, bIoU the best."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GRID = 1024
SCORE_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)


def rasterize(xyxy: np.ndarray, size: int = GRID) -> np.ndarray:
    """Union mask of normalized xyxy boxes: a pixel is covered when its centre lies in [x1, x2) x [y1, y2)."""
    mask = np.zeros((size, size), dtype=bool)
    for x1, y1, x2, y2 in np.asarray(xyxy, dtype=np.float64).reshape(-1, 4):
        c0, c1 = (int(np.clip(np.ceil(v * size - 0.5), 0, size)) for v in (x1, x2))
        r0, r1 = (int(np.clip(np.ceil(v * size - 0.5), 0, size)) for v in (y1, y2))
        mask[r0:r1, c0:c1] = True
    return mask


def overlaps(pred_boxes: np.ndarray, pred_scores: np.ndarray, true_boxes: np.ndarray,
             thresholds: Sequence[float] = SCORE_THRESHOLDS, size: int = GRID) -> np.ndarray:
    """(T, 2) pixel counts (intersection, union) of one sample at each score threshold."""
    truth = rasterize(true_boxes, size)
    pred_boxes = np.asarray(pred_boxes).reshape(-1, 4)
    pred_scores = np.asarray(pred_scores).reshape(-1)
    out = np.zeros((len(thresholds), 2), dtype=np.int64)
    for t, thr in enumerate(thresholds):
        pred = rasterize(pred_boxes[pred_scores >= thr], size)
        out[t] = (np.count_nonzero(pred & truth), np.count_nonzero(pred | truth))
    return out


def miou_metrics(counts: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """``counts`` (N, T, 2) from :func:`overlaps` -> ``mIoU`` and ``bIoU`` (dataset-level IoU per threshold)."""
    w = np.ones(len(counts)) if weights is None else np.asarray(weights, dtype=np.float64)
    summed = np.einsum("n,ntk->tk", w, counts.astype(np.float64))
    iou = summed[:, 0] / np.maximum(summed[:, 1], 1.0)
    return {"mIoU": float(iou.mean()), "bIoU": float(iou.max())}
