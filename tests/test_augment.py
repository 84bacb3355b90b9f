"""Augmentation: pixels and boxes move together (checked on rendered rectangles), and a flip swaps left and right in
region identities, boxes, labels, pathology boxes and the words of phrases and sentences."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.training.augment import AugmentConfig, sample_transform, swap_left_right, warp_boxes, warp_image
from pipelines.training.data import FINDINGS, PATHOLOGIES, REGIONS, encode_row, oversampling_factor
from train_support import S, raw_row


def _rectangle(box: tuple[float, float, float, float], size: int = S) -> np.ndarray:
    cx, cy, w, h = box
    img = np.zeros((size, size), np.uint8)
    x1, x2 = round((cx - w / 2) * size), round((cx + w / 2) * size)
    y1, y2 = round((cy - h / 2) * size), round((cy + h / 2) * size)
    img[y1:y2, x1:x2] = 255
    return img


def _pixel_box(img: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(img > 0.5)
    n = img.shape[0]
    x1, x2, y1, y2 = xs.min() / n, (xs.max() + 1) / n, ys.min() / n, (ys.max() + 1) / n
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])


@pytest.mark.parametrize("seed", range(8))
def test_boxes_follow_the_pixels(seed):
    """The enclosing box of the warped rectangle's pixels equals the warped box, within two output pixels."""
    rng = np.random.default_rng(seed)
    box = (0.5 + rng.uniform(-0.1, 0.1), 0.5 + rng.uniform(-0.1, 0.1), rng.uniform(0.2, 0.4), rng.uniform(0.2, 0.4))
    cfg = AugmentConfig(crop_scale=[0.8, 1.0])  # keep the rectangle inside the crop
    tf = sample_transform(rng, cfg)
    warped = warp_image(_rectangle(box), tf.matrix, S)
    pred, visible = warp_boxes(np.array([box]), tf.matrix)
    assert visible[0] == pytest.approx(1.0)
    np.testing.assert_allclose(pred[0], _pixel_box(warped), atol=2.5 / S)


def test_visibility_is_the_fraction_left_inside():
    """A shift by half a box width leaves half of it visible; min_visibility drops what falls below it."""
    shift = np.array([[1, 0, 0.2], [0, 1, 0], [0, 0, 1]])
    out, visible = warp_boxes(np.array([[0.9, 0.5, 0.2, 0.2]]), shift)
    assert visible[0] == pytest.approx(0.0)
    out, visible = warp_boxes(np.array([[0.8, 0.5, 0.4, 0.2]]), shift)
    assert visible[0] == pytest.approx(0.5)
    np.testing.assert_allclose(out[0], [0.9, 0.5, 0.2, 0.2], atol=1e-6)


def test_swap_left_right_keeps_case_and_whole_words():
    assert swap_left_right("Right effusion; LEFT lung clear, leftover righteous") == \
        "Left effusion; RIGHT lung clear, leftover righteous"


IDENTITY = dict(crop_scale=[1.0, 1.0], crop_ratio=[1.0, 1.0], affine_scale=[1.0, 1.0], translate=0.0, rotate_deg=0.0,
                brightness=[1.0, 1.0], contrast=[1.0, 1.0], blur_p=0.0)


def test_flip_swaps_left_and_right_everywhere():
    row = raw_row("mimic_cxr")
    plain = encode_row(row, S, AugmentConfig(flip_p=0.0, **IDENTITY), seed=0)
    flipped = encode_row(row, S, AugmentConfig(flip_p=1.0, **IDENTITY), seed=0)
    np.testing.assert_allclose(flipped["image"], plain["image"][:, ::-1], atol=1e-6)
    r, l, atrium = REGIONS.index("right lung"), REGIONS.index("left lung"), REGIONS.index("right atrium")
    opacity = FINDINGS.index("lung opacity")
    assert plain["anat_present"][r] and plain["anat_labels"][r, opacity] == 1 and plain["anat_labels"][l, opacity] == 0
    # the lesion's region is now called "left lung", with the mirrored box, its label and its phrase
    np.testing.assert_allclose(flipped["anat_boxes"][l], [1 - 20 / S, 50 / S, 20 / S, 20 / S], atol=1e-6)
    np.testing.assert_allclose(flipped["anat_boxes"][r], [0.25, 0.5, 0.3, 0.6], atol=1e-6)
    assert flipped["anat_labels"][l, opacity] == 1 and flipped["anat_labels"][r, opacity] == 0
    assert not flipped["anat_present"][atrium]  # no region of that name lies on the image's left
    plain_texts, texts = json.loads(plain["texts"]), json.loads(flipped["texts"])
    assert plain_texts["phrases"][r] == ["Opacity in the right lower lobe."]
    assert texts["phrases"][l] == ["Opacity in the left lower lobe."] and texts["phrases"][r] == []
    assert texts["sentences"] == ["Opacity in the left lower lobe.", "The right lung is clear."]


def test_flip_mirrors_pathology_boxes():
    row = raw_row("vindr_cxr")
    flipped = encode_row(row, S, AugmentConfig(flip_p=1.0, **IDENTITY), seed=0)
    k = PATHOLOGIES.index("Nodule/Mass")
    assert flipped["patho_labels"][k] == 1 and flipped["patho_box_mask"][k].sum() == 1
    np.testing.assert_allclose(flipped["patho_boxes"][k, 0], [1 - 20 / S, 50 / S, 20 / S, 20 / S], atol=1e-6)
    assert (flipped["patho_labels"][np.arange(len(PATHOLOGIES)) != k] == -1).all()  # unlabelled classes stay unknown


def test_augmentation_is_reproducible_per_row_and_differs_between_copies():
    row = raw_row("mimic_cxr")
    a, b = encode_row(row, S, AugmentConfig(), seed=5), encode_row(row, S, AugmentConfig(), seed=5)
    np.testing.assert_array_equal(a["image"], b["image"])
    other = encode_row({**row, "copy": 1}, S, AugmentConfig(), seed=5)
    assert not np.array_equal(a["image"], other["image"])


@pytest.mark.parametrize(("mimic", "vindr", "factor", "expected"),
                         [(100, 30, 0, 3), (100, 40, 0, 2), (10, 40, 0, 1), (100, 0, 0, 0), (100, 30, 5, 5)])
def test_oversampling_factor(mimic, vindr, factor, expected):
    assert oversampling_factor(mimic, vindr, factor) == expected
