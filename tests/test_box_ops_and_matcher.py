"""Torch box geometry against pycocotools / brute force, and the balanced Hungarian matcher against exhaustive search."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from chex_model import box_ops
from chex_model.matcher import balanced_match


def _random_xyxy(rng: np.random.Generator, n: int) -> np.ndarray:
    a = rng.uniform(0, 1, (n, 2, 2))
    lo, hi = a.min(1), a.max(1)
    hi = np.maximum(hi, lo + 0.01)
    return np.concatenate([lo, hi], axis=1)


def test_iou_and_giou_match_pycocotools() -> None:
    rng = np.random.default_rng(0)
    a, b = _random_xyxy(rng, 17), _random_xyxy(rng, 11)
    a[3] = b[2]  # identical pair
    to_xywh = lambda x: np.column_stack([x[:, 0], x[:, 1], x[:, 2] - x[:, 0], x[:, 3] - x[:, 1]]) * 1000  # noqa: E731
    expected_iou = mask_utils.iou(to_xywh(a).tolist(), to_xywh(b).tolist(), [0] * len(b))
    iou = box_ops.box_iou(torch.tensor(a), torch.tensor(b)).numpy()
    np.testing.assert_allclose(iou, expected_iou, atol=1e-9)
    assert iou[3, 2] == pytest.approx(1.0)
    giou = box_ops.generalized_box_iou(torch.tensor(a), torch.tensor(b)).numpy()
    for i, j in itertools.product(range(len(a)), range(len(b))):
        area_a = (a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1])
        area_b = (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1])
        inter = expected_iou[i, j] * (area_a + area_b) / (1 + expected_iou[i, j])
        union = area_a + area_b - inter
        hull = (max(a[i, 2], b[j, 2]) - min(a[i, 0], b[j, 0])) * (max(a[i, 3], b[j, 3]) - min(a[i, 1], b[j, 1]))
        assert giou[i, j] == pytest.approx(expected_iou[i, j] - (hull - union) / hull, abs=1e-9)
    assert (giou <= iou + 1e-12).all() and (giou >= -1).all()


def test_conversions_enclosing_box_and_nms() -> None:
    xyxy = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.3, 0.1, 0.4, 0.9], [0.6, 0.6, 0.7, 0.7]])
    torch.testing.assert_close(box_ops.cxcywh_to_xyxy(box_ops.xyxy_to_cxcywh(xyxy)), xyxy)
    torch.testing.assert_close(box_ops.enclosing_box(xyxy, torch.tensor([True, True, False])), torch.tensor([0.1, 0.1, 0.5, 0.9]))
    assert box_ops.enclosing_box(xyxy, torch.zeros(3, dtype=torch.bool)).abs().sum() == 0
    rng = np.random.default_rng(1)
    boxes = torch.tensor(_random_xyxy(rng, 40))
    scores = torch.tensor(rng.uniform(size=40))
    keep = box_ops.nms(boxes, scores, 0.3).tolist()
    iou = box_ops.box_iou(boxes, boxes)
    for i, j in itertools.combinations(keep, 2):
        assert iou[i, j] <= 0.3
    for s in set(range(40)) - set(keep):  # every suppressed box overlaps a kept, higher-scoring one
        assert any(iou[s, k] > 0.3 and scores[k] >= scores[s] for k in keep)


def _brute_force(cost: np.ndarray) -> float:
    """Cheapest injective assignment of every prediction to a slot of the tiled, penalized target list."""
    p, t = cost.shape
    copies = max(1, math.ceil(p / t))
    spread = cost.max() - cost.min() + 1.0
    slots = [(c, j) for c in range(copies) for j in range(t)]
    best = math.inf
    for chosen in itertools.permutations(range(len(slots)), min(p, len(slots))):
        total = sum(cost[i, slots[s][1]] + slots[s][0] * spread for i, s in enumerate(chosen))
        best = min(best, total)
    return best


@pytest.mark.parametrize("shape", [(3, 1), (3, 2), (3, 3), (2, 3), (4, 3), (3, 5)])
def test_balanced_match_is_optimal_and_covers_targets(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        cost = rng.uniform(0, 10, shape)
        pred, tgt, first = balanced_match(cost)
        p, t = shape
        copies = max(1, math.ceil(p / t))
        spread = cost.max() - cost.min() + 1.0
        copy_index = np.zeros(len(pred))
        # reconstruct the tiled cost of the returned assignment: first copies cost nothing extra
        seen: dict[int, int] = {}
        for k, j in enumerate(tgt):
            copy_index[k] = 0 if first[k] else 1 + seen.get(j, 0)
            seen[j] = seen.get(j, 0) + (0 if first[k] else 1)
        total = float(cost[pred, tgt].sum() + (copy_index * spread).sum())
        assert total == pytest.approx(_brute_force(cost))
        assert len(pred) == min(p, t * copies) and len(set(pred.tolist())) == len(pred)
        assert first.sum() == min(p, t)
        if p >= t:
            assert set(tgt.tolist()) == set(range(t))


def test_paired_generalized_iou_is_the_diagonal_of_the_pairwise_one() -> None:
    import torch

    from chex_model import box_ops

    g = torch.Generator().manual_seed(0)
    a = box_ops.cxcywh_to_xyxy(torch.rand(50, 4, generator=g) * 0.5 + 0.2)
    b = box_ops.cxcywh_to_xyxy(torch.rand(50, 4, generator=g) * 0.5 + 0.2)
    paired = box_ops.paired_generalized_iou(a, b)
    assert torch.allclose(paired, torch.diag(box_ops.generalized_box_iou(a, b)), atol=1e-6)
    assert torch.allclose(box_ops.paired_generalized_iou(a[:, None], b[None]), box_ops.generalized_box_iou(a, b), atol=1e-6)
