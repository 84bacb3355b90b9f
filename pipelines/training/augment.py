"""Training augmentation (chex-reference.md §2.8) applied to the image and every box with one affine matrix.

Geometry: random resized crop -> horizontal flip -> affine (scale, translate, rotate) composed into one 3x3 matrix on
normalized coordinates, applied once to the pixels (one resampling) and to the box corners (a rotated box becomes its
enclosing box; boxes less than ``min_visibility`` visible are dropped). Photometric: brightness, contrast, Gaussian
blur. Unlike the reference, a flip also swaps left and right: region identities (the caller permutes its region
arrays with :func:`flip_region`), and the words "left"/"right" in sentences and phrases (:func:`swap_left_right`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy.ndimage import convolve1d

from preprocessing.box_geometry import cxcywh_to_xyxy, xyxy_to_cxcywh


@dataclass
class AugmentConfig:
    enabled: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    flip_p: float = 0.5
    affine_scale: list[float] = field(default_factory=lambda: [0.95, 1.0])
    translate: float = 0.02
    rotate_deg: float = 10.0
    brightness: list[float] = field(default_factory=lambda: [0.6, 1.4])
    contrast: list[float] = field(default_factory=lambda: [0.6, 1.4])
    blur_p: float = 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 5.0])
    min_visibility: float = 0.1


@dataclass
class Transform:
    matrix: np.ndarray  # 3x3, input-normalized (u, v, 1) -> output-normalized
    flipped: bool


def _crop_matrix(rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    for _ in range(10):
        area = rng.uniform(*cfg.crop_scale)
        ratio = math.exp(rng.uniform(math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])))
        w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if w <= 1 and h <= 1:
            x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            return np.array([[1 / w, 0, -x0 / w], [0, 1 / h, -y0 / h], [0, 0, 1]])
    return np.eye(3)


def sample_transform(rng: np.random.Generator, cfg: AugmentConfig) -> Transform:
    crop = _crop_matrix(rng, cfg)
    flipped = bool(rng.uniform() < cfg.flip_p)
    flip = np.array([[-1, 0, 1], [0, 1, 0], [0, 0, 1]]) if flipped else np.eye(3)
    scale = rng.uniform(*cfg.affine_scale)
    theta = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    tx, ty = rng.uniform(-cfg.translate, cfg.translate, 2)
    c, s = math.cos(theta) * scale, math.sin(theta) * scale
    centre = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    affine = np.linalg.inv(centre) @ np.array([[c, -s, tx], [s, c, ty], [0, 0, 1]]) @ centre
    return Transform(affine @ flip @ crop, flipped)


def warp_image(image: np.ndarray, matrix: np.ndarray, out_size: int) -> np.ndarray:
    """uint8 ``(S, S)`` -> float32 ``(out_size, out_size)`` in [0, 1]; outside the source is black."""
    s_in = image.shape[0]
    # PIL samples output pixel x at x + 0.5 and input pixel i covers [i, i + 1): plain scalings, no half-pixel terms
    out_to_norm = np.diag([1 / out_size, 1 / out_size, 1])
    norm_to_in = np.diag([s_in, s_in, 1])
    inv = norm_to_in @ np.linalg.inv(matrix) @ out_to_norm
    warped = Image.fromarray(image).transform(
        (out_size, out_size), Image.Transform.AFFINE, tuple(inv[:2].ravel()), resample=Image.Resampling.BILINEAR
    )
    return np.asarray(warped, dtype=np.float32) / 255.0


def warp_boxes(boxes: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(K, 4)`` (cx, cy, w, h) -> transformed, clipped boxes and the visible fraction of each."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4), np.zeros(0)
    x1, y1, x2, y2 = cxcywh_to_xyxy(boxes).T
    xs = np.stack([x1, x2, x2, x1], axis=1)
    ys = np.stack([y1, y1, y2, y2], axis=1)
    pts = np.stack([xs, ys, np.ones_like(xs)], axis=-1) @ matrix.T  # (K, 4, 3)
    x1, y1 = pts[..., 0].min(1), pts[..., 1].min(1)
    x2, y2 = pts[..., 0].max(1), pts[..., 1].max(1)
    area = (x2 - x1) * (y2 - y1)
    cx1, cy1, cx2, cy2 = np.clip(x1, 0, 1), np.clip(y1, 0, 1), np.clip(x2, 0, 1), np.clip(y2, 0, 1)
    visible = np.clip(cx2 - cx1, 0, None) * np.clip(cy2 - cy1, 0, None) / np.maximum(area, 1e-12)
    out = xyxy_to_cxcywh(np.stack([cx1, cy1, cx2, cy2], axis=1))
    return out.astype(np.float32), visible


def photometric(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Brightness and contrast jitter, then (with ``blur_p``) a 3x3 Gaussian blur."""
    img = image * rng.uniform(*cfg.brightness)
    mean = img.mean()
    img = np.clip((img - mean) * rng.uniform(*cfg.contrast) + mean, 0.0, 1.0)
    if rng.uniform() < cfg.blur_p:
        sigma = rng.uniform(*cfg.blur_sigma)
        k = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * sigma**2))
        k /= k.sum()
        img = convolve1d(convolve1d(img, k, axis=0, mode="nearest"), k, axis=1, mode="nearest")
    return img.astype(np.float32)


_SIDE = re.compile(r"\b(left|right|Left|Right|LEFT|RIGHT)\b")
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}


def swap_left_right(text: str) -> str:
    """ "Right effusion, left lung clear" -> "Left effusion, right lung clear" (whole words, case kept)."""
    return _SIDE.sub(lambda m: _SWAP[m.group(0)], text)


def flip_region(name: str) -> str:
    """The mirror-image region: "right lung" <-> "left lung"; unsided regions map to themselves."""
    return swap_left_right(name)
