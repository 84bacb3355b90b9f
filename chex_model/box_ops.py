"""Box geometry on torch tensors (torchvision is not a dependency). Boxes are normalized (cx, cy, w, h) or (x1, y1, x2, y2)."""
from __future__ import annotations

import torch
from torch import Tensor


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_area(xyxy: Tensor) -> Tensor:
    return (xyxy[..., 2] - xyxy[..., 0]).clamp(min=0) * (xyxy[..., 3] - xyxy[..., 1]).clamp(min=0)


def _inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter, union


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes ``(A, 4) x (B, 4) -> (A, B)``; 0 where both boxes are empty."""
    inter, union = _inter_union(a, b)
    return inter / union.clamp(min=1e-12)


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of xyxy boxes ``a[..., 4]`` and ``b[..., 4]`` pair by pair (broadcasting): ``(...)``."""
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (box_area(a) + box_area(b) - inter).clamp(min=1e-12)


def paired_generalized_iou(a: Tensor, b: Tensor) -> Tensor:
    """Generalized IoU of xyxy boxes ``a[..., 4]`` and ``b[..., 4]`` pair by pair (broadcasting): ``(...)``."""
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a) + box_area(b) - inter
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    return inter / union.clamp(min=1e-12) - (hull - union) / hull.clamp(min=1e-12)


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019) of xyxy boxes, in [-1, 1]."""
    inter, union = _inter_union(a, b)
    iou = inter / union.clamp(min=1e-12)
    lt = torch.minimum(a[:, None, :2], b[None, :, :2])
    rb = torch.maximum(a[:, None, 2:], b[None, :, 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-12)


def enclosing_box(xyxy: Tensor, mask: Tensor | None = None) -> Tensor:
    """Smallest box around ``xyxy (..., K, 4)``, over the boxes where ``mask (..., K)`` is true; zeros if none is."""
    if mask is None:
        mask = torch.ones(xyxy.shape[:-1], dtype=torch.bool, device=xyxy.device)
    big = torch.finfo(xyxy.dtype).max
    m = mask[..., None]
    lo = torch.where(m, xyxy[..., :2], torch.full_like(xyxy[..., :2], big)).amin(-2)
    hi = torch.where(m, xyxy[..., 2:], torch.full_like(xyxy[..., 2:], -big)).amax(-2)
    out = torch.cat((lo, hi), dim=-1)
    return torch.where(mask.any(-1, keepdim=True), out, torch.zeros_like(out))


def nms(xyxy: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of boxes kept by greedy non-maximum suppression, highest score first."""
    order = scores.argsort(descending=True)
    iou = box_iou(xyxy, xyxy)
    keep: list[int] = []
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.long)


def clip_unit(xyxy: Tensor) -> Tensor:
    return xyxy.clamp(0.0, 1.0)
