"""The per-record worker without Ray: annotation frames, box rejects, unreadable images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.ingest.process import process_record
from preprocessing.image_io import decode_png
from preprocessing.records import PixelBox, RawRecord


def _record(path: Path, expected: tuple[int, int] | None, boxes: list[PixelBox]) -> RawRecord:
    return RawRecord(source="mimic_cxr", split="train", sample_id="s", image_id="i", image_path=str(path),
                     source_path=path.name, expected_size=expected, boxes=boxes)


@pytest.fixture
def small_jpeg(tmp_path: Path) -> Path:
    path = tmp_path / "img.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (500, 400), dtype=np.uint8)).save(path, quality=95)
    return path


def test_boxes_of_a_resized_copy_use_the_metadata_frame(small_jpeg):
    box = PixelBox("Cardiomegaly", 200, 300, 600, 700)   # in the 800x1000 original frame
    row, rejects = process_record(_record(small_jpeg, (800, 1000), [box]), 64, True, None)
    assert rejects == []
    assert (row["orig_width"], row["orig_height"]) == (400, 500)
    # centre crop of 800x1000 is y in [100, 900]: box -> x [0.25, 0.75], y [0.25, 0.75]
    got = row["boxes"][0]
    np.testing.assert_allclose([got["cx"], got["cy"], got["w"], got["h"]], [0.5, 0.5, 0.5, 0.5], atol=1e-6)
    assert decode_png(row["image_png"]).shape == (64, 64)


def test_aspect_mismatch_with_metadata_rejects_the_image(small_jpeg):
    row, rejects = process_record(_record(small_jpeg, (1000, 1000), []), 64, True, None)
    assert row is None and rejects[0].stage == "image" and "1000x1000" in rejects[0].reason


def test_box_outside_image_and_outside_crop_are_separate_rejects(small_jpeg):
    boxes = [PixelBox("Nodule", 900, 100, 950, 150), PixelBox("Mass", 10, 10, 100, 40), PixelBox("Edema", 50, 200, 300, 400)]
    row, rejects = process_record(_record(small_jpeg, None, boxes), 64, True, None)
    reasons = sorted(r.reason for r in rejects)
    assert [b["name"] for b in row["boxes"]] == ["Edema"]
    assert len(reasons) == 2
    assert "'Mass' falls outside the stored centre crop" in reasons[0] and "'Nodule'" in reasons[1] and "outside the 400x500" in reasons[1]


def test_missing_image_is_a_missing_reject_not_a_corrupt_one(tmp_path):
    row, rejects = process_record(_record(tmp_path / "nope.jpg", None, []), 64, True, None)
    assert row is None and [(r.stage, r.reason) for r in rejects] == [("missing", "image file not found")]


def _dicom(tmp_path: Path, name: str, **tags: object) -> Path:
    from tests_support import write_dicom

    arr = np.random.default_rng(1).integers(0, 4095, (60, 50)).astype(np.uint16)
    write_dicom(tmp_path / name, arr, "MONOCHROME2", 12, **tags)
    return tmp_path / name


@pytest.mark.parametrize("modality", ["CT", "MR", "SEG"])
def test_a_dicom_of_another_modality_is_a_reject(tmp_path, modality):
    rec = _record(_dicom(tmp_path, "x.dcm", Modality=modality), None, [])
    row, rejects = process_record(rec, 32, True, None)
    assert row is None and [r.stage for r in rejects] == ["image"]
    assert f"Modality '{modality}'" in rejects[0].reason and "CR, DX" in rejects[0].reason
    row, rejects = process_record(rec, 32, True, None, allowed_modalities=["CR", "DX", modality])
    assert row is not None and rejects == []
    assert process_record(rec, 32, True, None, allowed_modalities=[])[0] is not None


def test_radiographs_pass_and_a_missing_modality_is_kept_with_a_note(tmp_path):
    for modality in ("CR", "DX", "dx "):
        row, rejects = process_record(_record(_dicom(tmp_path, "r.dcm", Modality=modality), None, []), 32, True, None)
        assert row is not None and rejects == [], modality
    row, rejects = process_record(_record(_dicom(tmp_path, "n.dcm"), None, []), 32, True, None)
    assert row is not None and len(rejects) == 1 and "no Modality tag; kept" in rejects[0].reason


def test_a_jpeg_has_no_modality_to_check(small_jpeg):
    row, rejects = process_record(_record(small_jpeg, None, []), 32, True, None)
    assert row is not None and rejects == []
