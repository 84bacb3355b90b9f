"""Loss terms as pure functions (the trainer weights and sums them): box matching + L1/gIoU, focal box scores, dense
grounding of the box queries' reference maps, pathology and anatomy InfoNCE against positive / "No X" prompts,
sentence and global contrastive, MSE."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from chex_model import box_ops
from chex_model.config import LossConfig
from chex_model.matcher import balanced_match


def focal_loss(probs: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """Binary focal loss on probabilities; alpha = (negatives + 1) / (all + 2) over the batch weights the positives."""
    targets = targets.float()
    alpha = (targets.numel() - targets.sum() + 1) / (targets.numel() + 2)
    p = probs.clamp(1e-6, 1 - 1e-6)
    pos = -alpha * (1 - p) ** gamma * torch.log(p)
    neg = -(1 - alpha) * p**gamma * torch.log(1 - p)
    return torch.where(targets > 0.5, pos, neg).mean()


def match_boxes(
    boxes: Tensor, scores: Tensor, targets: Tensor, target_mask: Tensor, prompt_mask: Tensor, cfg: LossConfig,
    cls_prob: Tensor | None = None,
) -> np.ndarray:
    """Match every supervised prompt's boxes to its targets by 5 L1 + 2 (1 - gIoU) + 1 (1 - p_cls) + 3 (1 - score)
    (see :func:`~chex_model.matcher.balanced_match`): rows ``(n, q, box, target, first_copy)``, int64.

    All cost matrices come from one batched computation and one host transfer; only the assignment solves run per
    prompt. Shapes as in :func:`detection_losses`; ``cls_prob (N, Q, M)``."""
    with torch.no_grad():
        b, t = boxes.detach().float()[..., :, None, :], targets.detach().float()[..., None, :, :]
        cost = cfg.match_l1 * (b - t).abs().sum(-1)  # (N, Q, M, T)
        cost += cfg.match_giou * (1 - box_ops.paired_generalized_iou(box_ops.cxcywh_to_xyxy(b), box_ops.cxcywh_to_xyxy(t)))
        cost += cfg.match_score * (1 - scores.detach().float())[..., None]
        if cls_prob is not None:
            cost += cfg.match_cls * (1 - cls_prob.detach().float())[..., None]
        valid = (target_mask & prompt_mask[..., None])[:, :, None, :]
        cost = cost.masked_fill(~valid, float("inf")).cpu().numpy()
    rows = []
    for n, q in zip(*np.nonzero(np.isfinite(cost[:, :, 0]).any(-1))):
        cols = np.flatnonzero(np.isfinite(cost[n, q, 0]))
        pred, tgt, first = balanced_match(cost[n, q][:, cols])
        rows.append(np.stack([np.full_like(pred, n), np.full_like(pred, q), pred, cols[tgt], first], axis=1))
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 5), np.int64)


@dataclass
class BoxLosses:
    terms: dict[str, Tensor]  # "l1", "giou", "score"
    assigned: Tensor  # (N, Q, M, 4) the target box each predicted box was matched to
    assigned_mask: Tensor  # (N, Q, M) boxes that were matched

    def per_box_targets(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(targets, target_mask, prompt_mask)`` with every box its own prompt (``Q * M`` prompts, one target
        each): what :func:`grounding_loss` needs to pull each box query to its own matched target."""
        n, q, m, _ = self.assigned.shape
        mask = self.assigned_mask.reshape(n, q * m)
        return self.assigned.reshape(n, q * m, 1, 4), mask[..., None], mask


