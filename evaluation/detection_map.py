"""Detection mAP as the paper reports it: AP per class with 101 recall points, averaged over IoU 0.1 ... 0.7.

pycocotools' ``COCOeval`` does the per-image matching (greedy by score, each ground-truth box matched at most once,
at every IoU threshold). The accumulation into AP is done here, with a weight per image, so that a bootstrap
resample is a vector of image counts instead of a rebuilt COCO dataset: for continuous scores it equals
``COCOeval.accumulate`` on the dataset with every image repeated ``count`` times (tests check both).
Boxes are normalized xyxy; they are scaled by 1000 for COCO, as the reference does.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from preprocessing.box_geometry import xyxy_to_xywh

IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
SCALE = 1000.0
MAX_DETECTIONS = 10_000


@dataclass
class ImageBoxes:
    """One evaluated image (or grounded phrase): boxes per class index, normalized xyxy."""

    pred_boxes: dict[int, np.ndarray]  # class -> (n, 4)
    pred_scores: dict[int, np.ndarray]  # class -> (n,)
    true_boxes: dict[int, np.ndarray]  # class -> (m, 4)


@dataclass
class ClassMatches:
    """All detections of one class over the dataset, sorted by descending score (stable)."""

    scores: np.ndarray  # (D,)
    matched: np.ndarray  # (T, D) bool: a true positive at each IoU threshold
    image: np.ndarray  # (D,) image index of each detection
    n_true: np.ndarray  # (I,) ground-truth boxes of this class per image


@dataclass
class Matches:
    classes: list[ClassMatches]
    iou_thresholds: tuple[float, ...]
    n_images: int


def _coco_box(xyxy: np.ndarray) -> list[float]:
    return np.maximum(xyxy_to_xywh(np.asarray(xyxy, dtype=np.float64) * SCALE), 0.0).tolist()


def match(samples: Sequence[ImageBoxes], n_classes: int, iou_thresholds: Sequence[float] = IOU_THRESHOLDS) -> Matches:
    """Per-image, per-class matching of predictions to ground truth by ``COCOeval.evaluate``."""
    images = [{"id": i + 1} for i in range(len(samples))]
    annotations, detections = [], []
    for i, s in enumerate(samples):
        for c, boxes in s.true_boxes.items():
            for b in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
                box = _coco_box(b)
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": c + 1, "bbox": box,
                                    "area": box[2] * box[3], "iscrowd": 0})
        for c, boxes in s.pred_boxes.items():
            for b, score in zip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(s.pred_scores[c]).reshape(-1)):
                detections.append({"image_id": i + 1, "category_id": c + 1, "bbox": _coco_box(b), "score": float(score)})
    per_class = [ClassMatches(np.zeros(0), np.zeros((len(iou_thresholds), 0), bool), np.zeros(0, int),
                              np.zeros(len(samples), int)) for _ in range(n_classes)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c + 1} for c in range(n_classes)]}
        gt.createIndex()
        dt = gt.loadRes(detections) if detections else COCO()
        if not detections:
            dt.dataset = {"images": images, "annotations": [], "categories": gt.dataset["categories"]}
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.iouThrs = np.asarray(iou_thresholds, dtype=np.float64)
        ev.params.maxDets = [MAX_DETECTIONS]
        ev.params.areaRng = [[0.0, 1e12]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
    n_img = len(samples)
    for k in range(n_classes):
        scores, matched, image = [], [], []
        n_true = np.zeros(n_img, dtype=np.int64)
        for i in range(n_img):
            e = ev.evalImgs[k * n_img + i]
            if e is None:
                continue
            n_true[i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            scores.append(np.asarray(e["dtScores"], dtype=np.float64))
            matched.append(np.asarray(e["dtMatches"]) > 0)
            image.append(np.full(len(e["dtScores"]), i))
        if scores:
            s = np.concatenate(scores)
            order = np.argsort(-s, kind="mergesort")
            per_class[k] = ClassMatches(s[order], np.concatenate(matched, axis=1)[:, order], np.concatenate(image)[order], n_true)
        else:
            per_class[k] = ClassMatches(np.zeros(0), np.zeros((len(iou_thresholds), 0), bool), np.zeros(0, int), n_true)
    return Matches(per_class, tuple(iou_thresholds), n_img)


def _precision_at_recall(tp: np.ndarray, fp: np.ndarray, n_pos: float) -> np.ndarray:
    """(T, D) cumulative weighted tp / fp -> (T, 101) interpolated precision at the COCO recall points."""
    recall = tp / n_pos
    precision = tp / np.maximum(tp + fp, np.spacing(1))
    precision = np.flip(np.maximum.accumulate(np.flip(precision, -1), axis=-1), -1)
    out = np.zeros((tp.shape[0], len(RECALL_POINTS)))
    for t in range(tp.shape[0]):
        idx = np.searchsorted(recall[t], RECALL_POINTS, side="left")
        ok = idx < recall.shape[1]
        out[t, ok] = precision[t, idx[ok]]
    return out


def class_precision(cm: ClassMatches, weights: np.ndarray) -> np.ndarray | None:
    """(T, 101) interpolated precision of one class with per-image ``weights``; None when it has no ground truth."""
    n_pos = float(np.dot(weights, cm.n_true))
    if n_pos == 0:
        return None
    w = weights[cm.image].astype(np.float64)
    keep = w > 0
    m = cm.matched[:, keep]
    w = w[keep]
    tp = np.cumsum(m * w, axis=1)
    fp = np.cumsum(~m * w, axis=1)
    return _precision_at_recall(tp, fp, n_pos)


def average_precision(matches: Matches, weights: np.ndarray | None = None) -> np.ndarray:
    """(T, K) AP per IoU threshold and class; NaN for a class without ground truth."""
    w = np.ones(matches.n_images) if weights is None else np.asarray(weights, dtype=np.float64)
    ap = np.full((len(matches.iou_thresholds), len(matches.classes)), np.nan)
    for k, cm in enumerate(matches.classes):
        prec = class_precision(cm, w)
        if prec is not None:
            ap[:, k] = prec.mean(axis=1)
    return ap


def map_metrics(matches: Matches, class_names: Sequence[str], weights: np.ndarray | None = None,
                report_at: Sequence[float] = (0.1, 0.3, 0.5)) -> dict[str, float]:
    """``mAP`` (classes then IoU thresholds averaged), ``AP@t`` and ``AP/<class>`` (averaged over thresholds).
    A class without ground truth in the (resampled) set is left out of the mean, where the reference's library
    counts it as 0: the real test sets have boxes of every class, so only resamples that miss a rare class differ."""
    ap = average_precision(matches, weights)
    with np.errstate(all="ignore"), _quiet_nan():
        per_threshold = np.nanmean(ap, axis=1)
        out = {"mAP": float(np.nanmean(per_threshold))}
        for t in report_at:
            if t in matches.iou_thresholds:
                out[f"AP@{t:g}"] = float(per_threshold[matches.iou_thresholds.index(t)])
        for k, name in enumerate(class_names):
            out[f"AP/{name}"] = float(np.nanmean(ap[:, k]))
    return out


@contextlib.contextmanager
def _quiet_nan():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def pr_curve(matches: Matches, k: int, iou: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(recall, interpolated precision) of class ``k`` at IoU ``iou`` over the full set, for plotting."""
    cm = matches.classes[k]
    prec = class_precision(cm, np.ones(matches.n_images))
    if prec is None:
        return None
    return RECALL_POINTS, prec[matches.iou_thresholds.index(iou)]
