"""Box conversions, and stored boxes vs. a brute-force mask pushed through the image resize/crop."""

from __future__ import annotations

import numpy as np
import pytest

from preprocessing.box_geometry import (
    box_inside_image,
    clip_xyxy,
    crop_frame,
    cxcywh_to_xyxy,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_stored_cxcywh,
)
from preprocessing.image_io import resize_center_crop

SIZE = 128


def test_format_conversions_roundtrip() -> None:
    xyxy = np.array([[10, 20, 50, 80], [0.5, 1.5, 2.5, 3.5]])
    np.testing.assert_allclose(xywh_to_xyxy(np.array([[10, 20, 40, 60]])), xyxy[:1])
    np.testing.assert_allclose(xyxy_to_cxcywh(xyxy[:1]), [[30, 50, 40, 60]])
    np.testing.assert_allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy)
    assert xyxy_to_cxcywh(np.zeros((2, 3, 4))).shape == (2, 3, 4)
    with pytest.raises(ValueError):
        xyxy_to_cxcywh(np.zeros((2, 3)))


def test_crop_frame_and_validation() -> None:
    assert crop_frame(300, 200) == (50.0, 0.0, 200.0)
    assert crop_frame(201, 300) == (0.0, 49.5, 201.0)
    assert box_inside_image(0, 0, 100, 50, 100, 50)
    assert box_inside_image(-0.5, 0, 100.8, 50, 100, 50)
    assert not box_inside_image(-5, 0, 10, 10, 100, 50)
    assert not box_inside_image(10, 10, 10, 20, 100, 50)  # zero width
    assert not box_inside_image(20, 10, 10, 20, 100, 50)  # inverted
    np.testing.assert_allclose(clip_xyxy(np.array([[-3, 5, 120, 60]]), 100, 50), [[0, 5, 100, 50]])


def test_stored_boxes_known_values() -> None:
    # Landscape 300x200: crop x in [50, 250], side 200.
    boxes = np.array([[50, 0, 250, 200], [150, 50, 350, 100], [0, 0, 40, 100], [-20, 10, 60, 30]], float)
    stored, keep = xyxy_to_stored_cxcywh(boxes, 300, 200)
    assert stored.dtype == np.float32 and keep.dtype == bool
    np.testing.assert_allclose(stored[0], [0.5, 0.5, 1, 1])
    np.testing.assert_allclose(stored[1], [0.75, 0.375, 0.5, 0.25])  # clipped at the right crop edge
    assert keep.tolist() == [True, True, False, True]  # box 2 lies in the cropped-away margin
    np.testing.assert_allclose(stored[3], [0.025, 0.1, 0.05, 0.1], atol=1e-7)
    empty, keep_empty = xyxy_to_stored_cxcywh(np.zeros((0, 4)), 300, 200)
    assert empty.shape == (0, 4) and keep_empty.shape == (0,)


def _mask_box(w: int, h: int, box: np.ndarray) -> np.ndarray | None:
    """Brute force: rasterize the box (pixel centres inside), resize/crop like an image, read back its extent."""
    mask = np.zeros((h, w), np.uint8)
    c0, r0, c1, r1 = np.ceil(np.asarray(box) - 0.5).astype(int)
    mask[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = 255
    on = resize_center_crop(mask, SIZE) > 127
    if not on.any():
        return None
    cols, rows = np.flatnonzero(on.any(axis=0)), np.flatnonzero(on.any(axis=1))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], float)


def _random_boxes(rng: np.random.Generator, w: int, h: int, n: int) -> np.ndarray:
    """Boxes anywhere in (and a bit beyond) the image, so many cross or miss the centre crop."""
    corners = rng.uniform([-0.1 * w, -0.1 * h], [1.1 * w, 1.1 * h], size=(n, 2, 2))
    lo, hi = corners.min(axis=1), corners.max(axis=1)
    hi = np.maximum(hi, lo + 8)  # at least a few source pixels, so the mask survives downscaling
    return np.concatenate([lo, hi], axis=1)


@pytest.mark.parametrize(("w", "h"), [(900, 600), (600, 900), (601, 450), (512, 512)])
def test_stored_boxes_match_resized_mask(w: int, h: int) -> None:
    rng = np.random.default_rng(w * 7 + h)
    x_off, y_off, side = crop_frame(w, h)
    fixed = np.array(
        [
            [x_off + 0.3 * side, y_off + 0.2 * side, x_off + 0.6 * side, y_off + 0.9 * side],  # inside
            [x_off - 40, y_off - 40, x_off + 0.25 * side, y_off + 0.25 * side],  # across the crop corner
            [x_off + side - 30, y_off + 10, w + 30.0, y_off + 0.5 * side],  # past the crop's far side
        ]
    )
    if w != h:  # fully inside the image but in the cropped-away margin
        fixed = np.concatenate([fixed, [[0.0, 0.0, max(x_off - 2, 5.0), max(y_off - 2, 5.0)]]])
    boxes = np.concatenate([fixed, _random_boxes(rng, w, h, 40)])
    stored, keep = xyxy_to_stored_cxcywh(boxes, w, h)
    n_checked = 0
    for box, s, k in zip(boxes, stored, keep, strict=True):
        found = _mask_box(w, h, box)
        expected = cxcywh_to_xyxy(s.astype(np.float64)) * SIZE
        if found is None:  # outside the crop, or clipped to a sliver thinner than the 50% coverage threshold
            assert not k or min(s[2], s[3]) * SIZE < 1.5, (box, s)
            continue
        assert k, (box, found)
        np.testing.assert_allclose(found, expected, atol=1.0)  # stored pixels
        n_checked += 1
    assert n_checked >= 15
    if w != h:
        assert not keep[3]
