"""Hungarian matching of a prompt's M predicted boxes to its targets, balanced so every prediction gets a target."""
from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment


def balanced_match(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal assignment for a ``(predictions, targets)`` cost matrix.

    With more predictions than targets, the targets are tiled ``ceil(P / T)`` times and copy ``c`` costs an extra
    ``c * (spread + 1)``: the optimum first covers every target once (first copies), then gives the remaining
    predictions their cheapest target. Returns ``(pred_idx, target_idx, is_first_copy)``, sorted by prediction.
    """
    p, t = cost.shape
    if p == 0 or t == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=bool)
    copies = max(1, math.ceil(p / t))
    spread = float(cost.max() - cost.min()) + 1.0
    tiled = np.concatenate([cost + c * spread for c in range(copies)], axis=1)
    rows, cols = linear_sum_assignment(tiled)
    return rows.astype(np.int64), (cols % t).astype(np.int64), cols < t
