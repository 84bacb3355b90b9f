"""Region classification from ground-truth boxes: MS-CXR boxes into 8 classes (score = sigmoid(cos(f, class) -
cos(f, centroid of all class prompts)), macro AUROC, macro accuracy, MCC) and Chest ImaGenome anatomy boxes x 53
findings (sigmoid(cos(f, "X") - cos(f, "No X")), positive-count-weighted AUROC) (chex-reference §5 RC)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, matthews_corrcoef

from chex_model import prompts
from evaluation.auroc import macro_auroc, region_auroc
from evaluation.skips import class_skips, region_skips
from evaluation.data import Row, unique_boxes, xyxy
from preprocessing.classes import CIG_ANATOMICAL_FINDINGS_43, CIG_ANATOMY_29, CIG_DISEASES_10, MS_CXR_8

CIG_FINDINGS = CIG_ANATOMICAL_FINDINGS_43 + CIG_DISEASES_10


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class LabelledBoxes:
    """MS-CXR: one sample per ground-truth box."""

    row: np.ndarray  # (K,)
    boxes: np.ndarray  # (K, 4) xyxy
    label: np.ndarray  # (K,) class index
    phrase: list[str]


def mscxr_truth(rows: Sequence[Row], unique: bool = True) -> LabelledBoxes:
    """One sample per box of each phrase of the 8 classes; ``unique``: a box listed twice for one phrase once (ours),
    else as given (the paper)."""
    row, boxes, label, phrase = [], [], [], []
    index = {c: i for i, c in enumerate(MS_CXR_8)}
    for i, r in enumerate(rows):
        for g in r.get("grounded_phrases") or []:
            if g["category"] not in index:
                continue
            given = [xyxy(b) for b in g["boxes"]]
            for b in unique_boxes(given) if unique else given:
                row.append(i)
                boxes.append(b)
                label.append(index[g["category"]])
                phrase.append(g["phrase"])
    return LabelledBoxes(np.asarray(row, int), np.asarray(boxes, float).reshape(-1, 4), np.asarray(label, int), phrase)


def boxes_per_row(n_rows: int, row: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    return [boxes[row == i] for i in range(n_rows)]


def features_in_order(runner, rows: Sequence[Row], row: np.ndarray, boxes: np.ndarray, desc: str):
    """ROI tokens of the samples' boxes, in sample order."""
    import torch

    per_row = runner.encode_boxes(rows, boxes_per_row(len(rows), row, boxes), desc=desc)
    cursor = np.zeros(len(rows), int)
    out = []
    for i in row:
        out.append(per_row[i][cursor[i]])
        cursor[i] += 1
    return torch.stack(out) if out else torch.zeros(0, runner.model.cfg.d_model)


def mscxr_predict(runner, rows: Sequence[Row], true: LabelledBoxes) -> np.ndarray:
    pos = runner.embed([prompts.ms_cxr_prompts()[c][0] for c in MS_CXR_8])
    centroid = pos.mean(0, keepdim=True).expand_as(pos)
    feats = features_in_order(runner, rows, true.row, true.boxes, "encode MS-CXR boxes")
    return _sigmoid(runner.margins(feats, pos, centroid))


def macro_accuracy(labels: np.ndarray, pred: np.ndarray, n_classes: int, weights: np.ndarray | None = None) -> float:
    """Mean over classes of the (weighted) recall, torchmetrics' ``MulticlassAccuracy(average="macro")`` as the
    paper reports it; a class without ground truth is left out (sklearn's ``balanced_accuracy_score``), where
    torchmetrics scores a class that is predicted but absent 0."""
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)
    support = np.bincount(labels, w, n_classes)
    hits = np.bincount(labels, w * (pred == labels), n_classes)
    keep = support > 0
    return float(np.mean(hits[keep] / support[keep])) if keep.any() else float("nan")


def mscxr_metrics(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """``accuracy`` is the paper's macro accuracy; ``accuracy_micro`` the share of boxes classified right."""
    pred = probs.argmax(1)
    return {"auroc": macro_auroc(probs, labels, weights), "accuracy": macro_accuracy(labels, pred, probs.shape[1], weights),
            "accuracy_micro": float(accuracy_score(labels, pred, sample_weight=weights)),
            "mcc": float(matthews_corrcoef(labels, pred, sample_weight=weights))}


def mscxr_skips(labels: np.ndarray) -> dict[str, list[str]]:
    """Per metric the classes its mean leaves out on the full set: AUROC without positives or negatives, accuracy
    without ground truth."""
    onehot = np.eye(len(MS_CXR_8), dtype=bool)[labels].reshape(-1, len(MS_CXR_8))
    return class_skips({"auroc": onehot.any(0) & ~onehot.all(0), "accuracy": onehot.any(0)}, MS_CXR_8)


@dataclass
class RegionTruth:
    """Chest ImaGenome: per image the 29 anatomy boxes (present ones) and the 53 finding targets per region."""

    present: np.ndarray  # (n, R) bool
    boxes: np.ndarray  # (n, R, 4) xyxy
    targets: np.ndarray  # (n, R, C) bool


def cig_truth(rows: Sequence[Row]) -> RegionTruth:
    r_index = {c: i for i, c in enumerate(CIG_ANATOMY_29)}
    f_index = {c: i for i, c in enumerate(CIG_FINDINGS)}
    n = len(rows)
    present = np.zeros((n, len(r_index)), bool)
    boxes = np.zeros((n, len(r_index), 4))
    targets = np.zeros((n, len(r_index), len(f_index)), bool)
    for i, r in enumerate(rows):
        for b in r.get("region_boxes") or []:
            if b["name"] in r_index:
                present[i, r_index[b["name"]]] = True
                boxes[i, r_index[b["name"]]] = xyxy(b)
        for lab in r.get("region_labels") or []:
            if lab["region"] in r_index and lab["finding"] in f_index and lab["value"] == 1:
                targets[i, r_index[lab["region"]], f_index[lab["finding"]]] = True
    return RegionTruth(present, boxes, targets & present[..., None])


def cig_predict(runner, rows: Sequence[Row], true: RegionTruth) -> np.ndarray:
    table = prompts.cig_finding_prompts()
    pos = runner.embed([table[c][0] for c in CIG_FINDINGS])
    neg = runner.embed([table[c][1] for c in CIG_FINDINGS])
    per_row = runner.encode_boxes(rows, [true.boxes[i][true.present[i]] for i in range(len(rows))], desc="encode anatomy boxes")
    probs = np.full(true.targets.shape, 0.5)
    for i, feats in enumerate(per_row):
        if len(feats):
            probs[i, true.present[i]] = _sigmoid(runner.margins(feats, pos, neg))
    return probs


def cig_metrics(probs: np.ndarray, true: RegionTruth, weights: np.ndarray | None = None) -> dict[str, float]:
    return {f"auroc_{k}": v for k, v in region_auroc(probs, true.targets, true.present, weights).items()}


def cig_skips(true: RegionTruth) -> dict[str, list[str]]:
    """What each CIG AUROC mean leaves out on the full set (``region: finding`` pairs and findings)."""
    return region_skips(true.targets, true.present, CIG_ANATOMY_29, CIG_FINDINGS)


def multiclass_oracle(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes)[labels]


def random_probs(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, shape)