def detection_losses(
    boxes: Tensor, scores: Tensor, targets: Tensor, target_mask: Tensor, prompt_mask: Tensor, cfg: LossConfig,
    cls_prob: Tensor | None = None, mean_per_prompt: Tensor | None = None,
) -> BoxLosses:
    """Box L1 (summed over coordinates) and gIoU loss averaged over all matched (prediction, target) pairs of prompts
    with targets, and the focal loss of every box score (1 for first-copy matches, else 0; prompts without targets
    push all their scores to 0).

    Shapes: boxes ``(N, Q, M, 4)``, scores ``(N, Q, M)``, targets ``(N, Q, T, 4)`` with ``target_mask (N, Q, T)``,
    ``prompt_mask (N, Q)`` marks supervised prompts. A prompt marked in ``mean_per_prompt (Q,)`` counts as
    ``cfg.multi_region_weight`` terms (the reference: once), with the mean over its pairs, instead of once per pair
    (the reference's weighting of multi-region anatomy prompts).
    """
    score_target = torch.zeros_like(scores)
    assigned, assigned_mask = torch.zeros_like(boxes).detach(), torch.zeros_like(scores, dtype=torch.bool)
    matches = torch.from_numpy(match_boxes(boxes, scores, targets, target_mask, prompt_mask, cfg, cls_prob))
    n, q, p, t, first = matches.to(boxes.device).unbind(1)
    first = first.bool()
    pb, tb = boxes[n, q, p], targets[n, q, t].to(boxes.dtype)
    w = torch.ones(len(n), device=boxes.device)
    if mean_per_prompt is not None and len(n):  # a multi-region prompt counts as its mean, weighted once
        key = n * prompt_mask.shape[1] + q
        per_prompt = torch.bincount(key)[key].float()
        w = torch.where(mean_per_prompt[q].bool(), cfg.multi_region_weight / per_prompt, w)
    score_target[n[first], q[first], p[first]] = 1.0
    assigned[n, q, p], assigned_mask[n, q, p] = tb.detach(), True
    sel = prompt_mask[..., None].expand_as(scores)
    out = {"score": focal_loss(scores[sel], score_target[sel], cfg.focal_gamma) if sel.any() else scores.sum() * 0}
    if len(n):
        w = (w / w.sum()).to(pb.dtype)
        out["l1"] = ((pb - tb).abs().sum(-1) * w).sum()
        giou = box_ops.paired_generalized_iou(box_ops.cxcywh_to_xyxy(pb), box_ops.cxcywh_to_xyxy(tb))
        out["giou"] = ((1 - giou) * w).sum()
    else:
        out["l1"] = out["giou"] = boxes.sum() * 0
    return BoxLosses(out, assigned, assigned_mask)


def cells_in_boxes(boxes: Tensor, grid_h: int, grid_w: int) -> Tensor:
    """``(..., h * w)`` True where a patch cell's centre lies inside any of ``boxes (..., T, 4)`` (cx, cy, w, h), each
    box widened to at least one cell so that a lesion smaller than a cell still marks the cell it lies in."""
    xs = (torch.arange(grid_w, device=boxes.device, dtype=boxes.dtype) + 0.5) / grid_w
    ys = (torch.arange(grid_h, device=boxes.device, dtype=boxes.dtype) + 0.5) / grid_h
    inx = (xs - boxes[..., 0:1]).abs() <= boxes[..., 2:3].clamp(min=1 / grid_w) / 2  # (..., T, w)
    iny = (ys - boxes[..., 1:2]).abs() <= boxes[..., 3:4].clamp(min=1 / grid_h) / 2  # (..., T, h)
    return (iny[..., :, None] & inx[..., None, :]).flatten(-2).any(-2)


