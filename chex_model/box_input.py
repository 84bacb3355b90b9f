"""Checking a user's box before anything heavy loads: pure Python, so the CLI rejects a bad box without torch."""
from __future__ import annotations

from collections.abc import Sequence

Box = tuple[float, float, float, float]


def validate_box(box: Sequence[float]) -> Box:
    """``(cx, cy, w, h)`` normalized to the image, as floats; ValueError saying what is wrong otherwise."""
    if len(box) != 4:
        raise ValueError(f"a box is 4 numbers cx,cy,w,h; got {len(box)}")
    cx, cy, w, h = (float(v) for v in box)
    if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"box {cx},{cy},{w},{h} must be normalized: cx, cy in [0, 1], w, h in (0, 1]")
    return cx, cy, w, h
