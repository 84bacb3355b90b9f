"""Presence of a finding from a query's detector ROI token, and its per-query calibration (our addition).

The presence margin cos(f, "X") - cos(f, "No X") ranks images, but its scale and zero point differ from query to
query, so one threshold on it marks some findings present everywhere and others nowhere. A calibration (Platt
scaling: a logistic regression of the report-derived label on the margin, one per prompt pair) turns it into a
probability, so a threshold of 0.5 means the same for every query. Where the margin does not rank a finding on the
fitting data, the calibration says so by a zero slope at the finding's base rate.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence

import numpy as np
import torch.nn.functional as F
from torch import Tensor

CALIBRATION_FILE = "presence_calibration.json"
UNINFORMED_CAP = 0.45  # highest P(present) of a query whose margin does not rank its finding


def paired_margin(features: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    """cos(f_k, pos_k) - cos(f_k, neg_k) for each query's own prompt pair: features ``(..., K, d)``, prompts ``(K, d)``
    -> ``(..., K)``."""
    f = F.normalize(features, dim=-1)
    return (f * F.normalize(positive, dim=-1)).sum(-1) - (f * F.normalize(negative, dim=-1)).sum(-1)


def pair_key(positive: str, negative: str) -> str:
    """Calibration key of a query prompt and what it is contrasted with."""
    return f"{positive} | {negative}"


def positivity_key(positive: Sequence[str], negative: Sequence[str]) -> str:
    """What an anatomy query is contrasted with in a report: the means of a prompt set's positivity prompts."""
    digest = hashlib.sha256(json.dumps([list(positive), list(negative)]).encode()).hexdigest()[:12]
    return f"abnormal({len(positive)} prompts, {digest})"


def fit_platt(margins: np.ndarray, labels: np.ndarray, min_each: int = 3) -> tuple[float, float]:
    """(scale, shift) with P(present) = sigmoid(scale * margin + shift), by a (nearly unregularized) logistic
    regression. With fewer than ``min_each`` positives or negatives, or a slope that is not positive (the margin
    ranks the finding backwards), the scale is 0 and the shift the log-odds of the smoothed base rate, capped at
    ``UNINFORMED_CAP``: a query the model cannot read is never called present, however common its finding."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels, dtype=bool)
    n, pos = len(labels), int(labels.sum())
    rate = min((pos + 0.5) / (n + 1.0), UNINFORMED_CAP)
    fallback = (0.0, math.log(rate / (1 - rate)))
    if pos < min_each or n - pos < min_each:
        return fallback
    fit = LogisticRegression(C=1e4, max_iter=1000).fit(np.asarray(margins, dtype=np.float64)[:, None], labels)
    scale, shift = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    return (scale, shift) if scale > 0 else fallback