def grounding_loss(logits: Tensor, targets: Tensor, target_mask: Tensor, prompt_mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """Dense supervision of the box queries' reference maps: ``-log`` of the softmax mass that each query of a prompt
    with targets puts on the cells inside its target boxes, averaged over those queries; prompts whose targets cover
    no cell centre are skipped. Shapes: ``logits (N, Q, M, h * w)``, targets ``(N, Q, T, 4)`` with ``target_mask
    (N, Q, T)``, ``prompt_mask (N, Q)`` the supervised prompts.

    A box's reference centre is the softmax-weighted mean of the cell centres, so this pulls it into the target box
    however rare lesion cells are (a per-cell BCE is satisfied by calling every cell negative)."""
    # a masked-out target becomes a box far outside the image, which contains no cell centre
    boxes = torch.where(target_mask[..., None], targets.to(logits.dtype), torch.full_like(targets, -9.0, dtype=logits.dtype))
    cells = cells_in_boxes(boxes, *grid)  # (N, Q, h * w)
    inside = cells[:, :, None].expand_as(logits)
    used = (prompt_mask & cells.any(-1))[:, :, None].expand(logits.shape[:3])  # e.g. not a box cropped off the image
    if not used.any():
        return logits.sum() * 0
    log_mass = torch.logsumexp(logits.masked_fill(~inside, float("-inf")), dim=-1) - torch.logsumexp(logits, dim=-1)
    return -log_mass[used].mean()


def cosine_logits(features: Tensor, prompts: Tensor, temperature: float) -> Tensor:
    return F.normalize(features, dim=-1) @ F.normalize(prompts, dim=-1).T / temperature


def pathology_infonce(features: Tensor, labels: Tensor, pos: Tensor, neg: Tensor, temperature: float) -> Tensor:
    """Each class query's ROI token ``(K, d)`` against all 2C prompts [pos_1..pos_C, "No X"_1..C] (softmax over 2C);
    the target is its class's positive prompt if present, else its "No X" prompt. ``labels (K,)`` are class
    indices with the sign encoding presence: ``labels = c`` present, ``labels = c + C`` absent."""
    logits = cosine_logits(features, torch.cat((pos, neg)), temperature)
    return F.cross_entropy(logits, labels)


def anatomy_infonce(
    features: Tensor, labels: Tensor, pos: Tensor, neg: Tensor, temperature: float, n_negatives: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Multi-positive InfoNCE per region ROI token ``(R, d)`` over F findings with ``labels (R, F)`` in {1, 0, -1}.

    Positives: "X" of present findings and "No X" of absent ones; negatives: the opposite prompts. Absent findings are
    subsampled to ``n_negatives`` per region, drawn in proportion to how often each finding is present in the batch
    (hard, informative negatives first); -1 (unknown) findings are ignored. Each positive is contrasted with all
    negatives of its region; the loss is the mean over positives.
    """
    lp = cosine_logits(features, pos, temperature)  # (R, F)
    ln = cosine_logits(features, neg, temperature)
    present, absent = labels == 1, labels == 0
    counts = present.sum(0).float() + 1e-3
    keep_absent = torch.zeros_like(absent)
    for r in range(labels.shape[0]):
        idx = absent[r].nonzero().squeeze(-1)
        if len(idx) > n_negatives:
            w = counts[idx] / counts[idx].sum()
            idx = idx[torch.multinomial(w.cpu(), n_negatives, replacement=False, generator=generator).to(idx.device)]
        keep_absent[r, idx] = True
    pos_logits = torch.where(present, lp, ln)  # the prompt that is true for each finding
    neg_logits = torch.where(present, ln, lp)
    used = present | keep_absent
    neg_all = neg_logits.masked_fill(~used, float("-inf"))
    neg_lse = torch.logsumexp(neg_all, dim=-1, keepdim=True)  # (R, 1)
    per_pos = -(pos_logits - torch.logaddexp(pos_logits, neg_lse.expand_as(pos_logits)))
    if not used.any():
        return features.sum() * 0
    return per_pos[used].mean()


def anatomy_infonce_reference(
    features: Tensor, labels: Tensor, pos: Tensor, neg: Tensor, temperature: float, n_negatives: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The reference's multi-positive InfoNCE per region ROI token ``(R, d)`` over F findings, ``labels (R, F)`` in
    {1, 0, -1}: per region, -mean(positive logits) + logsumexp(positive and negative logits), averaged over regions.

    Positives: "X" of present findings, "No X" of absent findings in a subset of ``n_negatives`` classes drawn once
    for the batch (without replacement, in proportion to each class's positives in the batch); negatives: "No X" of
    present and "X" of those absent findings. A region left with no positive (nothing present, no sampled absent
    class) is skipped: the reference's loss would be -inf there.
    """
    lp, ln = cosine_logits(features, pos, temperature), cosine_logits(features, neg, temperature)
    present, absent = labels == 1, labels == 0
    base = (labels >= 0).any(0)
    if labels.shape[1] > n_negatives:
        drawn = torch.multinomial(present.sum(0).float().cpu() + 1e-7, n_negatives, replacement=False, generator=generator)
        base = base & torch.zeros_like(base).index_fill(0, drawn.to(base.device), True)
    scores = torch.cat((lp, ln), dim=-1)
    pos_mask = torch.cat((present, absent & base), dim=-1)
    neg_mask = torch.cat((absent & base, present), dim=-1) | pos_mask
    used = pos_mask.any(-1)
    if not used.any():
        return features.sum() * 0
    pos_loss = -(scores * pos_mask).sum(-1) / pos_mask.sum(-1).clamp(min=1)
    neg_loss = torch.logsumexp(scores.masked_fill(~neg_mask, float("-inf")), dim=-1)
    return (pos_loss + neg_loss)[used].mean()


def contrastive(a: Tensor, b: Tensor, temperature: float, same: Tensor | None = None, symmetric: bool = False) -> Tensor:
    """InfoNCE matching row i of ``a`` to row i of ``b`` among all rows of ``b``; ``same (K, K)`` marks other pairs
    that are equally true (e.g. identical sentences in two images) and are not used as negatives."""
    logits = cosine_logits(a, b, temperature)
    target = torch.arange(len(a), device=a.device)
    if same is not None:
        off = same & ~torch.eye(len(a), dtype=torch.bool, device=a.device)
        logits = logits.masked_fill(off, float("-inf"))
    loss = F.cross_entropy(logits, target)
    if symmetric:
        logits_t = logits.T if same is None else cosine_logits(b, a, temperature).masked_fill(off.T, float("-inf"))
        loss = (loss + F.cross_entropy(logits_t, target)) / 2
    return loss


def squared_error(pred: Tensor, target: Tensor) -> Tensor:
    """Sum of squared differences per row, averaged over rows."""
    return ((pred - target) ** 2).sum(-1).mean()
