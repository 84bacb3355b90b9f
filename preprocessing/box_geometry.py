"""Box geometry between original-pixel annotations and the stored centre-cropped square images.

All datasets keep boxes in ORIGINAL pixel coordinates ``[x1, y1, x2, y2]`` (continuous coordinates: pixel ``i``
covers ``[i, i+1)``). Stored images are the centre square crop of the original, resized to ``S x S``; at load time a
box is shifted by the crop offset, scaled by ``1 / min(W, H)``, clipped to ``[0, 1]`` and converted to normalized
``(cx, cy, w, h)``, as in the ChEX reference. Keeping one formula here (and using the same crop frame when resizing
images, see :mod:`preprocessing.image_io`) is what keeps boxes and pixels aligned.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "box_inside_image",
    "clip_xyxy",
    "crop_frame",
    "cxcywh_to_xyxy",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_stored_cxcywh",
]


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    """Float view of a ``(..., 4)`` box array; integer input is promoted so arithmetic does not truncate."""
    arr = np.asarray(boxes)
    if arr.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape (..., 4), got {arr.shape}")
    return arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float64)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``(x, y, w, h)`` (top-left + size, e.g. NIH / MS-CXR CSVs) -> ``(x1, y1, x2, y2)``."""
    b = _as_boxes(boxes)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], axis=-1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``(x1, y1, x2, y2)`` -> ``(x, y, w, h)`` (COCO's box format)."""
    b = _as_boxes(boxes)
    return np.concatenate([b[..., :2], b[..., 2:] - b[..., :2]], axis=-1)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``."""
    b = _as_boxes(boxes)
    half = b[..., 2:] / 2
    return np.concatenate([b[..., :2] - half, b[..., :2] + half], axis=-1)


def xyxy_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)``."""
    b = _as_boxes(boxes)
    return np.concatenate([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], axis=-1)


def clip_xyxy(boxes: np.ndarray, w: float, h: float) -> np.ndarray:
    """Clamp ``(x1, y1, x2, y2)`` boxes to the image ``[0, w] x [0, h]`` (ChEX clamps dirty ImaGenome boxes so)."""
    b = _as_boxes(boxes)
    return np.clip(b, 0.0, np.array([w, h, w, h], dtype=b.dtype))


def box_inside_image(x1: float, y1: float, x2: float, y2: float, w: float, h: float, tol: float = 1.0) -> bool:
    """Validation of a raw annotation: positive area and corners at most ``tol`` px outside ``[0, w] x [0, h]``.

    Boxes a few pixels past the border are common annotation noise (they get clipped); anything further out means
    the box belongs to another image size or coordinate frame, so it is rejected instead of silently clipped.
    """
    return bool(
        x2 > x1 and y2 > y1 and x1 >= -tol and y1 >= -tol and x2 <= w + tol and y2 <= h + tol
    )


def crop_frame(orig_w: float, orig_h: float) -> tuple[float, float, float]:
    """``(x_offset, y_offset, side)`` of the centre square crop, in original pixels (offsets may be half-pixels)."""
    if orig_w <= 0 or orig_h <= 0:
        raise ValueError(f"image size must be positive, got {orig_w}x{orig_h}")
    side = float(min(orig_w, orig_h))
    return (orig_w - side) / 2.0, (orig_h - side) / 2.0, side


def xyxy_to_stored_cxcywh(
    boxes: np.ndarray, orig_w: int, orig_h: int, min_size: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Original-pixel ``(N, 4)`` xyxy boxes -> normalized ``(cx, cy, w, h)`` in the stored square frame, plus keep.

    Returns ``(float32 (N, 4), bool (N,))``. Boxes are clipped to the crop, so a box that lies outside the stored
    crop collapses to width or height 0 and gets ``keep=False`` (``w <= min_size`` or ``h <= min_size``). All rows
    are returned so the caller can keep box-to-label alignment while masking.
    """
    b = _as_boxes(boxes).astype(np.float64)
    if b.ndim != 2:
        raise ValueError(f"boxes must have shape (N, 4), got {b.shape}")
    x_off, y_off, side = crop_frame(orig_w, orig_h)
    offset = np.array([x_off, y_off, x_off, y_off])
    stored = xyxy_to_cxcywh(np.clip((b - offset) / side, 0.0, 1.0))
    keep = (stored[:, 2] > min_size) & (stored[:, 3] > min_size)
    return stored.astype(np.float32), keep
