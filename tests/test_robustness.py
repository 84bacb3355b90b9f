"""One bad cell, file or decoder failure never takes the job down: each becomes a reject, the rest survives."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pipelines.ingest.process as process
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.plan import read_sources, source_roots
from preprocessing.chest_imagenome import parse_scene_graph
from preprocessing.mimic_cxr import read_mimic_cxr
from preprocessing.records import PixelBox, RawRecord
from preprocessing.vindr_cxr import read_vindr
from tests_support import only_sources, write_csv

HEADER = ("subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,"
          "Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices")
META = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,"
        "ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning")
A = "aaaaaaaa-aaaaaaaa-aaaaaaaa-aaaaaaaa-aaaaaaaa"
B = "bbbbbbbb-bbbbbbbb-bbbbbbbb-bbbbbbbb-bbbbbbbb"


def _mimic(root: Path, chexpert_rows: list[str], meta_rows: list[str]) -> Path:
    jpg = root / "mimic-cxr-jpg" / "2.0.0"
    write_csv(jpg / "mimic-cxr-2.0.0-metadata.csv", [META, *meta_rows])
    listed = {row.split(",")[0] for row in meta_rows}
    splits = [f"{A},50000001,10000001,train", f"{B},50000002,10000001,test"]
    write_csv(jpg / "mimic-cxr-2.0.0-split.csv", ["dicom_id,study_id,subject_id,split",
                                                   *(r for r in splits if r.split(",")[0] in listed)])
    write_csv(jpg / "mimic-cxr-2.0.0-chexpert.csv", [HEADER, *chexpert_rows])
    return jpg


def test_garbage_label_cell_rejects_that_row_only(tmp_path):
    jpg = _mimic(tmp_path, ["10000001,50000001,,yes,,,,,,,,,,,,", "10000001,50000002,,1.0,,,,,,,,,,,,"],
                 [f"{A},10000001,50000001,,PA,300,200,21500101,1.0,,,", f"{B},10000001,50000002,,PA,300,200,21500101,1.0,,,"])
    records, rejects = read_mimic_cxr(jpg, tmp_path)
    assert {r.image_id: r.labels for r in records} == {A: {}, B: {"Cardiomegaly": 1}}
    assert [(r.stage, r.source_path) for r in rejects] == [("table", "mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-chexpert.csv#row2")]


def test_zero_size_metadata_row_is_rejected(tmp_path):
    jpg = _mimic(tmp_path, [], [f"{A},10000001,50000001,,PA,0,200,21500101,1.0,,,",
                                f"{B},10000001,50000002,,PA,300,200,21500101,1.0,,,"])
    records, rejects = read_mimic_cxr(jpg, tmp_path)
    assert [r.image_id for r in records] == [B] and rejects[0].stage == "table" and rejects[0].record_id == A


def test_duplicate_rows_become_one_record_and_a_reject(tmp_path):
    _mimic(tmp_path, [], [f"{A},10000001,50000001,,PA,300,200,21500101,1.0,,,"] * 2)
    cfg = IngestConfig(sources=only_sources("mimic_cxr_jpg"))
    records, rejects = read_sources(tmp_path, source_roots(tmp_path, cfg), cfg)
    assert [r.image_id for r in records] == [A]
    assert [r.stage for r in rejects] == ["table"] and "duplicate" in rejects[0].reason


def test_an_unreadable_table_skips_only_its_source(tmp_path):
    _mimic(tmp_path, [], [f"{A},10000001,50000001,,PA,300,200,21500101,1.0,,,"])
    vindr = tmp_path / "vindr-cxr" / "1.0.0" / "annotations"
    for name in ("annotations_train.csv", "image_labels_train.csv", "annotations_test.csv", "image_labels_test.csv"):
        write_csv(vindr / name, [])   # empty files: the csv parser raises
    cfg = IngestConfig(sources=only_sources("mimic_cxr_jpg", "vindr_cxr"))
    records, rejects = read_sources(tmp_path, source_roots(tmp_path, cfg), cfg)
    assert [r.source for r in records] == ["mimic_cxr"]
    assert [(r.source, r.stage) for r in rejects] == [("vindr_cxr", "table")] and "cannot read vindr_cxr" in rejects[0].reason


def test_vindr_label_value_other_than_0_1_is_rejected(tmp_path):
    from preprocessing.classes import VINDR_GLOBAL_TEST, VINDR_GLOBAL_TRAIN, VINDR_LOCAL_22

    ann = tmp_path / "annotations"
    img = "0" * 32
    zeros = ["0"] * 28
    write_csv(ann / "annotations_train.csv", ["image_id,rad_id,class_name,x_min,y_min,x_max,y_max", f"{img},R1,No finding,,,,"])
    write_csv(ann / "image_labels_train.csv", [",".join(("image_id", "rad_id", *VINDR_LOCAL_22, *VINDR_GLOBAL_TRAIN)),
                                               ",".join((img, "R1", *zeros)), ",".join((img, "R2", "maybe", *zeros[1:]))])
    write_csv(ann / "annotations_test.csv", ["image_id,class_name,x_min,y_min,x_max,y_max"])
    write_csv(ann / "image_labels_test.csv", [",".join(("image_id", *VINDR_LOCAL_22, *VINDR_GLOBAL_TEST))])
    records, rejects = read_vindr(tmp_path, tmp_path, seed=0)
    assert [r.image_id for r in records] == [img] and records[0].labels["Aortic enlargement"] == 0
    assert [(r.stage, r.source_path) for r in rejects] == [("table", "annotations/image_labels_train.csv#row3")]


@pytest.fixture
def jpeg(tmp_path) -> Path:
    path = tmp_path / "x.jpg"
    Image.fromarray(np.full((100, 100), 128, np.uint8)).save(path)
    return path


def test_vindr_reader_box_outside_image_is_rejected_before_fusion(jpeg):
    boxes = [PixelBox("Cardiomegaly", 200, 200, 300, 300, "R1"), PixelBox("Cardiomegaly", 10, 10, 50, 50, "R2"),
             PixelBox("Cardiomegaly", 12, 12, 52, 52, "R3")]
    rec = RawRecord(source="vindr_cxr", split="train", sample_id="v", image_id="v", image_path=str(jpeg),
                    source_path="x.jpg", boxes=boxes, fuse_boxes=True)
    row, rejects = process.process_record(rec, 32, True, None)
    assert len(row["boxes"]) == 1 and abs(row["boxes"][0]["cx"] - 0.31) < 1e-4   # mean of the two inside boxes
    assert [r.stage for r in rejects] == ["box"] and "(200.0, 200.0, 300.0, 300.0)" in rejects[0].reason


def test_decoder_panic_becomes_an_image_reject(tmp_path, monkeypatch):
    """pylibjpeg-rle raises pyo3's PanicException, a BaseException, on some corrupt files: bad data, a reject."""
    from preprocessing import image_io
    from tests_support import write_dicom

    class Panic(BaseException):
        pass

    def boom(*args, **kwargs):
        raise Panic("index out of bounds")

    write_dicom(tmp_path / "x.dcm", np.zeros((40, 40), np.uint16), "MONOCHROME2", 12, Modality="DX")
    monkeypatch.setattr(image_io, "apply_modality_lut", boom)
    rec = RawRecord(source="vindr_cxr", split="train", sample_id="v", image_id="v", image_path=str(tmp_path / "x.dcm"),
                    source_path="x.dcm")
    row, rejects = process.process_or_fail(rec, 32, True, None)
    assert row is None and [r.stage for r in rejects] == ["image"] and "Panic: index out of bounds" in rejects[0].reason


