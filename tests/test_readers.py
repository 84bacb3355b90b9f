"""Dataset readers against small hand-written fixtures that follow the real on-disk formats.

Every fixture is literal text (see /work/shared/specs/dataset-formats.md for the formats) and every expected
value is written out by hand here, so a reader that drifts from the format makes a test fail.
"""
from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest
from ensemble_boxes import weighted_boxes_fusion
from PIL import Image

from preprocessing.archive import read_member
from preprocessing.chest_imagenome import SceneGraphError, index_scene_graphs, parse_scene_graph
from preprocessing.mimic_cxr import image_lookup, read_mimic_cxr
from preprocessing.ms_cxr import read_ms_cxr
from preprocessing.nih_cxr import read_nih
from preprocessing.records import GroundedPhrase, PixelBox, RawRecord, Reject
from preprocessing.vindr_cxr import fuse_boxes, read_vindr


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------

def write_text(path: Path, text: str, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def write_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 128).save(path)
    return path


def reject_keys(rejects: list[Reject]) -> list[tuple[str, str, str, str]]:
    """(source, source_path, stage, record_id), sorted: what a reject points at, without the free-text reason."""
    return sorted((r.source, r.source_path, r.stage, r.record_id) for r in rejects)


def box_tuple(b: PixelBox) -> tuple:
    return (b.name, b.x1, b.y1, b.x2, b.y2, b.reader)


def assert_boxes(actual: list[PixelBox], expected: list[tuple], rel: float = 1e-12, abs_: float = 0.0) -> None:
    """Boxes in order; expected entries are (name, x1, y1, x2, y2, reader)."""
    assert [(b.name, b.reader) for b in actual] == [(e[0], e[5]) for e in expected]
    for b, e in zip(actual, expected):
        assert (b.x1, b.y1, b.x2, b.y2) == pytest.approx(e[1:5], rel=rel, abs=abs_), b


# --------------------------------------------------------------------------------------------------------------
# NIH ChestX-ray14 (spec 6.3, 6.4)
# --------------------------------------------------------------------------------------------------------------

NIH_LABELS_15 = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
    "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax", "No Finding",
)

NIH_DATA_ENTRY_2017 = """\
Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],
00000001_000.png,Atelectasis,0,1,61,M,PA,2480,2020,0.17,0.17,
00000001_001.png,No Finding,1,1,62,M,AP,3008,2496,0.139,0.139,
00000002_000.png,Infiltration|Effusion,0,2,45,F,PA,2500,2048,0.143,0.143,
00000002_001.png,Cardiomegaly|Pleural_Thickening|Hernia,1,2,46,F,PA,2500,2048,0.143,0.143,
00000003_000.png,Mass,0,3,50,M,PA,2048,2500,0.143,0.143,
00000004_000.png,Nodule,0,4,33,F,PA,2048,2500,0.143,0.143,
00000005_000.png,Pneumonia,0,5,71,M,AP,2048,2500,0.143,0.143,
00000006_000.png,Pneumothorax,0,6,29,F,PA,2048,2500,0.143,0.143,
00000007_000.png,Atelectasis|Consolidation,0,7,58,M,PA,2048,2500,0.143,0.143,
00000008_000.png,Effusion|Edema,0,8,80,F,AP,2048,2500,0.143,0.143,
00000009_000.png,Cardiomegaly|Emphysema,0,9,67,M,PA,2048,2500,0.143,0.143,
00000010_000.png,Infiltration|Fibrosis,0,10,40,F,PA,2048,2500,0.143,0.143,
00000011_000.png,Mass|Nodule,0,11,55,M,PA,2048,2500,0.143,0.143,
00000012_000.png,Pneumonia|Infiltration,0,12,62,F,AP,2048,2500,0.143,0.143,
00000013_000.png,No Finding,0,13,35,M,PA,2048,2500,0.143,0.143,
00000013_001.png,Emphysema,1,13,36,M,PA,2048,2500,0.143,0.143,
00000014_000.png,Hernia,0,14,77,F,PA,2048,2500,0.143,0.143,
"""

# line 1 header; the malformed rows are on lines 15 and 16; 00000099_000.png is not in Data_Entry.
NIH_BBOX_LIST = """\
Image Index,Finding Label,Bbox [x,y,w,h],,,
00000001_000.png,Atelectasis,214.372881355932,560.203389830508,91.1186440677966,74.8474576271186
00000002_000.png,Infiltrate,671.457627118644,140.067796610169,177.355932203389,298.305084745762,,,
00000002_000.png,Effusion,100.5,600.25,200.125,150.0,,,
00000002_001.png,Cardiomegaly,350.0,500.0,400.0,300.0
00000003_000.png,Mass,10.0,20.0,30.0,40.0
00000004_000.png,Nodule,11.0,21.0,31.0,41.0
00000005_000.png,Pneumonia,12.0,22.0,32.0,42.0
00000006_000.png,Pneumothorax,13.0,23.0,33.0,43.0
00000007_000.png,Atelectasis,14.0,24.0,34.0,44.0
00000008_000.png,Effusion,15.0,25.0,35.0,45.0
00000009_000.png,Cardiomegaly,16.0,26.0,36.0,46.0
00000010_000.png,Infiltrate,17.0,27.0,37.0,47.0
00000011_000.png,Mass,18.0,28.0,38.0,48.0
00000005_000.png,Pneumothorax,12.5,not-a-number,30,40
00000006_000.png,Pneumothorax,12.5,20.5
00000012_000.png,Pneumonia,19.0,29.0,39.0,49.0
00000099_000.png,Nodule,100.0,100.0,50.0,50.0
"""

# Kaggle layout: images_001/images/ and images_002/images/; 00000014_000.png has no file at all.
NIH_KAGGLE_IMAGES = {
    "images_001": ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000002_001.png",
                   "00000003_000.png", "00000004_000.png", "00000005_000.png", "00000006_000.png"],
    "images_002": ["00000007_000.png", "00000008_000.png", "00000009_000.png", "00000010_000.png",
                   "00000011_000.png", "00000012_000.png", "00000013_000.png", "00000013_001.png"],
}


def nih_labels(*present: str) -> dict[str, int]:
    return {name: int(name in present) for name in NIH_LABELS_15}


def write_nih_tree(root: Path) -> Path:
    """The NIH fixture tree: both tables and the Kaggle image folders (tests/test_dataset_variants.py uses it too)."""
    write_text(root / "Data_Entry_2017.csv", NIH_DATA_ENTRY_2017)
    write_text(root / "BBox_List_2017.csv", NIH_BBOX_LIST)
    for folder, names in NIH_KAGGLE_IMAGES.items():
        for name in names:
            write_png(root / folder / "images" / name)
    return root


