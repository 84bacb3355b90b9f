"""Pathology detection (VinDr-CXR top-15, NIH ChestX-ray8, MS-CXR): each class's box prompt gives M boxes with
weights and a ROI token; the token's margin cos(f, positive) - cos(f, negative) scores the class (chex-reference §5 OD)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from chex_model import prompts
from evaluation.data import Row, class_boxes
from evaluation.skips import class_skips
from evaluation.detection_map import ImageBoxes, Matches, map_metrics, match
from evaluation.postprocess import BoxPostprocess, box_scores, finalize, greedy_search, scale_boxes
from preprocessing.classes import MS_CXR_8, NIH_BOX_8, NIH_LABEL_ALIASES, VINDR_LOCAL_22

REPORTED_IOU = (0.1, 0.3, 0.5)  # the AP@t map_metrics reports
VINDR_TOP15 = tuple(c for c in VINDR_LOCAL_22 if c not in {
    "Clavicle fracture", "Edema", "Emphysema", "Enlarged PA", "Lung cavity", "Lung cyst", "Rib fracture"})


@dataclass(frozen=True)
class DetectionTask:
    source: str
    classes: tuple[str, ...]
    box_prompts: tuple[str, ...]
    positives: tuple[str, ...]
    negatives: tuple[str, ...]
    aliases: tuple[tuple[str, str], ...] = ()
    box_images_only: bool = False  # NIH: only the images of the box list are scored, not their patients' other images


def _task(source: str, classes: tuple[str, ...], table: dict[str, tuple[str, str]], box_prompt=lambda c: c, aliases=(),
          box_images_only: bool = False) -> DetectionTask:
    return DetectionTask(source, classes, tuple(box_prompt(c) for c in classes), tuple(table[c][0] for c in classes),
                         tuple(table[c][1] for c in classes), tuple(aliases), box_images_only)


TASKS: dict[str, DetectionTask] = {
    # VinDr box prompts are the positive prompts; MS-CXR and NIH prompt anatomy for a few classes
    "od_vindr": _task("vindr_cxr", VINDR_TOP15, prompts.vindr_prompts(), lambda c: prompts.vindr_prompts()[c][0]),
    "od_nih": _task("nih_cxr", NIH_BOX_8, prompts.nih_prompts(), prompts.box_prompt, NIH_LABEL_ALIASES.items(), box_images_only=True),
    "od_mscxr": _task("ms_cxr", MS_CXR_8, prompts.ms_cxr_prompts(), prompts.box_prompt),
}


@dataclass
class RawDetections:
    """Per image and class: the prompt's M boxes (normalized xyxy), their weights and the class margin."""

    boxes: np.ndarray  # (N, C, M, 4)
    weights: np.ndarray  # (N, C, M)
    margin: np.ndarray  # (N, C)

    def subset(self, idx: Sequence[int]) -> "RawDetections":
        return RawDetections(self.boxes[idx], self.weights[idx], self.margin[idx])


def scored_rows(rows: Sequence[Row], task: DetectionTask) -> list[Row]:
    """The rows a task scores: every image, or (NIH) only the images with a box of the task's classes, as the
    reference's detection lists do; the other images of those patients carry no box annotation at all."""
    if not task.box_images_only:
        return list(rows)
    return [r for r, t in zip(rows, truth(rows, task)) if t]


def truth(rows: Sequence[Row], task: DetectionTask, unique: bool = True) -> list[dict[int, np.ndarray]]:
    """Per image its boxes per class; ``unique``: identical boxes of a class once (ours), else as given (the paper)."""
    return [class_boxes(r, task.classes, dict(task.aliases), unique) for r in rows]


def skips(true: Sequence[dict[int, np.ndarray]], task: DetectionTask) -> dict[str, list[str]]:
    """The classes without a ground-truth box in the scored set, which mAP and AP@t leave out (the reference's
    library scores them 0 and keeps them in the mean)."""
    has = np.zeros(len(task.classes), bool)
    for t in true:
        has[[c for c, b in t.items() if len(b)]] = True
    return class_skips({k: has for k in ("mAP", *(f"AP@{t:g}" for t in REPORTED_IOU))}, task.classes)


