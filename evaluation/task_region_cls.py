"""Region classification from ground-truth boxes: MS-CXR boxes into 8 classes (score = sigmoid(cos(f, class) -
cos(f, centroid of all class prompts)), macro AUROC) and Chest ImaGenome anatomy boxes x 53 findings
(sigmoid(cos(f, "X") - cos(f, "No X")), positive-count-weighted AUROC) (chex-reference §5 RC)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, matthews_corrcoef

from chex_model import prompts
from evaluation.auroc import macro_auroc, region_auroc
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


def mscxr_truth(rows: Sequence[Row]) -> LabelledBoxes:
    row, boxes, label, phrase = [], [], [], []
    index = {c: i for i, c in enumerate(MS_CXR_8)}
    for i, r in enumerate(rows):
        for g in r.get("grounded_phrases") or []:
            if g["category"] not in index:
                continue
            for b in unique_boxes([xyxy(b) for b in g["boxes"]]):
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


def mscxr_metrics(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    pred = probs.argmax(1)
    return {"auroc": macro_auroc(probs, labels, weights), "accuracy": float(accuracy_score(labels, pred, sample_weight=weights)),
            "mcc": float(matthews_corrcoef(labels, pred, sample_weight=weights))}


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


def multiclass_oracle(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes)[labels]


def random_probs(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, shape)
