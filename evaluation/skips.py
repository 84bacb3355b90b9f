"""Edge conventions made visible: which classes (or region: class pairs) a metric's mean leaves out because they
have no ground truth or no negatives in the scored set, where the reference's code scores them 0 and keeps them in
the mean. The evaluation warns with their names and records them in results.json and MLflow."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def class_skips(scored: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, list[str]]:
    """``{metric: [class names]}`` of the classes each metric's mean leaves out (``scored[metric]``: a bool per class,
    True where the class is scored); metrics that leave nothing out are not listed."""
    out = {m: [names[k] for k in np.flatnonzero(~np.asarray(ok, bool))] for m, ok in scored.items()}
    return {m: v for m, v in out.items() if v}


def region_skips(targets: np.ndarray, present: np.ndarray, regions: Sequence[str], classes: Sequence[str]) -> dict[str, list[str]]:
    """What :func:`region_auroc` leaves out on the full set: ``auroc_weighted``, the (region, class) pairs with a
    positive but no negative (where the reference scores AUROC 0 at the pair's weight; a pair without positives
    weighs 0 in both); ``auroc_macro``, the classes without any scored pair; ``auroc_global_macro``, the classes whose
    image-level label has no positive or no negative."""
    labelled = targets.astype(bool) & present[..., None]
    pos, neg = labelled.any(0), (present[..., None] & ~labelled).any(0)
    glob = labelled.any(axis=1)
    out = {"auroc_weighted": [f"{regions[r]}: {classes[c]}" for r, c in zip(*np.nonzero(pos & ~neg))]}
    out.update(class_skips({"auroc_macro": (pos & neg).any(0), "auroc_global_macro": glob.any(0) & ~glob.all(0)}, classes))
    return {m: v for m, v in out.items() if v}


def group_skips(skipped: dict[str, list[str]]) -> dict[tuple[str, ...], list[str]]:
    """Metrics that leave out the same classes, together: ``{classes: [metrics]}`` (mAP and every AP@t, say)."""
    out: dict[tuple[str, ...], list[str]] = {}
    for metric, names in skipped.items():
        out.setdefault(tuple(names), []).append(metric)
    return out