def test_a_bug_in_per_record_code_fails_and_names_the_record(jpeg, monkeypatch):
    def bug(*args, **kwargs):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(process, "_stored_boxes", bug)
    rec = RawRecord(source="nih_cxr", split="train", sample_id="v", image_id="v", image_path=str(jpeg), source_path="x.jpg")
    with pytest.raises(process.RecordFailed, match=r"nih_cxr record x.jpg: TypeError: unsupported operand") as info:
        process.process_or_fail(rec, 32, True, None)
    assert isinstance(info.value.__cause__, TypeError)


def test_malformed_scene_graph_entries_are_dropped_not_fatal():
    objects = [{"bbox_name": f"r{i}", "original_x1": 0, "original_y1": 0, "original_x2": 10, "original_y2": 10}
               for i in range(5)]
    graph = {"viewpoint": "PA", "objects": [*objects, "garbage"],
             "attributes": ["not a dict", {"bbox_name": "r0", "attributes": ["anatomicalfinding|yes|x", ["disease|yes|pneumonia"]],
                                           "phrases": ["Right lung pneumonia."]}]}
    sg = parse_scene_graph(json.dumps(graph).encode(), 100, 100)
    assert len(sg.boxes) == 5 and sg.dropped == ["malformed object entry 'garbage'"]
    assert sg.labels == [("r0", "pneumonia", 1)] and sg.phrases == {"r0": ["Right lung pneumonia."]}
