"""Gaussian ROI pooling: a box becomes a soft, differentiable weighting of the patch grid."""
from __future__ import annotations

import torch
from torch import Tensor


def gaussian_roi_weights(boxes: Tensor, grid_h: int, grid_w: int, beta: float = 2.0, min_size: float = 1e-3) -> Tensor:
    """Weights ``(..., grid_h * grid_w)`` summing to 1 over the patch cells, for boxes ``(..., 4)`` in (cx, cy, w, h).

    ``m(x, y) = exp(-(|x - cx| / w)^beta - (|y - cy| / h)^beta)`` at the patch centres (sigma = the full box side,
    as in the reference), normalized to sum 1 so that pooled features do not grow with the box (the reference sums).
    A softmax over the log-weights does the normalization without underflow for tiny boxes between cell centres.
    """
    xs = (torch.arange(grid_w, device=boxes.device, dtype=boxes.dtype) + 0.5) / grid_w
    ys = (torch.arange(grid_h, device=boxes.device, dtype=boxes.dtype) + 0.5) / grid_h
    cx, cy, w, h = (boxes[..., i : i + 1] for i in range(4))
    dx = ((xs - cx).abs() / w.clamp(min=min_size)) ** beta  # (..., grid_w)
    dy = ((ys - cy).abs() / h.clamp(min=min_size)) ** beta  # (..., grid_h)
    logits = -(dy[..., :, None] + dx[..., None, :])
    return torch.softmax(logits.flatten(-2), dim=-1)


def gaussian_roi_pool(features: Tensor, boxes: Tensor, beta: float = 2.0) -> Tensor:
    """Pool ``features (N, h, w, d)`` under ``boxes (N, K, 4)`` -> ``(N, K, d)`` (weighted mean over patch cells).

    The weights are computed in the boxes' precision and then take the features' (bf16 under DeepSpeed)."""
    n, gh, gw, d = features.shape
    weights = gaussian_roi_weights(boxes, gh, gw, beta).to(features.dtype)
    return torch.bmm(weights, features.reshape(n, gh * gw, d))
