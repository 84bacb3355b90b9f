"""DETR-style prompt detector: M box queries per prompt -> boxes, box scores, and one ROI token per prompt."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from chex_model import box_ops
from chex_model.config import DetectorConfig
from chex_model.layers import DecoderLayer, block_mask, mlp
from chex_model.roi_pool import gaussian_roi_pool


@dataclass
class Detections:
    """Detector output for N images x Q prompts (padded prompts have ``mask`` False)."""

    boxes: Tensor  # (N, Q, M, 4) cx, cy, w, h in [0, 1]
    box_scores: Tensor  # (N, Q, M) probability that each box shows the prompt
    box_features: Tensor  # (N, Q, M, d)
    features: Tensor  # (N, Q, d) score-weighted mean of the box features: the prompt's ROI token
    score: Tensor  # (N, Q) score-weighted mean box score
    box: Tensor  # (N, Q, 4) enclosing box of the present boxes (the best box when none is present)
    mask: Tensor  # (N, Q)
    reference_logits: Tensor | None = None  # (N, Q, M, h * w) query . patch logits behind the box centres (box_reference)
    detector_features: Tensor | None = None  # (N, Q, d) the ROI tokens before the post decoder refined ``features``
    query_tokens: Tensor | None = None  # (N, Q, M, d) the decoded box queries (what the skip connection fuses)




def source_tokens(patches: Tensor, pos: Tensor) -> Tensor:
    n, gh, gw, d = patches.shape
    return (patches + pos).reshape(n, gh * gw, d)


class PromptDetector(nn.Module):
    def __init__(self, d: int, cfg: DetectorConfig, dropout: float) -> None:
        super().__init__()
        self.cfg = cfg
        m = cfg.n_boxes
        self.region_tokens = nn.Parameter(torch.randn(m, d) / math.sqrt(d))
        self.layers = nn.ModuleList(
            DecoderLayer(d, cfg.n_heads, cfg.ff_mult, dropout, cfg.attn_dropout, cfg.droppath, cfg.layer_scale, False)
            for _ in range(cfg.n_layers)
        )
        self.box_head = nn.Sequential(nn.LayerNorm(d), mlp(d, d, 4, dropout))
        self.patch_proj = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.Dropout(dropout if cfg.projector_dropout else 0.0))
        self.skip_dropout = nn.Dropout(cfg.skip_roi_dropout)
        self.out_proj = nn.Sequential(nn.LayerNorm(d), mlp(d, cfg.ff_mult * d, d, dropout, dropout_last=cfg.projector_dropout))
        self.score_head = mlp(d, d, 1, dropout)
        if cfg.box_reference:
            self.ref_query = nn.Linear(d, d)
            # no key biases: a shift shared by all cells cancels in the softmax, so they would only collect float noise
            self.ref_key = nn.Sequential(nn.LayerNorm(d, bias=False), nn.Linear(d, d, bias=False))

    def forward(self, patches: Tensor, pos: Tensor, prompts: Tensor, mask: Tensor) -> Detections:
        n, q, d = prompts.shape
        m = self.cfg.n_boxes
        x = (prompts[:, :, None, :] + self.region_tokens).reshape(n, q * m, d)
        group = torch.arange(q, device=x.device).repeat_interleave(m).expand(n, -1)
        valid = mask.repeat_interleave(m, dim=1)
        sa_mask = block_mask(group, valid)
        source = source_tokens(patches, pos)
        for layer in self.layers:
            x = layer(x, source, sa_mask)
        raw, logits = self.box_head(x), None
        if self.cfg.box_reference:
            logits = self.reference_logits(x, patches)
            centre = self.reference(logits, patches.shape[1:3]) + self.cfg.reference_shift * torch.tanh(raw[..., :2])
            boxes = torch.cat((centre.clamp(0.0, 1.0), torch.sigmoid(raw[..., 2:])), dim=-1)
        else:
            boxes = torch.sigmoid(raw)
        roi = gaussian_roi_pool(self.patch_proj(patches), boxes, self.cfg.roi_beta)
        if self.training:
            skip = torch.rand(n, q * m, 1, device=x.device) < self.cfg.skip_roi_prob
            feat = torch.where(skip, (self.skip_dropout(x) + roi) / 2, roi)
        elif self.cfg.skip_roi_inference:
            feat = (x + roi) / 2
        else:
            feat = roi
        box_features = self.out_proj(feat).view(n, q, m, d)
        scores = torch.sigmoid(self.score_head(box_features)).squeeze(-1)
        det = aggregate(boxes.view(n, q, m, 4), scores, box_features, mask, self.cfg.present_threshold, self.cfg.feature_norm)
        det.query_tokens = x.view(n, q, m, d)
        if logits is not None:
            det.reference_logits = logits.view(n, q, m, -1)
        return det

    def reference_logits(self, x: Tensor, patches: Tensor) -> Tensor:
        """``(N, L, h * w)``: how strongly each box query finds its prompt in each patch cell."""
        n, gh, gw, d = patches.shape
        keys = self.ref_key(patches.reshape(n, gh * gw, d))
        return self.ref_query(x) @ keys.transpose(1, 2) / math.sqrt(d)

    @staticmethod
    def reference(logits: Tensor, grid: tuple[int, int]) -> Tensor:
        """Box centres ``(N, L, 2)``: the softmax(logits)-weighted mean of the cell centres. A box's position then
        depends on where its prompt is found, and the losses reach those cells' features directly (a DETR decoder
        trained from scratch takes far longer to tie its boxes to the image)."""
        gh, gw = grid
        axis = {"device": logits.device, "dtype": logits.dtype}
        ys, xs = torch.meshgrid((torch.arange(gh, **axis) + 0.5) / gh, (torch.arange(gw, **axis) + 0.5) / gw, indexing="ij")
        return torch.softmax(logits, dim=-1) @ torch.stack((xs, ys), dim=-1).reshape(gh * gw, 2)

    def pool(self, patches: Tensor, boxes: Tensor, prompts: Tensor | None = None, has_prompt: Tensor | None = None) -> Tensor:
        """ROI tokens ``(N, K, d)`` for given boxes ``(N, K, 4)``, bypassing the box queries.

        Where ``has_prompt`` is true the pooled feature is fused with ``prompts`` (a decoded query token or a prompt
        embedding, ``(N, K, d)``) exactly as the skip connection fuses a detected box with its query token at
        inference (mean of the two).
        """
        roi = gaussian_roi_pool(self.patch_proj(patches), boxes, self.cfg.roi_beta)
        if prompts is not None and has_prompt is not None:
            roi = torch.where(has_prompt[..., None], (prompts + roi) / 2, roi)
        return self.out_proj(roi)


def aggregate(boxes: Tensor, scores: Tensor, box_features: Tensor, mask: Tensor, threshold: float,
              norm: str = "max1") -> Detections:
    """One ROI token, score and enclosing box per prompt from its M boxes; ``norm`` "max1" divides the score-weighted
    sum by max(1, sum of scores) (the reference), "sum" by the sum (a convex mean)."""
    weights = scores / scores.sum(-1, keepdim=True).clamp(min=1.0 if norm == "max1" else 1e-6)
    features = (weights[..., None] * box_features).sum(-2)
    score = (weights * scores).sum(-1)
    present = scores > threshold
    best = torch.nn.functional.one_hot(scores.argmax(-1), scores.shape[-1]).bool()
    chosen = torch.where(present.any(-1, keepdim=True), present, best)
    box = box_ops.xyxy_to_cxcywh(box_ops.enclosing_box(box_ops.cxcywh_to_xyxy(boxes), chosen))
    return Detections(boxes, scores, box_features, features, score, box, mask)
