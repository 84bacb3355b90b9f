"""Turning raw multi-box outputs into scored detections (box scale, scoring mode and temperature, NMS or top-1 box
fusion), and the reference's greedy search of those settings on the validation split."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from chex_model import box_ops

MODES = ("weights", "prompts", "both")


@dataclass
class BoxPostprocess:
    """How a prompt's M boxes become detections. ``scale`` multiplies w and h about the centre (one value per class,
    or one for all); ``mode``: score = box weight, P(positive prompt) = sigmoid(margin / T), or their product;
    ``fusion``: "nms" at ``nms`` IoU (None: keep all) or "top1" (the enclosing box, scored by the max)."""

    mode: str = "weights"
    temperature: float = 0.1
    nms: float | None = 0.25
    fusion: str = "nms"
    scale: list[float] = field(default_factory=lambda: [1.0])

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"scoring mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.fusion not in ("nms", "top1"):
            raise ValueError(f"box fusion {self.fusion!r} is not nms or top1")

    def class_scale(self, c: int) -> float:
        return self.scale[c] if len(self.scale) > 1 else self.scale[0]


def scale_boxes(xyxy: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return xyxy
    c = (xyxy[..., :2] + xyxy[..., 2:]) / 2
    half = (xyxy[..., 2:] - xyxy[..., :2]) / 2 * factor
    return np.clip(np.concatenate((c - half, c + half), -1), 0.0, 1.0)


def box_scores(weights: np.ndarray, margin: float, pp: BoxPostprocess) -> np.ndarray:
    p = 1.0 / (1.0 + np.exp(-margin / pp.temperature))
    if pp.mode == "weights":
        return weights
    if pp.mode == "prompts":
        return np.full_like(weights, p)
    return weights * p


def finalize(boxes: np.ndarray, scores: np.ndarray, pp: BoxPostprocess) -> tuple[np.ndarray, np.ndarray]:
    """(M, 4) xyxy boxes and their scores -> the kept detections."""
    if pp.fusion == "top1":
        enclosing = np.concatenate((boxes[:, :2].min(0), boxes[:, 2:].max(0)))[None]
        return enclosing, scores.max(keepdims=True)
    if pp.nms is None or len(boxes) < 2:
        return boxes, scores
    keep = box_ops.nms(torch.as_tensor(boxes), torch.as_tensor(scores), pp.nms).numpy()
    return boxes[keep], scores[keep]


def best_of(options: Sequence[BoxPostprocess], evaluate: Callable[[BoxPostprocess], float], later_ties: bool) -> BoxPostprocess:
    """The option with the highest value; among equal values the later one (the reference's ``>=`` sweeps) or the
    first. Each option is evaluated once."""
    best, best_value = options[0], evaluate(options[0])
    for option in options[1:]:
        value = evaluate(option)
        if value > best_value or (later_ties and value == best_value):
            best, best_value = option, value
    return best


def greedy_search(evaluate: Callable[[BoxPostprocess], float], start: BoxPostprocess, scales: Sequence[float],
                  temperatures: Sequence[float], nms_values: Sequence[float], per_class_scale: Callable[[BoxPostprocess], list[float]] | None = None,
                  search_mode: bool = True, later_ties: bool = True) -> tuple[BoxPostprocess, dict[str, float]]:
    """The reference's order: box scale, then scoring mode (weights, prompts, both x T), then NMS IoU (only when NMS
    is used). ``evaluate`` scores a setting on the validation split (higher is better); ``later_ties``: a tie keeps
    the later option, as the reference's sweeps, else the first. ``per_class_scale`` (when given) picks one scale per
    class from the candidate scales instead of one global scale."""
    best = start
    trace: dict[str, float] = {}
    if per_class_scale is not None:
        best = replace(best, scale=per_class_scale(best))
    else:
        best = best_of([replace(best, scale=[s]) for s in scales], evaluate, later_ties)
    trace["after_scale"] = evaluate(best)
    if search_mode:
        options = [replace(best, mode="weights")] + [replace(best, mode=m, temperature=t) for m in ("prompts", "both") for t in temperatures]
        best = best_of(options, evaluate, later_ties)
        trace["after_mode"] = evaluate(best)
    if best.fusion == "nms" and best.nms is not None:
        best = best_of([replace(best, nms=v) for v in nms_values], evaluate, later_ties)
        trace["after_nms"] = evaluate(best)
    return best, trace