@pytest.fixture
def nih_root(tmp_path: Path) -> Path:
    return write_nih_tree(tmp_path / "nih")


def _nih_split_by_patient(records: list[RawRecord]) -> dict[str, str]:
    splits: dict[str, set[str]] = {}
    for r in records:
        splits.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in splits.values()), f"a patient spans several splits: {splits}"
    return {pid: s.pop() for pid, s in splits.items()}


def test_nih_trailing_comma_csv_labels_and_fields(nih_root: Path) -> None:
    records, _ = read_nih(nih_root, nih_root.parent, seed=0)
    by_id = {r.image_id: r for r in records}
    assert [r.image_id for r in records] == [
        "00000001_000.png", "00000001_001.png", "00000002_000.png", "00000002_001.png", "00000003_000.png",
        "00000004_000.png", "00000005_000.png", "00000006_000.png", "00000007_000.png", "00000008_000.png",
        "00000009_000.png", "00000010_000.png", "00000011_000.png", "00000012_000.png", "00000013_000.png",
        "00000013_001.png", "00000014_000.png",
    ]
    assert by_id["00000001_000.png"].labels == nih_labels("Atelectasis")
    assert by_id["00000001_001.png"].labels == nih_labels("No Finding")
    assert by_id["00000002_000.png"].labels == nih_labels("Infiltration", "Effusion")
    assert by_id["00000002_001.png"].labels == nih_labels("Cardiomegaly", "Pleural_Thickening", "Hernia")
    assert sum(by_id["00000002_001.png"].labels.values()) == 3
    r = by_id["00000001_001.png"]
    assert (r.source, r.sample_id, r.patient_id, r.view_position) == ("nih_cxr", "00000001_001.png", "1", "AP")
    assert (r.study_id, r.expected_size, r.fuse_boxes) == (None, None, False)
    assert by_id["00000013_001.png"].patient_id == "13"
    assert by_id["00000013_001.png"].view_position == "PA"


def test_nih_kaggle_image_layout_and_missing_image(nih_root: Path) -> None:
    records, _ = read_nih(nih_root, nih_root.parent, seed=0)
    by_id = {r.image_id: r for r in records}
    r = by_id["00000002_000.png"]
    assert r.image_path == str(nih_root / "images_001" / "images" / "00000002_000.png")
    assert r.source_path == "nih/images_001/images/00000002_000.png"
    assert by_id["00000013_001.png"].source_path == "nih/images_002/images/00000013_001.png"
    # no file anywhere: the record still points at the flat layout so the worker reports the missing image
    assert by_id["00000014_000.png"].image_path == str(nih_root / "images" / "00000014_000.png")
    assert by_id["00000014_000.png"].source_path == "nih/images/00000014_000.png"


def test_nih_boxes_xywh_to_xyxy_and_infiltrate_renamed(nih_root: Path) -> None:
    records, _ = read_nih(nih_root, nih_root.parent, seed=0)
    by_id = {r.image_id: r for r in records}
    assert_boxes(by_id["00000001_000.png"].boxes, [
        ("Atelectasis", 214.372881355932, 560.203389830508, 305.4915254237286, 635.0508474576266, None)])
    assert_boxes(by_id["00000002_000.png"].boxes, [
        ("Infiltration", 671.457627118644, 140.067796610169, 848.813559322033, 438.372881355931, None),
        ("Effusion", 100.5, 600.25, 300.625, 750.25, None),
    ])
    assert_boxes(by_id["00000002_001.png"].boxes, [("Cardiomegaly", 350.0, 500.0, 750.0, 800.0, None)])
    assert_boxes(by_id["00000010_000.png"].boxes, [("Infiltration", 17.0, 27.0, 54.0, 74.0, None)])
    # the malformed rows for 00000005/00000006 are dropped; their good rows stay
    assert_boxes(by_id["00000005_000.png"].boxes, [("Pneumonia", 12.0, 22.0, 44.0, 64.0, None)])
    assert_boxes(by_id["00000006_000.png"].boxes, [("Pneumothorax", 13.0, 23.0, 46.0, 66.0, None)])
    for name in ("00000001_001.png", "00000013_000.png", "00000013_001.png", "00000014_000.png"):
        assert by_id[name].boxes == []


def test_nih_malformed_and_orphan_box_rows_are_rejected(nih_root: Path) -> None:
    _, rejects = read_nih(nih_root, nih_root.parent, seed=0)
    assert reject_keys(rejects) == [
        ("nih_cxr", "nih/BBox_List_2017.csv", "box", "00000099_000.png"),
        ("nih_cxr", "nih/BBox_List_2017.csv#row15", "box", "00000005_000.png"),
        ("nih_cxr", "nih/BBox_List_2017.csv#row16", "box", "00000006_000.png"),
    ]


def test_nih_eval_split_is_by_patient_and_only_box_patients(nih_root: Path) -> None:
    records, _ = read_nih(nih_root, nih_root.parent, seed=0)
    split = _nih_split_by_patient(records)
    box_patients = {str(i) for i in range(1, 13)}
    assert set(split) == box_patients | {"13", "14"}
    assert split["13"] == split["14"] == "train"
    assert {split[p] for p in box_patients} == {"val", "test"}
    assert sum(split[p] == "val" for p in box_patients) == 6
    assert sum(split[p] == "test" for p in box_patients) == 6
    # patient 1's second image has no box but follows its patient out of train
    assert {r.image_id: r.split for r in records}["00000001_001.png"] == split["1"]


def test_nih_split_reproducible_and_seed_dependent(nih_root: Path) -> None:
    first = _nih_split_by_patient(read_nih(nih_root, nih_root.parent, seed=3)[0])
    again = _nih_split_by_patient(read_nih(nih_root, nih_root.parent, seed=3)[0])
    assert first == again
    others = [_nih_split_by_patient(read_nih(nih_root, nih_root.parent, seed=s)[0]) for s in range(4, 14)]
    assert any(o != first for o in others)
    for o in others:  # a different seed changes who is val/test, never who is evaluated
        assert {p for p, s in o.items() if s == "train"} == {"13", "14"}


NIH_DATA_ENTRY_V2020 = """\
Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]
00000021_000.png,Effusion|Nodule,0,21,58,F,PA,2992,2991,0.143,0.143
00000021_001.png,No Finding,1,21,58,F,AP,2500,2048,0.168,0.168
00000022_000.png,Pleural_Thickening,0,22,70,M,PA,2048,2500,0.143,0.143
"""


