"""Fixtures for model tests: a tiny ChEX and a fixed batch of phantom radiographs with consistent targets."""
from __future__ import annotations

import numpy as np
import torch

from chex_model.config import preset
from chex_model.multitask import AnatomyTargets, Batch, FindingTargets, PathologyTargets
from chex_model.prompts import cig_finding_prompts
from preprocessing.synth.phantom import Lesion, render_frontal

SIZE = 128
REGIONS = ("right lung", "left lung", "cardiac silhouette", "right lower lung zone", "left upper lung zone", "trachea")
CLASSES = (("Pleural effusion", "No pleural effusion"), ("Consolidation", "No consolidation"), ("Cardiomegaly", "No cardiomegaly"))
LESIONS = (
    [Lesion("pleural_effusion", "right")],
    [Lesion("consolidation", "left", "upper")],
    [Lesion("cardiomegaly", None)],
    [],
)
CLASS_OF = {"pleural_effusion": 0, "consolidation": 1, "cardiomegaly": 2}
TEXT_OF = {  # (kind, region) -> sentence the region should produce
    ("pleural_effusion", "right lung"): "Small right pleural effusion.",
    ("pleural_effusion", "right lower lung zone"): "Blunting of the right costophrenic angle.",
    ("consolidation", "left lung"): "Consolidation in the left lung.",
    ("consolidation", "left upper lung zone"): "Left upper lobe consolidation.",
    ("cardiomegaly", "cardiac silhouette"): "The heart is enlarged.",
}
NORMAL_TEXT = {
    "right lung": "The right lung is clear.", "left lung": "The left lung is clear.",
    "cardiac silhouette": "Heart size is normal.", "right lower lung zone": "", "left upper lung zone": "",
    "trachea": "The trachea is midline.",
}
FINDINGS = ("pleural effusion", "consolidation", "enlarged cardiac silhouette")
MULTI_PROMPT = "Bilateral"  # the lungs: REGIONS[0] and REGIONS[1]


def tiny_config():
    cfg = preset("tiny")
    cfg.detector.dropout = cfg.dropout = 0.0
    cfg.generator.prefix_dropout = 0.0
    return cfg


def _cxcywh(box, w, h):
    x1, y1, x2, y2 = box
    return [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]


def phantom_batch(seed: int = 3) -> Batch:
    rng = np.random.default_rng(seed)
    n, a, c = len(LESIONS), len(REGIONS), len(CLASSES)
    images = torch.zeros(n, 1, SIZE, SIZE)
    p_labels = torch.zeros(n, c, dtype=torch.long)
    p_boxes, p_mask = torch.zeros(n, c, 1, 4), torch.zeros(n, c, 1, dtype=torch.bool)
    a_boxes, labels = torch.zeros(n, a, 4), torch.zeros(n, a, len(FINDINGS), dtype=torch.long)
    texts = []
    for i, lesions in enumerate(LESIONS):
        ph = render_frontal(SIZE, SIZE, lesions, rng)
        images[i, 0] = torch.from_numpy(ph.image)
        row = [NORMAL_TEXT[r] for r in REGIONS]
        for les, box in zip(lesions, ph.lesion_boxes):
            k = CLASS_OF[les.kind]
            p_labels[i, k] = 1
            p_boxes[i, k, 0] = torch.tensor(_cxcywh(box, SIZE, SIZE))
            p_mask[i, k, 0] = True
            for j, region in enumerate(REGIONS):
                if (les.kind, region) in TEXT_OF:
                    row[j] = TEXT_OF[(les.kind, region)]
                    labels[i, j, k] = 1
        for j, region in enumerate(REGIONS):
            a_boxes[i, j] = torch.tensor(_cxcywh(ph.anatomy[region], SIZE, SIZE))
        texts.append(row)
    prompts = cig_finding_prompts()
    return Batch(
        images=images,
        pathology=PathologyTargets([p for p, _ in CLASSES], [q for _, q in CLASSES], p_labels, p_boxes, p_mask,
                                   torch.ones(n, dtype=torch.bool)),
        anatomy=AnatomyTargets([r.capitalize() for r in REGIONS], a_boxes, torch.ones(n, a, dtype=torch.bool), labels,
                               [prompts[f][0] for f in FINDINGS], [prompts[f][1] for f in FINDINGS],
                               [[[t] if t else [] for t in row] for row in texts],
                               # both lungs, a multi-region prompt matched to its two member boxes
                               [MULTI_PROMPT], a_boxes[:, None, :2].clone(), torch.ones(n, 1, 2, dtype=torch.bool)),
        sentences=[[t for t in row if t][:3] for row in texts],
        findings=_finding_targets(),
    )


def _finding_targets() -> FindingTargets:
    """Every (image, class) pair: the lesion's first sentence from the class prompt where the class is present,
    silence from its negative prompt where absent."""
    said = {CLASS_OF[kind]: text for (kind, _), text in reversed(TEXT_OF.items())}
    pairs = [(i, k) for i in range(len(LESIONS)) for k in range(len(CLASSES))]
    present = {(i, CLASS_OF[les.kind]) for i, lesions in enumerate(LESIONS) for les in lesions}
    return FindingTargets([p for p, _ in CLASSES], [n for _, n in CLASSES], torch.tensor([i for i, _ in pairs]),
                          torch.tensor([k if (i, k) in present else len(CLASSES) + k for i, k in pairs]),
                          [said[k] if (i, k) in present else "" for i, k in pairs])


WEIGHTS = {  # the reference's relative box / score weights; the squared-error terms scaled down as its stages do
    "patho_box_l1": 5.0, "patho_box_giou": 2.0, "patho_box_score": 3.0, "patho_cls": 1.0, "anat_box_l1": 5.0,
    "anat_box_giou": 2.0, "anat_box_score": 1.0, "anat_cls": 1.0, "anat_mse": 0.04, "anat_gen": 1.0, "sent_contr": 0.2,
    "sent_mse": 0.02, "global_contr": 0.2, "sent_gen": 0.5, "patho_ground": 5.0, "anat_ground": 5.0,
    "patho_gen": 1.0,
}


def train(model, batch: Batch, steps: int, lr: float = 3e-3, every: int = 1):
    """AdamW with linear decay; anatomy ROI tokens alternate between detector prompts and ground-truth boxes (as
    stages 2 and 3 do). Returns the (unweighted) loss dicts of every ``every``-th step."""
    from chex_model.multitask import multitask_losses

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    history = []
    model.train()
    for step in range(steps):
        out = multitask_losses(model, batch, region_encoding="boxes" if step % 2 else "prompts")
        loss = sum(WEIGHTS[k] * v for k, v in out.items())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % every == 0:
            history.append({k: v.item() for k, v in out.items()})
    return model.eval(), history


def anatomy_box_l1(model, batch: Batch) -> float:
    """Mean L1 (summed over cx, cy, w, h) of every detected anatomy box vs. its region's box, in eval mode."""
    from chex_model.image_encoder import normalize

    with torch.no_grad():
        feats = model.encode_image(normalize(batch.images, model.cfg.image))
        det = model.detect(feats, model.encode_prompts(batch.anatomy.prompts))
    return float((det.boxes - batch.anatomy.boxes[:, :, None]).abs().sum(-1).mean())


def texts_of(batch: Batch) -> list[list[str]]:
    """Each region's generation target (its phrases joined), "" where the region has none."""
    return [[" ".join(ph) for ph in row] for row in batch.anatomy.phrases]
