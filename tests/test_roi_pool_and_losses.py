"""Gaussian ROI pooling and the loss functions against direct (loop / numpy) computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chex_model import losses
from chex_model.config import LossConfig
from chex_model.roi_pool import gaussian_roi_pool, gaussian_roi_weights


def test_full_image_box_over_constant_patches_returns_the_constant() -> None:
    feats = torch.full((2, 7, 7, 5), 3.25)
    boxes = torch.tensor([[[0.5, 0.5, 1.0, 1.0], [0.2, 0.7, 0.05, 0.3]]]).expand(2, -1, -1)
    pooled = gaussian_roi_pool(feats, boxes)
    torch.testing.assert_close(pooled, torch.full((2, 2, 5), 3.25))


def test_weights_follow_the_formula_and_sum_to_one() -> None:
    box = torch.tensor([0.3, 0.6, 0.4, 0.2], dtype=torch.float64)
    w = gaussian_roi_weights(box, 5, 6, beta=2.0).view(5, 6).numpy()
    expected = np.zeros((5, 6))
    for i in range(5):
        for j in range(6):
            x, y = (j + 0.5) / 6, (i + 0.5) / 5
            expected[i, j] = math.exp(-(abs(x - 0.3) / 0.4) ** 2 - (abs(y - 0.6) / 0.2) ** 2)
    np.testing.assert_allclose(w, expected / expected.sum(), rtol=1e-10)
    # a tiny box on one cell centre pools exactly that cell
    feats = torch.randn(1, 4, 4, 3, dtype=torch.float64)
    pooled = gaussian_roi_pool(feats, torch.tensor([[[0.625, 0.125, 1e-4, 1e-4]]], dtype=torch.float64))
    torch.testing.assert_close(pooled[0, 0], feats[0, 0, 2])


def test_pooling_is_differentiable_in_the_box() -> None:
    feats = torch.randn(1, 7, 7, 4)
    boxes = torch.tensor([[[0.4, 0.5, 0.3, 0.3]]], requires_grad=True)
    gaussian_roi_pool(feats, boxes).sum().backward()
    assert boxes.grad is not None and boxes.grad.abs().sum() > 0


def test_bf16_features_pool_under_fp32_boxes_like_fp32() -> None:
    """DeepSpeed bf16 holds the patch features in bf16 while boxes come from the data in fp32."""
    feats = torch.randn(2, 7, 7, 8)
    boxes = torch.tensor([[[0.4, 0.5, 0.3, 0.3], [0.7, 0.2, 0.1, 0.4]]]).expand(2, -1, -1)
    pooled = gaussian_roi_pool(feats.bfloat16(), boxes)
    assert pooled.dtype == torch.bfloat16
    torch.testing.assert_close(pooled.float(), gaussian_roi_pool(feats, boxes), rtol=0.02, atol=0.02)


def test_focal_loss_matches_the_formula() -> None:
    p = torch.tensor([0.9, 0.2, 0.6, 0.05])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    alpha = (2 + 1) / (4 + 2)
    expected = np.mean([
        -alpha * (1 - pi) ** 2 * math.log(pi) if yi else -(1 - alpha) * pi**2 * math.log(1 - pi)
        for pi, yi in zip(p.tolist(), y.tolist())
    ])
    assert losses.focal_loss(p, y, 2.0).item() == pytest.approx(expected, rel=1e-5)


def test_detection_losses_on_a_perfect_and_an_absent_prompt() -> None:
    cfg = LossConfig()
    target = torch.tensor([0.3, 0.4, 0.2, 0.2])
    boxes = torch.stack([target, target + 0.01, target - 0.01])[None, None]
    boxes = torch.cat([boxes, torch.rand(1, 1, 3, 4) * 0.5 + 0.25], dim=1)  # second prompt: no targets
    scores = torch.tensor([[[0.9, 0.1, 0.1], [0.3, 0.3, 0.3]]])
    targets = torch.zeros(1, 2, 2, 4)
    targets[0, 0, 0] = target
    tmask = torch.tensor([[[True, False], [False, False]]])
    out = losses.detection_losses(boxes, scores, targets, tmask, torch.ones(1, 2, dtype=torch.bool), cfg).terms
    # all three boxes of prompt 0 match the one target: L1 = mean of (0, 0.04, 0.04)
    assert out["l1"].item() == pytest.approx(0.08 / 3, abs=1e-6)
    # score targets: only box 0 of prompt 0 is a first-copy match
    alpha = (6 - 1 + 1) / (6 + 2)
    s = scores.flatten().tolist()
    terms = [-alpha * (1 - s[0]) ** 2 * math.log(s[0])] + [-(1 - alpha) * x**2 * math.log(1 - x) for x in s[1:]]
    assert out["score"].item() == pytest.approx(np.mean(terms), rel=1e-5)


def test_pathology_infonce_is_cross_entropy_over_pos_and_neg_prompts() -> None:
    g = torch.Generator().manual_seed(0)
    f, pos, neg = torch.randn(5, 8, generator=g), torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    labels = torch.tensor([0, 4, 2, 3, 1])  # c present, c + C absent
    loss = losses.pathology_infonce(f, labels, pos, neg, 0.2).item()
    prompts = F.normalize(torch.cat([pos, neg]), dim=-1).numpy()
    fn = F.normalize(f, dim=-1).numpy()
    expected = 0.0
    for i, y in enumerate(labels.tolist()):
        logits = fn[i] @ prompts.T / 0.2
        expected += -(logits[y] - np.log(np.exp(logits).sum()))
    assert loss == pytest.approx(expected / 5, rel=1e-5)


def test_presence_margin_pairs_each_query_with_its_own_prompts() -> None:
    from chex_model.presence import paired_margin

    torch.manual_seed(4)
    feats, pos, neg = torch.randn(3, 4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    margin = torch.tensor([[cos(feats[n, k], pos[k]) - cos(feats[n, k], neg[k]) for k in range(4)] for n in range(3)], dtype=torch.float64)
    torch.testing.assert_close(paired_margin(feats, pos, neg), margin)


def test_anatomy_infonce_multi_positive_against_a_loop() -> None:
    g = torch.Generator().manual_seed(1)
    f, pos, neg = torch.randn(3, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    labels = torch.tensor([[1, 0, -1, 0], [0, 0, 0, 0], [1, 1, 0, -1]])
    loss = losses.anatomy_infonce(f, labels, pos, neg, 0.25, n_negatives=10).item()
    cos = lambda a, b: float(F.normalize(a, dim=0) @ F.normalize(b, dim=0)) / 0.25  # noqa: E731
    terms = []
    for r in range(3):
        used = [c for c in range(4) if labels[r, c] >= 0]
        positives = [cos(f[r], pos[c] if labels[r, c] == 1 else neg[c]) for c in used]
        negatives = [cos(f[r], neg[c] if labels[r, c] == 1 else pos[c]) for c in used]
        for sp in positives:
            terms.append(-(sp - math.log(math.exp(sp) + sum(math.exp(sn) for sn in negatives))))
    assert loss == pytest.approx(np.mean(terms), rel=1e-5)


def test_anatomy_negatives_are_subsampled_to_the_budget() -> None:
    f, pos, neg = torch.randn(1, 8), torch.randn(30, 8), torch.randn(30, 8)
    labels = torch.zeros(1, 30, dtype=torch.long)
    labels[0, 0] = 1
    full = losses.anatomy_infonce(f, labels, pos, neg, 0.25, n_negatives=100)
    sub = [losses.anatomy_infonce(f, labels, pos, neg, 0.25, 3, torch.Generator().manual_seed(s)) for s in range(5)]
    assert all(not torch.isclose(s, full) for s in sub)  # fewer absent findings take part
    assert len({round(s.item(), 6) for s in sub}) > 1  # and which ones is random


def test_contrastive_ignores_duplicate_texts_as_negatives() -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    b[3] = b[1]
    same = torch.tensor([[i in (1, 3) and j in (1, 3) or i == j for j in range(4)] for i in range(4)])
    loss = losses.contrastive(a, b, 0.5, same=same).item()
    logits = (F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / 0.5).numpy()
    expected = []
    for i in range(4):
        cols = [j for j in range(4) if j == i or not same[i, j]]
        expected.append(-(logits[i, i] - np.log(np.exp(logits[i, cols]).sum())))
    assert loss == pytest.approx(np.mean(expected), rel=1e-5)
    sym = losses.contrastive(a, b, 0.5, symmetric=True).item()
    assert sym == pytest.approx((F.cross_entropy(torch.tensor(logits), torch.arange(4)) +
                                 F.cross_entropy(torch.tensor(logits.T), torch.arange(4))).item() / 2, rel=1e-5)


def test_cells_in_boxes_against_a_loop_and_tiny_boxes_keep_their_cell() -> None:
    rng = np.random.default_rng(0)
    gh, gw = 6, 8
    boxes = torch.tensor(rng.uniform([0.1, 0.1, 0.01, 0.01], [0.9, 0.9, 0.6, 0.6], size=(5, 3, 4)), dtype=torch.float64)
    got = losses.cells_in_boxes(boxes, gh, gw).numpy()
    for i in range(5):
        for cell in range(gh * gw):
            y, x = (cell // gw + 0.5) / gh, (cell % gw + 0.5) / gw
            want = any(abs(x - cx) <= max(w, 1 / gw) / 2 and abs(y - cy) <= max(h, 1 / gh) / 2
                       for cx, cy, w, h in boxes[i].tolist())
            assert got[i, cell] == want, (i, cell)
    tiny = losses.cells_in_boxes(torch.tensor([[[0.33, 0.71, 0.01, 0.01]]]), gh, gw)[0]
    assert tiny.nonzero().flatten().tolist() == [4 * gw + 2]  # row 4 (0.71 * 6), column 2 (0.33 * 8)


def test_grounding_loss_is_the_log_softmax_mass_inside_the_targets() -> None:
    from scipy.special import logsumexp

    torch.manual_seed(0)
    n, q, m, gh, gw = 2, 3, 2, 4, 4
    logits = torch.randn(n, q, m, gh * gw, dtype=torch.float64)
    targets = torch.tensor([[[[0.3, 0.3, 0.4, 0.4], [0.8, 0.8, 0.2, 0.2]]] * q] * n, dtype=torch.float64)
    target_mask = torch.tensor([[[True, True], [True, False], [False, False]], [[False, True], [True, True], [True, True]]])
    prompt_mask = torch.tensor([[True, True, True], [True, False, True]])
    got = losses.grounding_loss(logits, targets, target_mask, prompt_mask, (gh, gw))
    cells = [((c % gw + 0.5) / gw, (c // gw + 0.5) / gh) for c in range(gh * gw)]
    terms = []
    for i in range(n):
        for j in range(q):
            kept = [b for b, keep in zip(targets[i, j].tolist(), target_mask[i, j]) if keep]
            if not prompt_mask[i, j] or not kept:
                continue
            inside = [any(abs(x - cx) <= max(w, 1 / gw) / 2 and abs(y - cy) <= max(h, 1 / gh) / 2 for cx, cy, w, h in kept)
                      for x, y in cells]
            for k in range(m):
                row = logits[i, j, k].numpy()
                terms.append(logsumexp(row) - logsumexp(row[np.array(inside)]))
    assert len(terms) == 4 * m  # (0, 0), (0, 1), (1, 0), (1, 2): the prompts that are supervised and have a target
    assert got.item() == pytest.approx(np.mean(terms), rel=1e-12)
    assert losses.grounding_loss(logits, targets, target_mask, torch.zeros_like(prompt_mask), (gh, gw)).item() == 0.0
    off_image = targets.clone()
    off_image[0, 1, 0] = torch.tensor([-0.2, 0.5, 0.1, 0.1])  # prompt (0, 1)'s only target covers no cell
    leaf = logits.clone().requires_grad_()
    skipped = losses.grounding_loss(leaf, off_image, target_mask, prompt_mask, (gh, gw))
    assert skipped.item() == pytest.approx(np.mean(terms[:m] + terms[2 * m:]), rel=1e-12)
    skipped.backward()  # rows without a target cell go through logsumexp(-inf ...) and must not leak NaN
    assert torch.isfinite(leaf.grad).all() and leaf.grad[0, 1].abs().sum() == 0 and leaf.grad[0, 0].abs().sum() > 0
    sharp = torch.full_like(logits, -30.0)
    sharp[0, ..., 5] = 30.0  # image 0's queries on cell (1, 1), inside the first target box (0.1-0.5)
    sharp[1, ..., 15] = 30.0  # image 1's on cell (3, 3), inside the second (0.7-0.9)
    assert losses.grounding_loss(sharp, targets, target_mask, prompt_mask, (gh, gw)).item() < 1e-12


def test_reference_centres_are_the_attention_weighted_cell_centres() -> None:
    from chex_model.detector import PromptDetector

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 3 * 4, dtype=torch.float64)
    got = PromptDetector.reference(logits, (3, 4)).numpy()
    w = np.exp(logits.numpy())
    w /= w.sum(-1, keepdims=True)
    cells = [((c % 4 + 0.5) / 4, (c // 4 + 0.5) / 3) for c in range(12)]
    want = np.einsum("nlc,ck->nlk", w, np.array(cells))
    np.testing.assert_allclose(got, want, rtol=1e-12)