def test_nih_v2020_file_and_flat_images_layout(tmp_path: Path) -> None:
    root = tmp_path / "nih"
    write_text(root / "Data_Entry_2017_v2020.csv", NIH_DATA_ENTRY_V2020)
    for name in ("00000021_000.png", "00000021_001.png", "00000022_000.png"):
        write_png(root / "images" / name)
    records, rejects = read_nih(root, tmp_path, seed=0)
    assert rejects == []
    assert [(r.image_id, r.patient_id, r.view_position, r.split, r.source_path) for r in records] == [
        ("00000021_000.png", "21", "PA", "train", "nih/images/00000021_000.png"),
        ("00000021_001.png", "21", "AP", "train", "nih/images/00000021_001.png"),
        ("00000022_000.png", "22", "PA", "train", "nih/images/00000022_000.png"),
    ]
    assert records[0].image_path == str(root / "images" / "00000021_000.png")
    assert [r.labels for r in records] == [
        nih_labels("Effusion", "Nodule"), nih_labels("No Finding"), nih_labels("Pleural_Thickening")]
    assert all(r.boxes == [] for r in records)


# --------------------------------------------------------------------------------------------------------------
# VinDr-CXR (spec 4.2 - 4.5)
# --------------------------------------------------------------------------------------------------------------

VINDR_LABELS_28 = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture", "Consolidation",
    "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst",
    "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD", "Lung tumor", "Pneumonia", "Tuberculosis",
    "Other disease", "No finding",
)

VA, VB, VC = "0a1b2c3d4e5f60718293a4b5c6d7e8f9", "1b2c3d4e5f60718293a4b5c6d7e8f90a", "2c3d4e5f60718293a4b5c6d7e8f90a1b"
VT1, VT2, VT3, VT4 = ("d0000000000000000000000000000001", "d0000000000000000000000000000002",
                      "d0000000000000000000000000000003", "d0000000000000000000000000000004")

# line 11 (C, R1) has an empty y_min.
VINDR_ANNOTATIONS_TRAIN = f"""\
image_id,rad_id,class_name,x_min,y_min,x_max,y_max
{VA},R1,No finding,,,,
{VA},R2,No finding,,,,
{VA},R3,No finding,,,,
{VB},R3,Cardiomegaly,655.0,1402.0,1610.0,1866.0
{VB},R5,Cardiomegaly,702.5,1390.25,1640.0,1822.75
{VB},R5,Lung Opacity,812.47,601.12,1188.09,902.33
{VB},R5,Infiltration,812.47,601.12,1188.09,902.33
{VB},R8,Nodule/Mass,100.0,200.0,180.0,260.0
{VB},R3,Nodule/Mass,1500.0,300.0,1580.0,370.0
{VC},R1,Pleural effusion,12.5,,40.0,50.0
{VC},R2,No finding,,,,
{VC},R4,No finding,,,,
"""

# columns: image_id, rad_id, then the 28 labels (27th = "Other diseases", 28th = "No finding").
VINDR_IMAGE_LABELS_TRAIN = f"""\
image_id,rad_id,Aortic enlargement,Atelectasis,Calcification,Cardiomegaly,Clavicle fracture,Consolidation,Edema,Emphysema,Enlarged PA,ILD,Infiltration,Lung Opacity,Lung cavity,Lung cyst,Mediastinal shift,Nodule/Mass,Pleural effusion,Pleural thickening,Pneumothorax,Pulmonary fibrosis,Rib fracture,Other lesion,COPD,Lung tumor,Pneumonia,Tuberculosis,Other diseases,No finding
{VA},R1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1
{VA},R2,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1
{VA},R3,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1
{VB},R3,0,0,0,1,0,0,0,0,0,0,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,1,0
{VB},R5,0,0,0,1,0,0,0,0,0,0,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,0
{VB},R8,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,1,0,0
{VC},R1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,0
{VC},R2,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1
{VC},R4,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1
"""

# consensus test set: no rad_id column; a global-only class row with empty coordinates is tolerated.
VINDR_ANNOTATIONS_TEST = f"""\
image_id,class_name,x_min,y_min,x_max,y_max
{VT1},Aortic enlargement,1001.5,700.0,1200.25,880.0
{VT2},No finding,,,,
{VT3},Cardiomegaly,650.0,1400.0,1600.0,1850.0
{VT3},Cardiomegaly,700.0,1390.0,1640.0,1820.0
{VT4},Other disease,,,,
"""

VINDR_IMAGE_LABELS_TEST = f"""\
image_id,Aortic enlargement,Atelectasis,Calcification,Cardiomegaly,Clavicle fracture,Consolidation,Edema,Emphysema,Enlarged PA,ILD,Infiltration,Lung Opacity,Lung cavity,Lung cyst,Mediastinal shift,Nodule/Mass,Pleural effusion,Pleural thickening,Pneumothorax,Pulmonary fibrosis,Rib fracture,Other lesion,COPD,Lung tumor,Pneumonia,Tuberculosis,Other disease,No finding
{VT1},1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
{VT2},0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1
{VT3},0,0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
{VT4},0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,0
"""


def vindr_labels(*present: str) -> dict[str, int]:
    return {name: int(name in present) for name in VINDR_LABELS_28}


@pytest.fixture
def vindr_root(tmp_path: Path) -> Path:
    root = tmp_path / "vindr"
    ann = root / "annotations"
    for name, text in (("annotations_train.csv", VINDR_ANNOTATIONS_TRAIN),
                       ("image_labels_train.csv", VINDR_IMAGE_LABELS_TRAIN),
                       ("annotations_test.csv", VINDR_ANNOTATIONS_TEST),
                       ("image_labels_test.csv", VINDR_IMAGE_LABELS_TEST)):
        lines = text.splitlines()
        assert len({len(line.split(",")) for line in lines}) == 1, f"fixture {name} is ragged"
        write_text(ann / name, text)
    return root


def test_vindr_fixture_ids_have_real_shape() -> None:
    for image_id in (VA, VB, VC, VT1, VT2, VT3, VT4):
        assert len(image_id) == 32 and all(c in "0123456789abcdef" for c in image_id)


