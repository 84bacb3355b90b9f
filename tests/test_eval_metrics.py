"""Evaluation metrics against independent computations: pycocotools' own accumulation and a brute-force AP for mAP,
direct numpy masks for mIoU, scikit-learn for AUROC, pycocoevalcap's compute_score for METEOR."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sklearn.metrics import roc_auc_score

from evaluation.auroc import auroc, macro_auroc, region_auroc
from evaluation.bootstrap import bootstrap, resample_counts
from evaluation.detection_map import IOU_THRESHOLDS, ImageBoxes, average_precision, map_metrics, match
from evaluation.grounding import miou_metrics, overlaps


def random_boxes(rng, n):
    c = rng.uniform(0.2, 0.8, (n, 2))
    half = rng.uniform(0.03, 0.2, (n, 2))
    return np.clip(np.concatenate((c - half, c + half), 1), 0, 1)


def random_dataset(seed=0, n_images=25, n_classes=3):
    """Predictions are jittered copies of the truth plus random false positives, so AP is neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_images):
        true, pb, ps = {}, {}, {}
        for c in range(n_classes):
            k = rng.integers(0, 3)
            if k:
                true[c] = random_boxes(rng, k)
            jitter = true[c] + rng.normal(0, 0.03, true[c].shape) if k else np.zeros((0, 4))
            fp = random_boxes(rng, rng.integers(0, 3))
            boxes = np.concatenate([jitter, fp])
            pb[c] = boxes
            ps[c] = rng.uniform(0, 1, len(boxes))
        out.append(ImageBoxes(pb, ps, true))
    return out


