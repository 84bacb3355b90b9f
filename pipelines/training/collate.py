"""Worker side of the data path: a numpy batch from the Ray Data shard -> a multitask :class:`Batch` (torch), with
the reference's per-step subsampling of pathology classes and anatomy regions. Kept apart from
:mod:`pipelines.training.data` so the Ray Data tasks that decode and augment never import torch or the model."""
from __future__ import annotations

import json

import numpy as np
import torch

from chex_model.multitask import AnatomyTargets, Batch, PathologyTargets
from chex_model.prompts import anatomy_synonyms, cig_finding_prompts, multi_regions, vindr_prompts
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


def _region_prompt(prompts: tuple[str, ...], rng: np.random.Generator, synonyms: bool) -> str:
    return str(prompts[rng.integers(len(prompts))]) if synonyms else prompts[0]


def _anatomy(batch: dict[str, np.ndarray], texts: list[dict], rng: np.random.Generator, regions: int, synonyms: bool,
             multi: bool) -> AnatomyTargets | None:
    """``regions`` single regions drawn as the reference subsamples them, each prompted by one random synonym
    (``synonyms``) or its canonical prompt; with ``multi`` every multi-region prompt whose members occur in the
    batch, targets = its members' boxes."""
    present = batch["anat_present"]
    if not present.any():
        return None
    keep = subsample(present.any(0), regions, rng)
    vocabulary, findings = anatomy_synonyms(), cig_finding_prompts()
    out = AnatomyTargets(
        [_region_prompt(vocabulary[REGIONS[i]], rng, synonyms) for i in keep], torch.from_numpy(batch["anat_boxes"][:, keep]),
        torch.from_numpy(present[:, keep]), torch.from_numpy(batch["anat_labels"][:, keep].astype(np.int64)),
        [findings[f][0] for f in FINDINGS], [findings[f][1] for f in FINDINGS],
        [[t["phrases"][i] for i in keep] for t in texts],
    )
    groups = [(m, [REGIONS.index(r) for r in m.members]) for m in (multi_regions() if multi else ())]
    groups = [(m, idx) for m, idx in groups if present[:, idx].any()]
    if groups:
        out.multi_prompts = [_region_prompt(m.prompts, rng, synonyms) for m, _ in groups]
        out.multi_boxes = torch.from_numpy(np.stack([batch["anat_boxes"][:, idx] for _, idx in groups], axis=1))
        out.multi_mask = torch.from_numpy(np.stack([present[:, idx] for _, idx in groups], axis=1))
    return out


def collate(batch: dict[str, np.ndarray], rng: np.random.Generator, pathology_classes: int, anatomy_regions: int,
            max_sentences: int, synonyms: bool = False, multi: bool = False, findings: bool = True) -> Batch:
    """Numpy batch from the Ray Data shard -> multitask :class:`Batch` with per-target presence masks.
    ``max_sentences`` 0 keeps every report sentence; ``findings`` False leaves out the ``patho_gen`` targets (a
    stage that does not weigh them does not compute them)."""
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
    out.anatomy = _anatomy(batch, texts, rng, anatomy_regions, synonyms, multi)
    sentences = [t["sentences"][:max_sentences] if max_sentences else t["sentences"] for t in texts]
    if any(sentences):
        out.sentences = sentences
    if findings:
        out.findings = finding_targets([t["sentences"] for t in texts], rng)
    return out