def test_vindr_train_records_boxes_per_reader(vindr_root: Path) -> None:
    records, _ = read_vindr(vindr_root, vindr_root.parent, seed=0)
    train = [r for r in records if r.split == "train"]
    assert [r.image_id for r in train] == [VA, VB, VC]
    a, b, c = train
    assert a.boxes == []  # three "No finding" rows with empty coordinates produce no box
    assert c.boxes == []  # its only box row is unreadable (rejected below)
    assert [box_tuple(x) for x in b.boxes] == [
        ("Cardiomegaly", 655.0, 1402.0, 1610.0, 1866.0, "R3"),
        ("Cardiomegaly", 702.5, 1390.25, 1640.0, 1822.75, "R5"),
        ("Lung Opacity", 812.47, 601.12, 1188.09, 902.33, "R5"),   # one box, two class names -> two boxes
        ("Infiltration", 812.47, 601.12, 1188.09, 902.33, "R5"),
        ("Nodule/Mass", 100.0, 200.0, 180.0, 260.0, "R8"),
        ("Nodule/Mass", 1500.0, 300.0, 1580.0, 370.0, "R3"),
    ]
    assert all(r.fuse_boxes for r in train)
    assert b.image_path == str(vindr_root / "train" / f"{VB}.dicom")
    assert b.source_path == f"vindr/train/{VB}.dicom"
    assert (b.source, b.sample_id, b.view_position, b.patient_id) == ("vindr_cxr", VB, "PA", None)


def test_vindr_train_labels_majority_vote_and_renamed_column(vindr_root: Path) -> None:
    records, _ = read_vindr(vindr_root, vindr_root.parent, seed=0)
    by_id = {r.image_id: r for r in records}
    assert by_id[VA].labels == vindr_labels("No finding")
    # B: Cardiomegaly, Nodule/Mass, Other diseases 2 of 3 -> 1; Infiltration, Lung Opacity, Tuberculosis 1 of 3 -> 0
    assert by_id[VB].labels == vindr_labels("Cardiomegaly", "Nodule/Mass", "Other disease")
    assert by_id[VC].labels == vindr_labels("No finding")
    assert "Other diseases" not in by_id[VB].labels


def test_vindr_unreadable_box_row_is_rejected(vindr_root: Path) -> None:
    _, rejects = read_vindr(vindr_root, vindr_root.parent, seed=0)
    assert reject_keys(rejects) == [("vindr_cxr", "vindr/annotations/annotations_train.csv#row11", "box", VC)]


def test_vindr_test_files_without_rad_id(vindr_root: Path) -> None:
    records, _ = read_vindr(vindr_root, vindr_root.parent, seed=0)
    test = {r.image_id: r for r in records if r.split in ("val", "test")}
    assert sorted(test) == [VT1, VT2, VT3, VT4]
    assert [box_tuple(x) for x in test[VT1].boxes] == [("Aortic enlargement", 1001.5, 700.0, 1200.25, 880.0, None)]
    assert test[VT2].boxes == [] and test[VT4].boxes == []
    # consensus boxes are kept as they are (no fusion for the test set)
    assert [box_tuple(x) for x in test[VT3].boxes] == [
        ("Cardiomegaly", 650.0, 1400.0, 1600.0, 1850.0, None),
        ("Cardiomegaly", 700.0, 1390.0, 1640.0, 1820.0, None),
    ]
    assert not any(r.fuse_boxes for r in test.values())
    assert test[VT1].labels == vindr_labels("Aortic enlargement")
    assert test[VT2].labels == vindr_labels("No finding")
    assert test[VT3].labels == vindr_labels("Cardiomegaly")
    assert test[VT4].labels == vindr_labels("Other disease")
    assert test[VT3].image_path == str(vindr_root / "test" / f"{VT3}.dicom")


def _vindr_test_split(root: Path, seed: int) -> dict[str, str]:
    return {r.image_id: r.split for r in read_vindr(root, root.parent, seed)[0] if r.split != "train"}


def test_vindr_test_split_half_val_reproducible(vindr_root: Path) -> None:
    first = _vindr_test_split(vindr_root, 7)
    assert sorted(first.values()) == ["test", "test", "val", "val"]
    assert _vindr_test_split(vindr_root, 7) == first
    assert any(_vindr_test_split(vindr_root, s) != first for s in range(8, 28))


VINDR_W, VINDR_H = 2048, 2500


def _fused_by_name(boxes: list[PixelBox]) -> list[PixelBox]:
    return sorted(boxes, key=lambda b: (b.name, b.x1))


def test_vindr_fuse_boxes_of_read_record(vindr_root: Path) -> None:
    records, _ = read_vindr(vindr_root, vindr_root.parent, seed=0)
    b = next(r for r in records if r.image_id == VB)
    fused = _fused_by_name(fuse_boxes(b.boxes, VINDR_W, VINDR_H))
    # Cardiomegaly R3 + R5 overlap (IoU ~0.82 > 0.1); equal scores -> coordinate mean:
    #   x1 (655 + 702.5)/2, y1 (1402 + 1390.25)/2, x2 (1610 + 1640)/2, y2 (1866 + 1822.75)/2
    # Nodule/Mass R8 and R3 do not overlap -> both kept unchanged; single-box classes pass through.
    # WBF works in float32 on [0, 1] coordinates, hence the small absolute tolerance.
    assert_boxes(fused, [
        ("Cardiomegaly", 678.75, 1396.125, 1625.0, 1844.375, None),
        ("Infiltration", 812.47, 601.12, 1188.09, 902.33, None),
        ("Lung Opacity", 812.47, 601.12, 1188.09, 902.33, None),
        ("Nodule/Mass", 100.0, 200.0, 180.0, 260.0, None),
        ("Nodule/Mass", 1500.0, 300.0, 1580.0, 370.0, None),
    ], rel=0, abs_=1e-3)


def test_vindr_fuse_boxes_three_readers_mean() -> None:
    boxes = [
        PixelBox("Cardiomegaly", 655.0, 1402.0, 1610.0, 1866.0, "R3"),
        PixelBox("Cardiomegaly", 702.5, 1390.25, 1640.0, 1822.75, "R5"),
        PixelBox("Cardiomegaly", 690.0, 1410.0, 1600.0, 1850.0, "R8"),
        PixelBox("Aortic enlargement", 1000.0, 700.0, 1200.0, 900.0, "R8"),
    ]
    fused = _fused_by_name(fuse_boxes(boxes, VINDR_W, VINDR_H))
    # x1 (655 + 702.5 + 690)/3 = 682.5; y1 (1402 + 1390.25 + 1410)/3 = 1400.75
    # x2 (1610 + 1640 + 1600)/3 = 1616.666..; y2 (1866 + 1822.75 + 1850)/3 = 1846.25
    assert_boxes(fused, [
        ("Aortic enlargement", 1000.0, 700.0, 1200.0, 900.0, None),
        ("Cardiomegaly", 682.5, 1400.75, 4850.0 / 3, 1846.25, None),
    ], rel=0, abs_=1e-3)


