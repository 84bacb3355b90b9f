"""Lesion boxes for images whose pixels are not rendered (`chex synth --metadata-only`).

Rendering a phantom costs ~15 ms even when tiny, too slow for the 13k VinDr images with findings; and a metadata-only
box need only be plausible, since there are no pixels to agree with. So a box is drawn inside the anatomical region
the lesion lies in, on a reference thorax rendered once per image size, sized by the lesion's severity.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from preprocessing.synth.catalog import cig_regions
from preprocessing.synth.phantom import Box, Lesion, render_frontal

REFERENCE_SIDE = 256   # long side the reference thorax is rendered at (its boxes are scaled up)
REFERENCE_SEED = 0


@lru_cache(maxsize=64)
def reference_anatomy(width: int, height: int) -> dict[str, Box]:
    """The 36 region boxes of one reference thorax at this image size (rendered small, scaled to the size)."""
    k = max(1.0, max(width, height) / REFERENCE_SIDE)
    w, h = max(16, round(width / k)), max(16, round(height / k))
    sx, sy = width / w, height / h
    anatomy = render_frontal(w, h, [], np.random.default_rng(REFERENCE_SEED)).anatomy
    return {name: (x1 * sx, y1 * sy, x2 * sx, y2 * sy) for name, (x1, y1, x2, y2) in anatomy.items()}


def _region(lesion: Lesion, anatomy: dict[str, Box]) -> tuple[Box, bool]:
    """(box of the region the lesion fills or lies in, whether it fills all of it)."""
    if lesion.kind == "cardiomegaly":
        return anatomy["cardiac silhouette"], True
    if lesion.kind == "edema":
        sides = [lesion.side] if lesion.side else ["right", "left"]
        lungs = [anatomy[f"{s} lung"] for s in sides]
        return (min(b[0] for b in lungs), min(b[1] for b in lungs), max(b[2] for b in lungs), max(b[3] for b in lungs)), False
    if lesion.kind == "pleural_effusion":
        return anatomy[f"{lesion.side} lower lung zone"], False
    return anatomy[cig_regions(lesion.kind, lesion.side, lesion.zone)[0]], False


def lesion_boxes(lesions: Sequence[Lesion], width: int, height: int, seed: int) -> list[Box]:
    """One (x1, y1, x2, y2) pixel box per lesion, inside its region; the same seed gives the same boxes."""
    anatomy = reference_anatomy(width, height)
    rng = np.random.default_rng(seed)
    boxes = []
    for lesion in lesions:
        (x1, y1, x2, y2), fills = _region(lesion, anatomy)
        if fills:
            boxes.append((x1, y1, x2, y2))
            continue
        small = 0.25 if lesion.kind == "nodule" else 1.0
        fw, fh = (small * (0.4 + 0.5 * lesion.severity) * rng.uniform(0.7, 1.0) for _ in range(2))
        w, h = (x2 - x1) * fw, (y2 - y1) * fh
        left, top = x1 + rng.uniform(0, x2 - x1 - w), y1 + rng.uniform(0, y2 - y1 - h)
        boxes.append((left, top, left + w, top + h))
    return boxes