def predict(runner, rows: Sequence[Row], task: DetectionTask) -> RawDetections:
    out = runner.detect(rows, [list(task.box_prompts)] * len(rows), desc=f"detect {task.source}")
    pos, neg = runner.embed(task.positives), runner.embed(task.negatives)
    boxes = np.stack([b for b, _, _ in out])
    weights = np.stack([w for _, w, _ in out])
    margin = np.stack([runner.margins(f, pos, neg).diagonal() for _, _, f in out])
    return RawDetections(boxes, weights, margin)


def oracle(true: Sequence[dict[int, np.ndarray]], n_classes: int, m: int = 3, seed: int = 0) -> RawDetections:
    """Ground-truth boxes (the first M of a class) with weight 1 and a large margin; absent classes get random
    boxes with weight 0 and a negative margin. An upper bound for the metrics, not exactly 1 when an image has more
    than M boxes of a class."""
    raw = chance(len(true), n_classes, m, seed)
    raw.weights[:] = 0.0
    raw.margin[:] = -5.0
    for i, t in enumerate(true):
        for c, b in t.items():
            b = b[:m]
            raw.boxes[i, c] = np.concatenate([b, np.repeat(b[:1], m - len(b), axis=0)])
            raw.weights[i, c, : len(b)] = 1.0
            raw.margin[i, c] = 5.0
    return raw


def chance(n: int, n_classes: int, m: int = 3, seed: int = 0) -> RawDetections:
    """Uniformly random boxes, weights and margins: what the metrics give a model that knows nothing."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.1, 0.9, (n, n_classes, m, 2))
    half = rng.uniform(0.025, 0.25, (n, n_classes, m, 2))
    boxes = np.clip(np.concatenate((c - half, c + half), -1), 0, 1)
    return RawDetections(boxes, rng.uniform(0, 1, (n, n_classes, m)), rng.normal(0, 1, (n, n_classes)))


def samples(raw: RawDetections, true: Sequence[dict[int, np.ndarray]], pp: BoxPostprocess) -> list[ImageBoxes]:
    out = []
    for i, t in enumerate(true):
        pb, ps = {}, {}
        for c in range(raw.boxes.shape[1]):
            boxes = scale_boxes(raw.boxes[i, c], pp.class_scale(c))
            pb[c], ps[c] = finalize(boxes, box_scores(raw.weights[i, c], float(raw.margin[i, c]), pp), pp)
        out.append(ImageBoxes(pb, ps, t))
    return out


def matches(raw: RawDetections, true: Sequence[dict[int, np.ndarray]], pp: BoxPostprocess) -> Matches:
    return match(samples(raw, true, pp), raw.boxes.shape[1])


def search(raw: RawDetections, true: Sequence[dict[int, np.ndarray]], task: DetectionTask, start: BoxPostprocess,
           scales: Sequence[float], temperatures: Sequence[float], nms_values: Sequence[float]) -> tuple[BoxPostprocess, dict]:
    """Validation-split search as the reference's: a box scale per class (the one with the best AP of that class),
    then scoring mode and temperature, then NMS; every step keeps the best mAP, a tie the later option. A class
    without validation boxes keeps scale 1 (the reference's library scores it AP 0 at every scale, so it takes 2)."""
    def evaluate(pp: BoxPostprocess) -> float:
        value = map_metrics(matches(raw, true, pp), task.classes)["mAP"]
        return value if value == value else -1.0

    def per_class(pp: BoxPostprocess) -> list[float]:
        table = []
        for s in scales:
            m = map_metrics(matches(raw, true, replace(pp, scale=[s])), task.classes)
            table.append([m[f"AP/{c}"] for c in task.classes])
        ap = np.nan_to_num(np.asarray(table), nan=-1.0)
        out = []
        for k in range(len(task.classes)):
            best = [s for s, v in zip(scales, ap[:, k]) if v == ap[:, k].max()]
            out.append(1.0 if (ap[:, k] < 0).all() else float(best[-1]))
        return out

    return greedy_search(evaluate, start, scales, temperatures, nms_values, per_class_scale=per_class)
