"""Worker side of the data path: a numpy batch from the Ray Data shard -> a multitask :class:`Batch` (torch), with
the reference's per-step subsampling of pathology classes and anatomy regions. Kept apart from
:mod:`pipelines.training.data` so the Ray Data tasks that decode and augment never import torch or the model."""
from __future__ import annotations

import json

import numpy as np
import torch

from chex_model.multitask import AnatomyTargets, Batch, PathologyTargets
from chex_model.prompts import anatomy_prompts, cig_finding_prompts, vindr_prompts
from pipelines.training.data import FINDINGS, PATHOLOGIES, REGIONS
from pipelines.training.finding_text import finding_targets


def subsample(present: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``k`` classes kept this step (sorted): each present class is drawn with probability
    k / #present (the reference's rule), then the draw is cut or topped up to exactly ``k`` at random, absent classes
    first, so every step has the same number of queries and absent classes still get negatives."""
    n = len(present)
    if n <= k:
        return np.arange(n)
    p = min(1.0, k / max(1, int(present.sum())))
    drawn = np.flatnonzero(present & (rng.uniform(size=n) < p))
    if len(drawn) >= k:
        return np.sort(rng.choice(drawn, size=k, replace=False))
    rest = np.setdiff1d(np.arange(n), drawn)
    absent, dropped = rest[~present[rest]], rest[present[rest]]
    fill = np.concatenate([rng.permutation(absent), rng.permutation(dropped)])[: k - len(drawn)]
    return np.sort(np.concatenate([drawn, fill]).astype(int))


def collate(batch: dict[str, np.ndarray], rng: np.random.Generator, pathology_classes: int, anatomy_regions: int,
            max_sentences: int) -> Batch:
    """Numpy batch from the Ray Data shard -> multitask :class:`Batch` with per-target presence masks."""
    images = torch.from_numpy(np.ascontiguousarray(batch["image"], dtype=np.float32))[:, None]
    texts = [json.loads(t) for t in batch["texts"]]
    out = Batch(images=images)
    has_boxes = torch.from_numpy(batch["has_patho_boxes"].astype(bool))
    if has_boxes.any():
        labels = batch["patho_labels"]
        keep = subsample((labels == 1).any(0), pathology_classes, rng)
        prompts = vindr_prompts()
        out.pathology = PathologyTargets(
            [prompts[PATHOLOGIES[i]][0] for i in keep], [prompts[PATHOLOGIES[i]][1] for i in keep],
            torch.from_numpy(labels[:, keep].astype(np.int64)), torch.from_numpy(batch["patho_boxes"][:, keep]),
            torch.from_numpy(batch["patho_box_mask"][:, keep]), has_boxes,
        )
    present = batch["anat_present"]
    if present.any():
        keep = subsample(present.any(0), anatomy_regions, rng)
        names, findings = anatomy_prompts(), cig_finding_prompts()
        out.anatomy = AnatomyTargets(
            [names[REGIONS[i]] for i in keep], torch.from_numpy(batch["anat_boxes"][:, keep]),
            torch.from_numpy(present[:, keep]), torch.from_numpy(batch["anat_labels"][:, keep].astype(np.int64)),
            [findings[f][0] for f in FINDINGS], [findings[f][1] for f in FINDINGS],
            [[t["phrases"][i] for i in keep] for t in texts],
        )
    sentences = [t["sentences"][:max_sentences] for t in texts]
    if any(sentences):
        out.sentences = sentences
    out.findings = finding_targets([t["sentences"] for t in texts], rng)
    return out
