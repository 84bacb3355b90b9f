"""Parquet tables -> training samples (Ray Data) -> multitask batches.

Ray Data reads the ingested tables, repeats VinDr rows ``factor`` times (exact oversampling), then decodes the PNG,
augments image + boxes, and turns each row's nested columns into fixed-size arrays with presence masks (one row =
one image; a source leaves the targets it lacks marked unknown). Workers stream their shard and :func:`collate`
builds a :class:`~chex_model.multitask.Batch`, subsampling classes and regions as the reference does.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chex_model.multitask import AnatomyTargets, Batch, PathologyTargets
from chex_model.prompts import anatomy_prompts, cig_finding_prompts, vindr_prompts
from pipelines.augment import AugmentConfig, flip_region, photometric, sample_transform, swap_left_right, warp_boxes, warp_image
from preprocessing.classes import CIG_ANATOMICAL_FINDINGS_43, CIG_ANATOMY_29, CIG_DISEASES_10, VINDR_LOCAL_22
from preprocessing.image_io import decode_png

REGIONS = CIG_ANATOMY_29
FINDINGS = CIG_ANATOMICAL_FINDINGS_43 + CIG_DISEASES_10
PATHOLOGIES = VINDR_LOCAL_22
MAX_BOXES = 16  # boxes per class and image kept as targets (VinDr fused boxes rarely exceed 6)
FLIP_PERM = np.array([REGIONS.index(flip_region(r)) for r in REGIONS])
_REGION_INDEX = {r: i for i, r in enumerate(REGIONS)}
_FINDING_INDEX = {f: i for i, f in enumerate(FINDINGS)}
_PATHO_INDEX = {c: i for i, c in enumerate(PATHOLOGIES)}
TRAIN_SOURCES = ("mimic_cxr", "vindr_cxr")


def table_paths(tables: Path, source: str, split: str) -> list[str]:
    return sorted(str(p) for p in (Path(tables) / "tables" / f"source={source}" / f"split={split}").glob("*.parquet"))


def oversampling_factor(n_mimic: int, n_vindr: int, factor: int = 0) -> int:
    """VinDr copies per epoch: ``factor`` if set, else round(N_mimic / N_vindr), at least 1."""
    if factor > 0:
        return factor
    if n_vindr == 0:
        return 0
    return max(1, round(n_mimic / n_vindr))


def _row_seed(seed: int, sample_id: str, copy: int, epoch: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{epoch}/{sample_id}/{copy}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def encode_row(row: dict[str, Any], size: int, augment: AugmentConfig | None, seed: int, epoch: int = 0) -> dict[str, Any]:
    """One table row -> fixed-size arrays: image, pathology labels / boxes, anatomy boxes / labels, texts (JSON)."""
    rng = np.random.default_rng(_row_seed(seed, row["sample_id"], int(row.get("copy", 0)), epoch))
    image = decode_png(row["image_png"])
    if augment is not None and augment.enabled:
        tf = sample_transform(rng, augment)
        matrix, flipped = tf.matrix, tf.flipped
    else:
        matrix, flipped = np.eye(3), False
    pixels = warp_image(image, matrix, size)
    if augment is not None and augment.enabled:
        pixels = photometric(pixels, rng, augment)
    min_vis = augment.min_visibility if augment is not None else 0.0
    is_vindr = row["source"] == "vindr_cxr"

    c, a, f = len(PATHOLOGIES), len(REGIONS), len(FINDINGS)
    patho_labels = np.full(c, -1, dtype=np.int8)
    patho_boxes = np.zeros((c, MAX_BOXES, 4), dtype=np.float32)
    patho_mask = np.zeros((c, MAX_BOXES), dtype=bool)
    if is_vindr:
        for lab in row.get("labels") or []:
            if lab["name"] in _PATHO_INDEX:
                patho_labels[_PATHO_INDEX[lab["name"]]] = 1 if lab["value"] == 1 else 0
        named = [(b["name"], [b["cx"], b["cy"], b["w"], b["h"]]) for b in row.get("boxes") or [] if b["name"] in _PATHO_INDEX]
        if named:
            warped, vis = warp_boxes(np.array([b for _, b in named], dtype=np.float64), matrix)
            counts = np.zeros(c, dtype=int)
            for (name, _), box, v in zip(named, warped, vis):
                k = _PATHO_INDEX[name]
                patho_labels[k] = 1  # a class with a box is present
                if v >= max(min_vis, 1e-6) and counts[k] < MAX_BOXES:
                    patho_boxes[k, counts[k]] = box
                    patho_mask[k, counts[k]] = True
                    counts[k] += 1

    anat_boxes = np.zeros((a, 4), dtype=np.float32)
    anat_present = np.zeros(a, dtype=bool)
    anat_labels = np.full((a, f), -1, dtype=np.int8)
    phrases: list[list[str]] = [[] for _ in range(a)]
    regions = [(b["name"], [b["cx"], b["cy"], b["w"], b["h"]]) for b in row.get("region_boxes") or [] if b["name"] in _REGION_INDEX]
    if regions:
        warped, vis = warp_boxes(np.array([b for _, b in regions], dtype=np.float64), matrix)
        for (name, _), box, v in zip(regions, warped, vis):
            if v >= max(min_vis, 1e-6):
                anat_boxes[_REGION_INDEX[name]] = box
                anat_present[_REGION_INDEX[name]] = True
        anat_labels[:] = 0  # a scene graph lists what it found; unmentioned findings are absent
        for lab in row.get("region_labels") or []:
            if lab["region"] in _REGION_INDEX and lab["finding"] in _FINDING_INDEX:
                anat_labels[_REGION_INDEX[lab["region"]], _FINDING_INDEX[lab["finding"]]] = 1 if lab["value"] == 1 else 0
        for rp in row.get("region_phrases") or []:
            if rp["region"] in _REGION_INDEX:
                phrases[_REGION_INDEX[rp["region"]]] = list(rp["phrases"])
    sentences = list(row.get("report_sentences") or [])
    if flipped:  # mirror identities and words: the "right lung" box is now on the image's other side
        anat_boxes, anat_present, anat_labels = anat_boxes[FLIP_PERM], anat_present[FLIP_PERM], anat_labels[FLIP_PERM]
        phrases = [[swap_left_right(p) for p in phrases[j]] for j in FLIP_PERM]
        sentences = [swap_left_right(s) for s in sentences]
    return {
        "sample_id": row["sample_id"], "source": row["source"], "image": pixels,
        "patho_labels": patho_labels, "patho_boxes": patho_boxes, "patho_box_mask": patho_mask,
        "has_patho_boxes": np.bool_(is_vindr), "anat_boxes": anat_boxes, "anat_present": anat_present,
        "anat_labels": anat_labels, "texts": json.dumps({"phrases": phrases, "sentences": sentences}),
    }


def encode_batch(batch: dict[str, np.ndarray], size: int, augment: AugmentConfig | None, seed: int) -> dict[str, np.ndarray]:
    """``map_batches`` body (numpy format): rows of one table batch -> stacked arrays."""
    n = len(batch["sample_id"])
    rows = [encode_row({k: batch[k][i] for k in batch}, size, augment, seed) for i in range(n)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def repeat_rows(batch: dict[str, np.ndarray], factor: int) -> dict[str, np.ndarray]:
    """``map_batches`` body: every row ``factor`` times, tagged with its copy number (exact oversampling)."""
    n = len(batch["sample_id"])
    out = {k: np.repeat(v, factor, axis=0) for k, v in batch.items()}
    out["copy"] = np.tile(np.arange(factor), n)
    return out


COLUMNS = ["sample_id", "source", "image_png", "labels", "boxes", "region_boxes", "region_labels", "region_phrases",
           "report_sentences"]


def build_dataset(tables: Path, split: str, size: int, augment: AugmentConfig | None, seed: int, vindr_factor: int = 0,
                  exclude_ids: set[str] | None = None, limit: int = 0):
    """A Ray Dataset of encoded samples for ``split`` (MIMIC-CXR + VinDr-CXR; VinDr repeated on the train split)."""
    import pyarrow.compute as pc
    import ray.data

    parts = []
    counts = {}
    for source in TRAIN_SOURCES:
        paths = table_paths(tables, source, split)
        if not paths:
            counts[source] = 0
            continue
        ds = ray.data.read_parquet(paths, columns=[c for c in COLUMNS if c != "source"] + ["image_id"],
                                   partitioning=None)
        if exclude_ids and source == "mimic_cxr":
            ids = sorted(exclude_ids)
            ds = ds.filter(expr=None, fn=None) if False else ds.map_batches(
                lambda t, ids=ids: t.filter(pc.invert(pc.is_in(t["image_id"], value_set=__import__("pyarrow").array(ids)))),
                batch_format="pyarrow")
        ds = ds.add_column("source", lambda t, s=source: __import__("pyarrow").array([s] * len(t)), batch_format="pyarrow")
        counts[source] = ds.count()
        parts.append((source, ds))
    factor = oversampling_factor(counts.get("mimic_cxr", 0), counts.get("vindr_cxr", 0), vindr_factor) if split == "train" else 1
    datasets = []
    for source, ds in parts:
        if source == "vindr_cxr" and factor != 1:
            ds = ds.map_batches(repeat_rows, fn_kwargs={"factor": factor}, batch_format="numpy")
        datasets.append(ds)
    if not datasets:
        raise FileNotFoundError(f"no MIMIC-CXR or VinDr-CXR tables for split {split!r} under {tables}/tables")
    ds = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    if limit:
        ds = ds.limit(limit)
    if split == "train":
        ds = ds.random_shuffle(seed=seed)
    ds = ds.map_batches(encode_batch, fn_kwargs={"size": size, "augment": augment, "seed": seed}, batch_format="numpy",
                        batch_size=8)
    return ds, {"counts": counts, "vindr_factor": factor}


def subsample(present: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the classes kept this step: each with probability k / #classes-present-in-batch (at least the
    present ones are likely kept), falling back to the first k when the draw is empty (reference behaviour)."""
    n = len(present)
    if n <= k:
        return np.arange(n)
    p = min(1.0, k / max(1, int(present.sum())))
    keep = np.flatnonzero(present & (rng.uniform(size=n) < p))
    absent = np.flatnonzero(~present)
    fill = max(0, k - len(keep))
    keep = np.concatenate([keep, rng.choice(absent, size=min(fill, len(absent)), replace=False)]) if fill else keep[:k]
    return np.sort(keep.astype(int)) if len(keep) else np.arange(k)


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
    return out


def epoch_steps(n_samples: int, global_batch: int) -> int:
    return max(1, math.ceil(n_samples / global_batch))
