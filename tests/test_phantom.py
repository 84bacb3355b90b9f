"""Phantom renderer: determinism, box validity, and that every lesion is drawn where its box says."""
from __future__ import annotations

import numpy as np
import pytest

from preprocessing.classes import CIG_BBOX_NAMES_36
from preprocessing.synth.phantom import LESION_KINDS, Lesion, render_frontal, render_lateral

W, H = 320, 384
ZONAL = ("consolidation", "atelectasis", "nodule", "mass", "opacity")


def _render(lesions: list[Lesion], seed: int = 0, size: tuple[int, int] = (W, H)):
    return render_frontal(size[0], size[1], lesions, np.random.default_rng(seed))


def _mean(img: np.ndarray, box) -> float:
    x1, y1, x2, y2 = (int(round(c)) for c in box)
    return float(img[y1:y2, x1:x2].mean())


def _overlap(a, b) -> float:
    """Fraction of box a's area lying inside box b."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]))


def _valid(box, width: int, height: int) -> bool:
    x1, y1, x2, y2 = box
    return 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height


ALL_KINDS = [Lesion(k, None if k in ("cardiomegaly", "edema") else s, "mid" if k in ZONAL else None, 0.6)
             for k, s in zip(LESION_KINDS, ["right", None, "left", "right", "left", "right", "left", None, "right"])]


def test_image_dtype_shape_range_and_realistic_size():
    for size in [(W, H), (H, W), (2500, 3000)]:
        img = _render([Lesion("nodule", "left", "upper")], size=size).image
        assert img.shape == (size[1], size[0]) and img.dtype == np.float32
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.05
    lat = render_lateral(W, H, np.random.default_rng(0))
    assert lat.shape == (H, W) and lat.dtype == np.float32 and 0.0 <= lat.min() and lat.max() <= 1.0


def test_deterministic_per_seed_and_fixed_rng_consumption():
    a, b, c = _render(ALL_KINDS, 3), _render(ALL_KINDS, 3), _render(ALL_KINDS, 4)
    assert np.array_equal(a.image, b.image) and a.anatomy == b.anatomy and a.lesion_boxes == b.lesion_boxes
    assert not np.array_equal(a.image, c.image) and a.anatomy != c.anatomy
    lat1, lat2 = (render_lateral(W, H, np.random.default_rng(1)) for _ in range(2))
    assert np.array_equal(lat1, lat2)
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    render_frontal(W, H, [], r1)
    render_frontal(2 * W, H, ALL_KINDS, r2)
    assert r1.random() == r2.random()          # one fixed draw per render, whatever the size and lesions


@pytest.mark.parametrize("size", [(W, H), (H, W)])
def test_anatomy_boxes_valid_and_lateralized(size):
    for seed in range(4):
        p = _render([], seed, size)
        assert list(p.anatomy) == list(CIG_BBOX_NAMES_36)
        assert all(_valid(b, *size) for b in p.anatomy.values())
        rl, ll = p.anatomy["right lung"], p.anatomy["left lung"]
        assert rl[2] <= ll[0] and rl[2] < size[0] / 2 < ll[0]            # patient right = image left
        heart, spine = p.anatomy["cardiac silhouette"], p.anatomy["spine"]
        mid = (spine[0] + spine[2]) / 2
        assert heart[2] - mid > mid - heart[0]                          # heart extends to the patient's left
        assert p.anatomy["right hemidiaphragm"][1] < p.anatomy["left hemidiaphragm"][1]
        s = min(size)
        thorax = (rl[0], rl[1], ll[2], max(rl[3], ll[3]))               # thorax inside the centre square
        assert (size[0] - s) / 2 <= thorax[0] and thorax[2] <= (size[0] + s) / 2
        assert (size[1] - s) / 2 <= thorax[1] and thorax[3] <= (size[1] + s) / 2
        for side, lung in (("right", rl), ("left", ll)):
            zones = [p.anatomy[f"{side} {z} lung zone"] for z in ("upper", "mid", "lower")]
            assert zones[0][1] == pytest.approx(lung[1]) and zones[2][3] == pytest.approx(lung[3])
            assert _overlap(p.anatomy[f"{side} costophrenic angle"], lung) > 0.5
            assert _overlap(p.anatomy[f"{side} apical zone"], lung) == pytest.approx(1.0)


def test_lungs_dark_and_bones_bright():
    p = _render([], 1)
    lung, spine = p.anatomy["right mid lung zone"], p.anatomy["spine"]
    assert _mean(p.image, lung) + 0.15 < _mean(p.image, (spine[0], lung[1], spine[2], lung[3]))
    assert _mean(p.image, (0, 0, 8, 8)) < 0.15                                # air outside the body


@pytest.mark.parametrize("lesion", ALL_KINDS, ids=lambda l: l.kind)
def test_lesion_box_inside_lung_and_changes_pixels(lesion):
    for seed in (0, 5):
        base, p = _render([], seed), _render([lesion], seed)
        (box,) = p.lesion_boxes
        assert _valid(box, W, H)
        diff = _mean(p.image, box) - _mean(base.image, box)
        if lesion.kind == "pneumothorax":
            assert diff < -0.02                                               # lucent, no lung markings
        else:
            assert diff > 0.02
        if lesion.kind == "cardiomegaly":
            assert box == p.anatomy["cardiac silhouette"]
            continue
        sides = [lesion.side] if lesion.side else ["right", "left"]
        lungs = [base.anatomy[f"{s} lung"] for s in sides]
        hull = (min(b[0] for b in lungs), min(b[1] for b in lungs), max(b[2] for b in lungs), max(b[3] for b in lungs))
        assert _overlap(box, hull) > 0.9
        if lesion.side:                                                       # the other lung is left alone
            other = base.anatomy[f"{'left' if lesion.side == 'right' else 'right'} lung"]
            assert _overlap(box, other) < 0.05
        assert p.anatomy == base.anatomy                                      # same patient, same anatomy


def test_pleural_effusion_at_the_base_of_its_side():
    for seed in range(3):
        both = [Lesion("pleural_effusion", "left", None, 0.6), Lesion("pleural_effusion", "right", None, 1.0)]
        p = _render(both, seed)
        (lx1, ly1, lx2, ly2), (rx1, ry1, rx2, ry2) = p.lesion_boxes
        left, right = p.anatomy["left lung"], p.anatomy["right lung"]
        assert lx1 >= W / 2 - 2 and rx2 <= W / 2 + 2
        assert abs(ly2 - left[3]) < 0.05 * H and abs(ry2 - right[3]) < 0.05 * H
        assert ry2 - ry1 > ly2 - ly1                                          # severity sets height
        assert _overlap(p.anatomy["left costophrenic angle"], p.lesion_boxes[0]) > 0.5


def test_cardiomegaly_raises_cardiothoracic_ratio():
    def ctr(p) -> float:
        heart, rl, ll = p.anatomy["cardiac silhouette"], p.anatomy["right lung"], p.anatomy["left lung"]
        return (heart[2] - heart[0]) / (ll[2] - rl[0])

    for seed in range(6):
        normal, big = _render([], seed), _render([Lesion("cardiomegaly", None, None, 0.5)], seed)
        assert ctr(normal) < 0.5 and ctr(big) > 0.55
        assert big.anatomy["right lung"] == normal.anatomy["right lung"]


def test_zonal_lesions_land_in_their_zone_and_nodules_are_small():
    for zone in ("upper", "mid", "lower"):
        p = _render([Lesion("nodule", "right", zone, 0.8), Lesion("mass", "left", zone, 0.8)], 2)
        for box, side in zip(p.lesion_boxes, ("right", "left")):
            z = p.anatomy[f"{side} {zone} lung zone"]
            cy = (box[1] + box[3]) / 2
            assert z[1] - 0.03 * H <= cy <= z[3] + 0.03 * H
        nodule, mass = p.lesion_boxes
        assert 0.008 * W < nodule[2] - nodule[0] < 0.04 * W < mass[2] - mass[0] < 0.1 * W


def test_pneumothorax_is_apicolateral():
    p = _render([Lesion("pneumothorax", "right", None, 0.8)], 1)
    box, lung = p.lesion_boxes[0], p.anatomy["right lung"]
    assert box[1] - lung[1] < 0.03 * H and box[0] - lung[0] < 0.03 * W      # touches apex and chest wall
    assert box[3] < lung[3]                                                 # spares the base


def test_combined_lesions_and_bad_input():
    p = _render(ALL_KINDS, 7)
    assert len(p.lesion_boxes) == len(ALL_KINDS) and all(_valid(b, W, H) for b in p.lesion_boxes)
    with pytest.raises(ValueError):
        _render([Lesion("fracture", "left")])
    with pytest.raises(ValueError):
        _render([Lesion("nodule", None, "upper")])