def test_vindr_fuse_boxes_weak_overlap_below_iou_threshold_stays_separate() -> None:
    # IoU = (10 x 100) / (100*100 + 100*100 - 1000) = 1000 / 19000 ~ 0.053 <= 0.1 -> not clustered
    boxes = [PixelBox("ILD", 0.0, 0.0, 100.0, 100.0, "R1"), PixelBox("ILD", 90.0, 0.0, 190.0, 100.0, "R2")]
    fused = _fused_by_name(fuse_boxes(boxes, 1000, 1000))
    assert_boxes(fused, [("ILD", 0.0, 0.0, 100.0, 100.0, None), ("ILD", 90.0, 0.0, 190.0, 100.0, None)],
                 rel=0, abs_=1e-3)


def test_ensemble_boxes_equal_confidence_gives_coordinate_mean() -> None:
    """The assumption behind the hand computations above: with all scores 1.0 the fused box is the plain mean."""
    boxes, scores, labels = weighted_boxes_fusion(
        [[[0.10, 0.20, 0.50, 0.60]], [[0.14, 0.22, 0.54, 0.58]]], [[1.0], [1.0]], [[0], [0]],
        iou_thr=0.1, skip_box_thr=1e-4)
    assert boxes.shape == (1, 4)
    assert boxes[0].tolist() == pytest.approx([0.12, 0.21, 0.52, 0.59], abs=1e-6)
    assert scores.tolist() == pytest.approx([1.0])
    assert labels.tolist() == [0]


# --------------------------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG (spec 1.3 - 1.5) + MIMIC-CXR report paths (2.1)
# --------------------------------------------------------------------------------------------------------------

D1 = "3f2a1b0c-9d8e7f6a-5b4c3d2e-1f0a9b8c-7d6e5f4a"   # PA, train, s50000001
D2 = "a1b2c3d4-e5f6a7b8-c9d0e1f2-a3b4c5d6-e7f8a9b0"   # LATERAL, train, s50000001
D3 = "0f1e2d3c-4b5a6978-8796a5b4-c3d2e1f0-0a1b2c3d"   # AP, validate, s50000002
D4 = "11111111-22222222-33333333-44444444-55555555"   # empty ViewPosition, test, s50000003 (no chexpert, no report)
D5 = "66666666-77777777-88888888-99999999-aaaaaaaa"   # AP, test, s50000003
D6 = "bbbbbbbb-cccccccc-dddddddd-eeeeeeee-ffffffff"   # non-numeric Rows
D7 = "12345678-9abcdef0-12345678-9abcdef0-12345678"   # only in the split file
D8 = "fedcba98-76543210-fedcba98-76543210-fedcba98"   # only in the metadata

MIMIC_METADATA = f"""\
dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning
{D1},10000001,50000001,CHEST (PA AND LAT),PA,3040,2536,21520315,103015.25,CHEST (PA AND LAT),postero-anterior,Erect
{D2},10000001,50000001,CHEST (PA AND LAT),LATERAL,3040,2536,21520315,103015.25,CHEST (PA AND LAT),lateral,Erect
{D3},10000001,50000002,CHEST (PORTABLE AP),AP,2544,3032,21520401,73012.5,CHEST (PORTABLE AP),antero-posterior,
{D4},11000002,50000003,,,2000,1800,21600101,73012.5,,,
{D5},11000002,50000003,CHEST (PORTABLE AP),AP,2500,2048,21600101,73012.5,CHEST (PORTABLE AP),antero-posterior,Recumbent
{D6},11000002,50000004,CHEST (PA AND LAT),PA,n/a,2048,21600202,91500.0,CHEST (PA AND LAT),postero-anterior,Erect
{D8},11000002,50000005,CHEST (PA AND LAT),PA,2048,2048,21600303,120000.0,CHEST (PA AND LAT),postero-anterior,Erect
"""

MIMIC_SPLIT = f"""\
dicom_id,study_id,subject_id,split
{D1},50000001,10000001,train
{D2},50000001,10000001,train
{D3},50000002,10000001,validate
{D4},50000003,11000002,test
{D5},50000003,11000002,test
{D6},50000004,11000002,train
{D7},50000006,11000002,train
"""

MIMIC_CHEXPERT = """\
subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices
10000001,50000001,,1.0,,-1.0,,,,1.0,,1.0,,,0.0,
10000001,50000002,,,,,,,,,1.0,,,,,
"""


