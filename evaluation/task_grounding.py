"""Sentence grounding on MS-CXR: every unique phrase of an image is a prompt; its M boxes, scored by their weights,
are kept after per-phrase NMS (chex-reference §5 SG). Scored by mIoU / bIoU on 1024² masks and single-class mAP."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evaluation.data import Row, unique_boxes, xyxy
from evaluation.detection_map import ImageBoxes, map_metrics, match
from evaluation.grounding import miou_metrics, overlaps
from evaluation.postprocess import BoxPostprocess, finalize, greedy_search, scale_boxes
from evaluation.task_detection import RawDetections
from evaluation.task_detection import chance as _chance


@dataclass
class Phrase:
    row: int
    text: str
    boxes: np.ndarray  # (m, 4) xyxy


def truth(rows: Sequence[Row], unique: bool = True) -> list[Phrase]:
    """Every unique phrase of an image with all its boxes; ``unique``: a box listed twice for the phrase once (ours),
    else as given (the paper)."""
    out = []
    for i, r in enumerate(rows):
        seen: dict[str, list] = {}
        for g in r.get("grounded_phrases") or []:
            seen.setdefault(g["phrase"], []).extend(xyxy(b) for b in g["boxes"])
        out += [Phrase(i, text, unique_boxes(boxes) if unique else np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
                for text, boxes in seen.items() if boxes]
    return out


def predict(runner, rows: Sequence[Row], phrases: Sequence[Phrase]) -> RawDetections:
    per_row: list[list[str]] = [[] for _ in rows]
    for p in phrases:
        per_row[p.row].append(p.text)
    out = runner.detect(rows, per_row, desc="ground phrases")
    boxes, weights = [], []
    cursor = [0] * len(rows)
    for p in phrases:
        b, w, _ = out[p.row]
        boxes.append(b[cursor[p.row]])
        weights.append(w[cursor[p.row]])
        cursor[p.row] += 1
    return RawDetections(np.stack(boxes)[:, None], np.stack(weights)[:, None], np.zeros((len(phrases), 1)))


def oracle(phrases: Sequence[Phrase], m: int = 3, seed: int = 0) -> RawDetections:
    from evaluation.task_detection import oracle as od_oracle

    return od_oracle([{0: p.boxes} for p in phrases], 1, m, seed)


def chance(phrases: Sequence[Phrase], m: int = 3, seed: int = 0) -> RawDetections:
    return _chance(len(phrases), 1, m, seed)


def finalized(raw: RawDetections, phrases: Sequence[Phrase], pp: BoxPostprocess):
    for i, p in enumerate(phrases):
        boxes, scores = finalize(scale_boxes(raw.boxes[i, 0], pp.class_scale(0)), raw.weights[i, 0], pp)
        yield p, boxes, scores


def metric_inputs(raw: RawDetections, phrases: Sequence[Phrase], pp: BoxPostprocess):
    """(overlap counts (P, T, 2), COCO matches) for scoring and bootstrapping."""
    counts, boxes = [], []
    for p, b, s in finalized(raw, phrases, pp):
        counts.append(overlaps(b, s, p.boxes))
        boxes.append(ImageBoxes({0: b}, {0: s}, {0: p.boxes}))
    return np.stack(counts) if counts else np.zeros((0, 5, 2), int), match(boxes, 1)


def metrics(counts: np.ndarray, matches, weights: np.ndarray | None = None) -> dict[str, float]:
    m = map_metrics(matches, ["phrase"], weights)
    return {**miou_metrics(counts, weights), **{k: v for k, v in m.items() if not k.startswith("AP/")}}


def search(raw: RawDetections, phrases: Sequence[Phrase], start: BoxPostprocess, scales: Sequence[float],
           nms_values: Sequence[float], by: str = "mAP") -> tuple[BoxPostprocess, dict]:
    """Validation search of the global box scale, then the NMS IoU. ``by="mAP"``: the paper's (a tie keeps the later
    option); ``by="mIoU"``: ours (a tie keeps the first), the metric the task reports first."""
    if by not in ("mAP", "mIoU"):
        raise ValueError(f"grounding selection metric {by!r} is not mAP or mIoU")

    def evaluate(pp: BoxPostprocess) -> float:
        done = list(finalized(raw, phrases, pp))
        if by == "mIoU":
            value = miou_metrics(np.stack([overlaps(b, s, p.boxes) for p, b, s in done]))["mIoU"]
        else:
            value = map_metrics(match([ImageBoxes({0: b}, {0: s}, {0: p.boxes}) for p, b, s in done], 1), ["phrase"])["mAP"]
        return value if value == value else -1.0

    best, trace = greedy_search(evaluate, start, scales, (), nms_values, search_mode=False, later_ties=by == "mAP")
    return best, {"selected_by": by, **trace}
