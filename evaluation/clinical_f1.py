"""Clinical-efficacy F1 from CheXbert label codes (chex-reference §5), so generated and reference texts are compared
by the findings they state rather than by their words.

"-14" (Nicolson) counts a condition positive only when it is positive (uncertain counts as negative); "-5+" (Miura)
keeps five conditions and counts uncertain as positive. Micro F1 pools every (text, condition) cell; macro F1 is the
mean of the per-condition F1; example F1 pools the rows of one example (e.g. all sentences of an image): the paper's
leaves out every example without a true positive, ours (strict) scores those 0.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import f1_score

from preprocessing.labeler import CONDITIONS, POSITIVE, UNCERTAIN

FIVE: tuple[str, ...] = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
_FIVE_IDX = [CONDITIONS.index(c) for c in FIVE]


def binary_14(codes: np.ndarray) -> np.ndarray:
    """(n, 14) bool: positive iff the code is POSITIVE."""
    return np.asarray(codes) == POSITIVE


def binary_5plus(codes: np.ndarray) -> np.ndarray:
    """(n, 5) bool over FIVE: positive iff the code is POSITIVE or UNCERTAIN."""
    c = np.asarray(codes)[:, _FIVE_IDX]
    return (c == POSITIVE) | (c == UNCERTAIN)


def micro_f1(pred_bin: np.ndarray, true_bin: np.ndarray) -> float:
    """Binary F1 over the flattened matrices (NaN for no rows)."""
    if np.asarray(true_bin).size == 0:
        return float("nan")
    return float(f1_score(np.asarray(true_bin, bool).ravel(), np.asarray(pred_bin, bool).ravel(), zero_division=0))


def macro_f1(pred_bin: np.ndarray, true_bin: np.ndarray) -> float:
    """Mean of the per-condition F1 (a condition absent from both counts as 0, as sklearn's zero_division=0)."""
    if np.asarray(true_bin).shape[0] == 0:
        return float("nan")
    per_class = f1_score(np.asarray(true_bin, bool), np.asarray(pred_bin, bool), average=None, zero_division=0)
    return float(np.mean(per_class))


def _example_counts(pred_bin: np.ndarray, true_bin: np.ndarray, example_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per example (rows grouped by ``example_ids``): its summed true positives, false positives and misses."""
    pred, true = np.asarray(pred_bin, bool), np.asarray(true_bin, bool)
    _, group = np.unique(np.asarray(example_ids), return_inverse=True)
    n = int(group.max()) + 1 if group.size else 0
    return (np.bincount(group, (pred & true).sum(axis=1), n), np.bincount(group, (pred & ~true).sum(axis=1), n),
            np.bincount(group, (~pred & true).sum(axis=1), n))


def example_f1_reference(pred_bin: np.ndarray, true_bin: np.ndarray, example_ids: Sequence | np.ndarray) -> float:
    """The paper's Ex-F1: per example P = tp / (tp + fp), R = tp / (tp + fn), F1 = 2PR / (P + R) from its summed
    counts, averaged with NaNs dropped (pandas). F1 is 0/0 whenever tp = 0, so every example without a hit is left
    out, also one with false positives or misses; NaN if no example has a hit."""
    tp, fp, fn = _example_counts(pred_bin, true_bin, example_ids)
    keep = tp > 0
    return float(np.mean(2 * tp[keep] / (2 * tp[keep] + fp[keep] + fn[keep]))) if keep.any() else float("nan")


def example_f1(pred_bin: np.ndarray, true_bin: np.ndarray, example_ids: Sequence | np.ndarray) -> float:
    """Ours (``ex_f1_14_strict``): mean over examples of 2tp / (2tp + fp + fn) from the example's summed rows; an
    example with a false positive or a miss and no hit scores 0; only an example with no positive in prediction or
    target (nothing to find, nothing claimed: F1 undefined) is left out; NaN if none is left."""
    tp, fp, fn = _example_counts(pred_bin, true_bin, example_ids)
    denom = 2 * tp + fp + fn
    keep = denom > 0
    return float(np.mean(2 * tp[keep] / denom[keep])) if keep.any() else float("nan")


def ce_metrics(pred_codes: np.ndarray, true_codes: np.ndarray,
               example_ids: Sequence | np.ndarray | None = None) -> dict[str, float]:
    """mic/mac F1 for -14 and -5+; when rows are grouped into examples, ex_f1_14 (the paper's) and ex_f1_14_strict
    (ours)."""
    p14, t14 = binary_14(pred_codes), binary_14(true_codes)
    p5, t5 = binary_5plus(pred_codes), binary_5plus(true_codes)
    out = {"mic_f1_14": micro_f1(p14, t14), "mac_f1_14": macro_f1(p14, t14),
           "mic_f1_5plus": micro_f1(p5, t5), "mac_f1_5plus": macro_f1(p5, t5)}
    if example_ids is not None:
        out["ex_f1_14"] = example_f1_reference(p14, t14, example_ids)
        out["ex_f1_14_strict"] = example_f1(p14, t14, example_ids)
    return out