@pytest.fixture(params=["csv.gz", "csv"])
def mimic_tree(request, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(raw_root, jpg_root, reports_root) with the three tables gzip-compressed or plain."""
    jpg = tmp_path / "mimic-cxr-jpg"
    gz = request.param == "csv.gz"
    for stem, text in (("metadata", MIMIC_METADATA), ("split", MIMIC_SPLIT), ("chexpert", MIMIC_CHEXPERT)):
        write_text(jpg / f"mimic-cxr-2.0.0-{stem}.{request.param}", text, gz=gz)
    reports = tmp_path / "mimic-cxr"
    write_text(reports / "files/p10/p10000001/s50000001.txt", "                 FINAL REPORT\n IMPRESSION: None.\n")
    write_text(reports / "files/p10/p10000001/s50000002.txt", "                 FINAL REPORT\n IMPRESSION: None.\n")
    return tmp_path, jpg, reports


def _mimic_record(jpg: Path, subject: str, study: str, dicom: str, split: str, view: str,
                  size: tuple[int, int], labels: dict[str, int]) -> RawRecord:
    rel = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
    return RawRecord(source="mimic_cxr", split=split, sample_id=f"{subject}/{study}/{dicom}", image_id=dicom,
                     image_path=str(jpg / rel), source_path=f"mimic-cxr-jpg/{rel}", patient_id=subject,
                     study_id=study, view_position=view, expected_size=size, labels=labels)


S1_LABELS = {"Cardiomegaly": 1, "Edema": -1, "Lung Opacity": 1, "Pleural Effusion": 1, "Pneumothorax": 0}


def test_mimic_records_from_plain_and_gzip_tables(mimic_tree) -> None:
    raw, jpg, _ = mimic_tree
    records, _ = read_mimic_cxr(jpg, raw)
    assert records == [
        _mimic_record(jpg, "10000001", "50000001", D1, "train", "PA", (2536, 3040), S1_LABELS),
        _mimic_record(jpg, "10000001", "50000001", D2, "train", "LATERAL", (2536, 3040), S1_LABELS),
        _mimic_record(jpg, "10000001", "50000002", D3, "val", "AP", (3032, 2544), {"No Finding": 1}),
        _mimic_record(jpg, "11000002", "50000003", D4, "test", "", (1800, 2000), {}),
        _mimic_record(jpg, "11000002", "50000003", D5, "test", "AP", (2048, 2500), {}),
    ]


def test_mimic_table_rejects(mimic_tree) -> None:
    raw, jpg, _ = mimic_tree
    _, rejects = read_mimic_cxr(jpg, raw)
    ext = "csv.gz" if (jpg / "mimic-cxr-2.0.0-metadata.csv.gz").is_file() else "csv"
    assert reject_keys(rejects) == sorted([
        ("mimic_cxr", f"mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.{ext}", "table", D6),     # Rows "n/a"
        ("mimic_cxr", f"mimic-cxr-jpg/files/p11/p11000002/s50000005/{D8}.jpg", "table", D8),  # no split row
        ("mimic_cxr", f"mimic-cxr-jpg/mimic-cxr-2.0.0-split.{ext}", "table", D7),        # no metadata row
    ])
    assert all(r.stage == "table" for r in rejects)


def test_mimic_report_paths_and_one_reject_per_study_without_report(mimic_tree) -> None:
    raw, jpg, reports = mimic_tree
    records, rejects = read_mimic_cxr(jpg, raw, reports_root=reports)
    got = {r.image_id: (r.report, r.report_source_path) for r in records}
    s1 = (str(reports), "files/p10/p10000001/s50000001.txt")
    s2 = (str(reports), "files/p10/p10000001/s50000002.txt")
    assert got == {
        D1: (s1, "mimic-cxr/files/p10/p10000001/s50000001.txt"),
        D2: (s1, "mimic-cxr/files/p10/p10000001/s50000001.txt"),
        D3: (s2, "mimic-cxr/files/p10/p10000001/s50000002.txt"),
        D4: (None, None),
        D5: (None, None),
    }
    report_rejects = [r for r in rejects if r.stage == "report"]
    assert [(r.source_path, r.record_id) for r in report_rejects] == [
        ("mimic-cxr/files/p11/p11000002/s50000003.txt", "50000003")]


def test_mimic_reports_read_from_the_shipped_zip(mimic_tree, tmp_path) -> None:
    """mimic-cxr-reports.zip as distributed (members files/pXX/...txt) works without extracting it."""
    raw, jpg, reports = mimic_tree
    zipped = raw / "mimic-cxr-zip"
    zipped.mkdir()
    with zipfile.ZipFile(zipped / "mimic-cxr-reports.zip", "w") as zf:
        for p in sorted(reports.rglob("*.txt")):
            zf.write(p, p.relative_to(reports).as_posix())
    records, rejects = read_mimic_cxr(jpg, raw, reports_root=zipped)
    by_id = {r.image_id: r for r in records}
    assert by_id[D1].report == (str(zipped / "mimic-cxr-reports.zip"), "files/p10/p10000001/s50000001.txt")
    assert by_id[D1].report_source_path == "mimic-cxr-zip/mimic-cxr-reports.zip::files/p10/p10000001/s50000001.txt"
    assert read_member(*by_id[D1].report) == (reports / "files/p10/p10000001/s50000001.txt").read_bytes()
    assert by_id[D4].report is None
    assert [(r.source_path, r.record_id) for r in rejects if r.stage == "report"] == [
        ("mimic-cxr-zip/mimic-cxr-reports.zip::files/p11/p11000002/s50000003.txt", "50000003")]


def test_mimic_scene_graph_locations_attached(mimic_tree) -> None:
    raw, jpg, _ = mimic_tree
    zpath = str(raw / "cig" / "silver_dataset" / "scene_graph.zip")
    graphs = {D1: (zpath, f"scene_graph/{D1}_SceneGraph.json"),
              "00000000-00000000-00000000-00000000-00000000": (zpath, "scene_graph/other_SceneGraph.json")}
    records, _ = read_mimic_cxr(jpg, raw, scene_graphs=graphs)
    by_id = {r.image_id: r for r in records}
    assert by_id[D1].scene_graph == (zpath, f"scene_graph/{D1}_SceneGraph.json")
    assert by_id[D1].scene_graph_source_path == f"cig/silver_dataset/scene_graph.zip::scene_graph/{D1}_SceneGraph.json"
    assert [r.image_id for r in records if r.scene_graph is not None] == [D1]


# --------------------------------------------------------------------------------------------------------------
# Chest ImaGenome scene graphs (spec 3.1, 3.3 - 3.6)
# --------------------------------------------------------------------------------------------------------------

CIG_W, CIG_H = 2536, 3040


def sg_object(dicom: str, name: str, x1, y1, x2, y2) -> dict:
    return {"object_id": f"{dicom}_{name}", "x1": 10, "y1": 10, "x2": 100, "y2": 100, "width": 90, "height": 90,
            "bbox_name": name, "synsets": ["C0000000"], "name": name.capitalize(),
            "original_x1": x1, "original_y1": y1, "original_x2": x2, "original_y2": y2,
            "original_width": None if x1 is None else x2 - x1, "original_height": None if y1 is None else y2 - y1}


def sg_attribute(region, attributes: list[list[str]], phrases: list[str]) -> dict:
    entry = {"bbox_name": region, "name": str(region).capitalize(), "synsets": [], "object_id": f"{D1}_{region}",
             "attributes": attributes, "attributes_ids": [["C0000001"] * len(a) for a in attributes],
             "phrases": phrases, "phrase_IDs": [f"50000001|{i}" for i in range(len(phrases))],
             "sections": ["finalreport"] * len(phrases)}
    if isinstance(region, str):
        entry[region] = True
    return entry


def scene_graph(viewpoint: str = "PA", skip: tuple[str, ...] = ()) -> dict:
    objects = [
        sg_object(D1, "right lung", 100, 200, 1200, 2400),
        sg_object(D1, "left lung", 1300, 200, 2500, 2400),
        sg_object(D1, "trachea", -20, -5, 1300, 600),               # negative -> clamped to 0
        sg_object(D1, "svc", 1000, 500, 1000, 900),                 # zero width -> dropped
        sg_object(D1, "spine", 1200, 100, 2700, 3100),              # beyond the image -> clamped to W, H
        sg_object(D1, "cardiac silhouette", 900, 1500, 1800, 2300),
        sg_object(D1, "cardiac silhouette", 850, 1600, 1700, 2400),  # duplicate -> union
        sg_object(D1, "abdomen", 2600, 3100, 2700, 3200),           # wholly outside -> empty after clamping
        sg_object(D1, "carina", None, None, None, None),            # no coordinates -> dropped
    ]
    attributes = [
        sg_attribute("right lung",
                     [["anatomicalfinding|yes|pleural effusion", "nlp|yes|abnormal"],
                      ["anatomicalfinding|no|pneumothorax", "nlp|yes|normal"],
                      ["anatomicalfinding|no|pleural effusion", "nlp|yes|normal"]],
                     ["There is a new small right\n pleural effusion.", "No\n pneumothorax.",
                      "There is a new small right pleural effusion."]),
        sg_attribute("left lung", [["nlp|yes|normal", "anatomicalfinding|no|lung opacity"]],
                     ["left lung is  clear."]),
        sg_attribute("cardiac silhouette",
                     [["anatomicalfinding|no|enlarged cardiac silhouette", "disease|yes|pneumonia",
                       "technicalassessment|yes|low lung volumes", "tubesandlines|yes|picc"],
                      ["anatomicalfinding|yes|enlarged cardiac silhouette", "nlp|yes|abnormal"]],
                     ["Heart size is normal.", "Cardiomegaly."]),
        sg_attribute("right lung", [["anatomicalfinding|no|pneumothorax"]], ["No pneumothorax."]),
        sg_attribute(False, [["anatomicalfinding|yes|rib fracture"]], ["Old rib fracture."]),
    ]
    return {"image_id": D1, "viewpoint": viewpoint, "patient_id": 10000001, "study_id": 50000001,
            "gender": "F", "age_decile": "60-70", "reason_for_exam": "___ year old woman with cough",
            "objects": [o for o in objects if o["bbox_name"] not in skip],
            "attributes": attributes, "relationships": []}


def graph_bytes(graph: dict) -> bytes:
    return json.dumps(graph).encode("utf-8")


def test_scene_graph_boxes_clamped_unioned_and_dropped() -> None:
    sg = parse_scene_graph(graph_bytes(scene_graph()), CIG_W, CIG_H)
    assert [box_tuple(b) for b in sg.boxes] == [
        ("right lung", 100, 200, 1200, 2400, None),
        ("left lung", 1300, 200, 2500, 2400, None),
        ("trachea", 0, 0, 1300, 600, None),
        ("spine", 1200, 100, 2536, 3040, None),
        ("cardiac silhouette", 850, 1500, 1800, 2400, None),
    ]
    assert [d.split(":")[0] for d in sg.dropped] == ["svc", "abdomen", "carina"]


def test_scene_graph_labels_yes_wins_and_nlp_abnormal() -> None:
    sg = parse_scene_graph(graph_bytes(scene_graph()), CIG_W, CIG_H)
    assert sorted(sg.labels) == sorted([
        ("right lung", "pleural effusion", 1),        # yes in one phrase, no in another -> yes
        ("right lung", "abnormal", 1),                # nlp|yes|abnormal beats nlp|yes|normal
        ("right lung", "pneumothorax", 0),
        ("left lung", "abnormal", 0),                 # only nlp|yes|normal
        ("left lung", "lung opacity", 0),
        ("cardiac silhouette", "enlarged cardiac silhouette", 1),   # no first, then yes -> yes
        ("cardiac silhouette", "pneumonia", 1),       # disease category
        ("cardiac silhouette", "abnormal", 1),
    ])


def test_scene_graph_phrases_cleaned_and_deduplicated() -> None:
    sg = parse_scene_graph(graph_bytes(scene_graph()), CIG_W, CIG_H)
    assert sg.phrases == {
        "right lung": ["There is a new small right pleural effusion.", "No pneumothorax."],
        "left lung": ["Left lung is clear."],
        "cardiac silhouette": ["Heart size is normal."],   # one-word "Cardiomegaly." is not a sentence
    }


@pytest.mark.parametrize("data", [
    b'{"image_id": "x", "objects": [',
    b"\xff\xfe not utf-8",
    graph_bytes(scene_graph(viewpoint="LL")),
    graph_bytes(scene_graph(viewpoint="LATERAL")),
    graph_bytes(scene_graph(skip=("right lung",))),    # 4 valid boxes left
    b'{"image_id": "x", "viewpoint": "PA"}',
], ids=["invalid-json", "not-utf8", "viewpoint-LL", "viewpoint-LATERAL", "four-boxes", "no-objects"])
def test_scene_graph_unusable_raises(data: bytes) -> None:
    with pytest.raises(SceneGraphError):
        parse_scene_graph(data, CIG_W, CIG_H)


def test_scene_graph_exactly_five_boxes_is_enough_for_ap() -> None:
    sg = parse_scene_graph(graph_bytes(scene_graph(viewpoint="AP")), CIG_W, CIG_H)
    assert len(sg.boxes) == 5


def test_scene_graph_index_zip_and_nested_extracted(tmp_path: Path) -> None:
    silver = tmp_path / "chest-imagenome-dataset-1.0.0" / "silver_dataset"
    silver.mkdir(parents=True)
    zipped = graph_bytes(scene_graph())
    extracted = graph_bytes(scene_graph(viewpoint="AP"))
    zpath = silver / "scene_graph.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("scene_graph/", "")
        zf.writestr(f"scene_graph/{D1}_SceneGraph.json", zipped)
        zf.writestr("scene_graph/README.txt", "not a graph")
    nested = silver / "scene_graph" / "scene_graph"
    nested.mkdir(parents=True)
    (nested / f"{D3}_SceneGraph.json").write_bytes(extracted)
    write_text(silver / "splits" / "train.csv", ",subject_id,study_id,dicom_id,path,ViewPosition\n")

    index = index_scene_graphs(tmp_path)
    assert index == {
        D1: (str(zpath), f"scene_graph/{D1}_SceneGraph.json"),
        D3: (str(nested), f"{D3}_SceneGraph.json"),
    }
    assert read_member(*index[D1]) == zipped
    assert read_member(*index[D3]) == extracted


# --------------------------------------------------------------------------------------------------------------
# MS-CXR (spec 5.1, 5.2)
# --------------------------------------------------------------------------------------------------------------

MS_CXR_V110 = f"""\
dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split
{D1},Pleural Effusion,Small left pleural effusion,files/p10/p10000001/s50000001/{D1}.jpg,1502,1610,610,380,2536,3040,test
{D1},Cardiomegaly,"Enlarged heart, unchanged",files/p10/p10000001/s50000001/{D1}.jpg,820,1300,1150,900,2536,3040,test
{D3},Consolidation,Bilateral consolidations,files/p10/p10000001/s50000002/{D3}.jpg,100,200,300,400,3032,2544,val
{D3},Consolidation,Bilateral consolidations,files/p10/p10000001/s50000002/{D3}.jpg,1500.5,210,290,390.25,3032,2544,val
{D7},Pneumothorax,Small right pneumothorax,files/p11/p11000002/s50000006/{D7}.jpg,10,20,30,40,2048,2048,train
"""

MS_CXR_V100 = f"""\
dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height
{D1},Pleural Effusion,Small left pleural effusion,files/p10/p10000001/s50000001/{D1}.dcm,1502,1610,610,380,2536,3040
{D3},Consolidation,Bilateral consolidations,files/p10/p10000001/s50000002/{D3}.dcm,100,200,300,400,3032,2544
{D5},Pneumothorax,"Small right apical pneumothorax, new",files/p11/p11000002/s50000003/{D5}.dcm,1700,150,300,250,2048,2500
"""


@pytest.fixture
def mimic_images(tmp_path: Path):
    jpg = tmp_path / "mimic-cxr-jpg"
    return image_lookup([
        _mimic_record(jpg, "10000001", "50000001", D1, "train", "PA", (2536, 3040), {}),
        _mimic_record(jpg, "10000001", "50000002", D3, "val", "AP", (3032, 2544), {}),
        _mimic_record(jpg, "11000002", "50000003", D5, "test", "AP", (2048, 2500), {}),
    ])


SIZES = {D1: (2536, 3040), D3: (3032, 2544), D5: (2048, 2500)}  # as in the mimic_images fixture


def _ms_cxr_record(tmp_path: Path, subject: str, study: str, dicom: str, split: str, view: str,
                   phrases: list[GroundedPhrase]) -> RawRecord:
    rel = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
    return RawRecord(source="ms_cxr", split=split, sample_id=f"{subject}/{study}/{dicom}", image_id=dicom,
                     image_path=str(tmp_path / "mimic-cxr-jpg" / rel), source_path=f"mimic-cxr-jpg/{rel}",
                     patient_id=subject, study_id=study, view_position=view, expected_size=SIZES[dicom],
                     labels={g.category: 1 for g in phrases},
                     grounded_phrases=phrases)


def test_ms_cxr_v110_official_split_phrases_and_boxes(tmp_path: Path, mimic_images) -> None:
    root = tmp_path / "ms-cxr"
    write_text(root / "MS_CXR_Local_Alignment_v1.1.0.csv", MS_CXR_V110)
    records, rejects = read_ms_cxr(root, tmp_path, mimic_images)
    assert records == [
        _ms_cxr_record(tmp_path, "10000001", "50000002", D3, "val", "AP", [
            GroundedPhrase("Bilateral consolidations", "Consolidation", [
                PixelBox("Consolidation", 100.0, 200.0, 400.0, 600.0),
                PixelBox("Consolidation", 1500.5, 210.0, 1790.5, 600.25)]),
        ]),
        _ms_cxr_record(tmp_path, "10000001", "50000001", D1, "test", "PA", [
            GroundedPhrase("Enlarged heart, unchanged", "Cardiomegaly", [
                PixelBox("Cardiomegaly", 820.0, 1300.0, 1970.0, 2200.0)]),
            GroundedPhrase("Small left pleural effusion", "Pleural Effusion", [
                PixelBox("Pleural Effusion", 1502.0, 1610.0, 2112.0, 1990.0)]),
        ]),
    ]
    assert reject_keys(rejects) == [("ms_cxr", "ms-cxr/MS_CXR_Local_Alignment_v1.1.0.csv#row6", "phrase", D7)]


def test_ms_cxr_v100_split_from_mimic(tmp_path: Path, mimic_images) -> None:
    root = tmp_path / "ms-cxr" / ("ms-cxr-making-the-most-of-text-semantics-to-improve-biomedical-vision-"
                                  "language-processing-0.1")
    write_text(root / "MS_CXR_Local_Alignment_v1.0.0.csv", MS_CXR_V100)
    records, rejects = read_ms_cxr(tmp_path / "ms-cxr", tmp_path, mimic_images)
    assert rejects == []
    # MIMIC train -> val, MIMIC validate -> test, MIMIC test -> test
    assert [(r.image_id, r.split) for r in records] == [(D3, "test"), (D1, "val"), (D5, "test")]
    assert records[2].grounded_phrases == [
        GroundedPhrase("Small right apical pneumothorax, new", "Pneumothorax", [
            PixelBox("Pneumothorax", 1700.0, 150.0, 2000.0, 400.0)])]
    assert records[2].sample_id == f"11000002/50000003/{D5}"
    assert records[2].image_path == str(tmp_path / "mimic-cxr-jpg" / f"files/p11/p11000002/s50000003/{D5}.jpg")


def test_ms_cxr_missing_csv_is_rejected(tmp_path: Path, mimic_images) -> None:
    (tmp_path / "ms-cxr").mkdir()
    records, rejects = read_ms_cxr(tmp_path / "ms-cxr", tmp_path, mimic_images)
    assert records == []
    assert reject_keys(rejects) == [("ms_cxr", "ms-cxr", "table", "")]


def test_ms_cxr_prefers_newest_release_whatever_the_folders(tmp_path: Path, mimic_images) -> None:
    """v1.1.0 next to the extracted v0.1 folder (spec 5.1): the v1.1.0 file with the official split is read."""
    root = tmp_path / "ms-cxr"
    write_text(root / "MS_CXR_Local_Alignment_v1.1.0.csv", MS_CXR_V110)
    write_text(root / ("ms-cxr-making-the-most-of-text-semantics-to-improve-biomedical-vision-"
                       "language-processing-0.1") / "MS_CXR_Local_Alignment_v1.0.0.csv", MS_CXR_V100)
    records, rejects = read_ms_cxr(root, tmp_path, mimic_images)
    assert [(r.image_id, r.split) for r in records] == [(D3, "val"), (D1, "test")]
    assert reject_keys(rejects) == [("ms_cxr", "ms-cxr/MS_CXR_Local_Alignment_v1.1.0.csv#row6", "phrase", D7)]