def coco_precision(samples, n_classes, repeat=None):
    """COCOeval end to end (its own accumulate), images optionally repeated ``repeat[i]`` times."""
    repeat = np.ones(len(samples), int) if repeat is None else repeat
    images, anns, dets = [], [], []
    for i, s in enumerate(samples):
        for r in range(repeat[i]):
            img = len(images) + 1
            images.append({"id": img})
            for c, boxes in s.true_boxes.items():
                for b in boxes * 1000:
                    anns.append({"id": len(anns) + 1, "image_id": img, "category_id": c + 1, "iscrowd": 0,
                                 "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])})
            for c, boxes in s.pred_boxes.items():
                for b, sc in zip(boxes * 1000, s.pred_scores[c]):
                    dets.append({"image_id": img, "category_id": c + 1, "score": float(sc), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c + 1} for c in range(n_classes)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.iouThrs = np.array(IOU_THRESHOLDS)
        ev.params.maxDets = [1000]
        ev.params.areaRng = [[0, 1e12]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, 0]  # (T, R, K)
    ap = prec.mean(axis=1)
    ap[(prec < 0).any(axis=1)] = np.nan
    return ap


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def brute_force_ap(samples, k, thr):
    """Greedy matching per image (highest score first, best unmatched IoU >= thr), then 101-point interpolated AP."""
    records, n_pos = [], 0
    for s in samples:
        truth = list(s.true_boxes.get(k, np.zeros((0, 4))))
        n_pos += len(truth)
        used = [False] * len(truth)
        order = sorted(range(len(s.pred_scores.get(k, []))), key=lambda j: -s.pred_scores[k][j])
        for j in order:
            best, best_iou = -1, thr
            for g, t in enumerate(truth):
                v = iou(s.pred_boxes[k][j], t)
                if not used[g] and v >= best_iou:
                    best, best_iou = g, v
            if best >= 0:
                used[best] = True
            records.append((s.pred_scores[k][j], best >= 0))
    if n_pos == 0:
        return float("nan")
    records.sort(key=lambda r: -r[0])
    tp = fp = 0
    points = []
    for _, hit in records:
        tp += hit
        fp += not hit
        points.append((tp / n_pos, tp / (tp + fp)))
    total = 0.0
    for r in np.linspace(0, 1, 101):
        total += max([p for rc, p in points if rc >= r - 1e-12], default=0.0)
    return total / 101


def test_map_equals_pycocotools_and_brute_force():
    samples = random_dataset()
    ap = average_precision(match(samples, 3))
    ref = coco_precision(samples, 3)
    np.testing.assert_allclose(ap, ref, atol=1e-12)
    for t in (0, 2, 4, 6):
        for k in range(3):
            assert ap[t, k] == pytest.approx(brute_force_ap(samples, k, IOU_THRESHOLDS[t]), abs=1e-9)
    assert 0.05 < np.nanmean(ap) < 0.95
    metrics = map_metrics(match(samples, 3), ["a", "b", "c"])
    assert metrics["mAP"] == pytest.approx(np.nanmean(np.nanmean(ref, axis=1)))
    assert metrics["AP@0.5"] == pytest.approx(np.nanmean(ref[4]))
    assert metrics["AP/b"] == pytest.approx(np.nanmean(ref[:, 1]))


def test_weighted_map_equals_repeated_images():
    samples = random_dataset(seed=3, n_images=15)
    counts = resample_counts(len(samples), 3, seed=11)
    m = match(samples, 3)
    for c in counts:
        np.testing.assert_allclose(average_precision(m, c), coco_precision(samples, 3, c), atol=1e-12)


def test_class_without_truth_is_excluded():
    s = [ImageBoxes({0: np.array([[0.1, 0.1, 0.3, 0.3]]), 1: np.array([[0.5, 0.5, 0.6, 0.6]])}, {0: np.array([0.9]), 1: np.array([0.8])},
                    {0: np.array([[0.1, 0.1, 0.3, 0.3]])})]
    m = map_metrics(match(s, 2), ["a", "b"])
    assert m["mAP"] == pytest.approx(1.0)
    assert np.isnan(m["AP/b"])


def test_miou_equals_direct_masks():
    rng = np.random.default_rng(5)
    size = 256
    yy, xx = np.mgrid[0:size, 0:size]
    cx, cy = (xx + 0.5) / size, (yy + 0.5) / size

    def mask(boxes):
        m = np.zeros((size, size), bool)
        for x1, y1, x2, y2 in boxes:
            m |= (cx >= x1) & (cx < x2) & (cy >= y1) & (cy < y2)
        return m

    counts, direct = [], np.zeros((5, 2))
    for _ in range(12):
        pred, scores, true = random_boxes(rng, 3), rng.uniform(0, 0.7, 3), random_boxes(rng, 2)
        counts.append(overlaps(pred, scores, true, size=size))
        for t, thr in enumerate((0.1, 0.2, 0.3, 0.4, 0.5)):
            p, g = mask(pred[scores >= thr]), mask(true)
            direct[t] += (np.count_nonzero(p & g), np.count_nonzero(p | g))
    iou_t = direct[:, 0] / direct[:, 1]
    m = miou_metrics(np.stack(counts))
    assert m["mIoU"] == pytest.approx(iou_t.mean())
    assert m["bIoU"] == pytest.approx(iou_t.max())


def test_auroc_equals_sklearn_with_weights_and_ties():
    rng = np.random.default_rng(1)
    for _ in range(5):
        s = np.round(rng.uniform(0, 1, 200), 1)  # many ties
        y = rng.uniform(0, 1, 200) < 0.3 + 0.4 * s
        w = rng.integers(0, 4, 200)
        assert auroc(s, y, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w))
        assert auroc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(auroc(s, np.zeros(200, bool)))


def test_macro_and_region_auroc_equal_sklearn():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 300)
    probs = rng.uniform(0, 1, (300, 4)) + np.eye(4)[labels] * 0.3
    onehot = np.eye(4)[labels]
    assert macro_auroc(probs, labels) == pytest.approx(roc_auc_score(onehot, probs, average="macro"))

    n, r, c = 120, 4, 3
    present = rng.uniform(0, 1, (n, r)) < 0.8
    targets = (rng.uniform(0, 1, (n, r, c)) < 0.25) & present[..., None]
    targets[:, 3, 2] = False  # a (region, class) pair without positives is skipped
    p = rng.uniform(0, 1, (n, r, c)) + targets * 0.4
    got = region_auroc(p, targets, present)
    num = den = 0.0
    per_class = []
    for ci in range(c):
        cn = cd = 0.0
        for ri in range(r):
            rows = present[:, ri]
            y = targets[rows, ri, ci]
            if y.any() and not y.all():
                a = roc_auc_score(y, p[rows, ri, ci])
                num, den, cn, cd = num + a * y.sum(), den + y.sum(), cn + a * y.sum(), cd + y.sum()
        per_class.append(cn / cd)
    assert got["weighted"] == pytest.approx(num / den)
    assert got["macro"] == pytest.approx(np.mean(per_class))


def test_bootstrap_std_shrinks_with_sample_size():
    rng = np.random.default_rng(4)

    def stds(n):
        s = rng.uniform(0, 1, n)
        y = rng.uniform(0, 1, n) < s
        return bootstrap(lambda w: {"auroc": auroc(s, y, w)}, n, 200)["auroc"]

    small, large = stds(40), stds(1600)
    assert 0 < large["std"] < small["std"] / 3
    assert abs(large["mean"] - large["value"]) < 3 * large["std"]


def test_bootstrap_is_seeded():
    a = resample_counts(30, 5, seed=9)
    np.testing.assert_array_equal(a, resample_counts(30, 5, seed=9))
    assert (a.sum(1) == 30).all()
    assert not np.array_equal(a, resample_counts(30, 5, seed=10))
