"""NIH ChestX-ray8: Data_Entry labels + BBox_List boxes; box images split by patient into val/test.

Both CSVs have headers with commas inside brackets (``OriginalImage[Width,Height]``, ``Bbox [x,y,w,h]``); columns
are found by those names (:func:`preprocessing.tables.span_columns`), so a copy re-saved with extra or reordered
columns reads the same, and one without a needed column is a TableError rather than a silent mis-read.
All images of a val/test patient stay in that split (no patient leaks into train, unlike the reference).
The Kaggle copy's ``train_val_list.txt`` / ``test_list.txt`` (the NIH classification benchmark's split) are not
read: the evaluation set is the box images, split by patient with a seeded shuffle as in the paper, so a copy with
the lists and one without give the same records.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from preprocessing.box_geometry import xywh_to_xyxy
from preprocessing.classes import NIH_14, NIH_LABEL_ALIASES, NIH_NO_FINDING
from preprocessing.records import PixelBox, RawRecord, Reject, relative, relative_below
from preprocessing.tables import find_table, read_span_table

SOURCE = "nih_cxr"
ENTRY, ENTRY_V2020, BBOX = "Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv", "BBox_List_2017.csv"
INDEX, PATIENT, VIEW = "Image Index", "Patient ID", "View Position"
ENTRY_COLUMNS = (INDEX, "Finding Labels", PATIENT, VIEW)
BOX_XYWH = "Bbox [x,y,w,h]"
BBOX_COLUMNS = (INDEX, "Finding Label", BOX_XYWH)


def index_images(root: Path) -> dict[str, Path]:
    """Image Index -> file, for both the Kaggle layout (images_0XX/images/) and a flat images/ folder."""
    return {p.name: p for p in sorted(root.glob("images*/**/*.png"))}


def read_boxes(path: Path, raw_root: Path, rejects: list[Reject]) -> dict[str, list[PixelBox]]:
    """Image Index -> its boxes (xyxy pixels, ``Infiltrate`` renamed); unreadable rows become rejects."""
    table = read_span_table(path, BBOX_COLUMNS)
    boxes: dict[str, list[PixelBox]] = defaultdict(list)
    for i, row in enumerate(table.rows):
        index = table.cell(row, INDEX)
        if index:   # listed = a box image, so val/test, even when its numbers are unreadable (else the split moves)
            boxes.setdefault(index, [])
        try:
            x, y, w, h = (float(v) for v in table.cells(row, BOX_XYWH))
            if not all(math.isfinite(v) for v in (x, y, w, h)):
                raise ValueError("non-finite value")
        except ValueError:
            rejects.append(Reject(SOURCE, f"{relative(path, raw_root)}#row{i + 2}", "box", f"unreadable box row {row}",
                                  index))
            continue
        name = table.cell(row, "Finding Label")
        boxes[index].append(PixelBox(NIH_LABEL_ALIASES.get(name, name), *xywh_to_xyxy(np.array([x, y, w, h])).tolist()))
    return boxes


def read_entries(path: Path, raw_root: Path, rejects: list[Reject]) -> list[tuple[str, str, str, str]]:
    """(Image Index, Finding Labels, Patient ID, View Position) per Data_Entry row; short rows become rejects."""
    table = read_span_table(path, ENTRY_COLUMNS)
    entries = []
    for i, row in enumerate(table.rows):
        if not table.has(row, ENTRY_COLUMNS) or not table.cell(row, INDEX):
            rejects.append(Reject(SOURCE, f"{relative(path, raw_root)}#row{i + 2}", "table", f"short row {row}"))
            continue
        index, findings, patient, view = (table.cell(row, c) for c in ENTRY_COLUMNS)
        entries.append((index, findings, patient, view))
    return entries


def read_nih(root: Path, raw_root: Path, seed: int) -> tuple[list[RawRecord], list[Reject]]:
    entry_path = find_table(root, ENTRY, ENTRY_V2020)
    if entry_path is None:
        return [], [Reject(SOURCE, relative(root, raw_root), "table", f"missing {ENTRY} (or {ENTRY_V2020}, .csv.gz)")]
    rejects: list[Reject] = []
    bbox_path = find_table(root, BBOX)
    boxes = read_boxes(bbox_path, raw_root, rejects) if bbox_path is not None else {}
    entries = read_entries(entry_path, raw_root, rejects)
    files = index_images(root)
    eval_patients = sorted({pid for name, _, pid, _ in entries if name in boxes})
    order = np.random.default_rng(seed).permutation(len(eval_patients))
    half = len(eval_patients) // 2
    split_of_patient = {eval_patients[j]: ("val" if k < half else "test") for k, j in enumerate(order)}
    records, rel = [], relative_below(root, raw_root)
    for name, findings, pid, view in entries:
        present = {NIH_LABEL_ALIASES.get(t, t) for t in findings.split("|")}
        path = files.get(name, root / "images" / name)
        records.append(RawRecord(
            source=SOURCE, split=split_of_patient.get(pid, "train"), sample_id=name, image_id=name,
            image_path=str(path), source_path=rel(path), patient_id=pid, view_position=view,
            boxes=boxes.get(name, []), labels={n: int(n in present) for n in (*NIH_14, NIH_NO_FINDING)},
        ))
    known = {e[0] for e in entries}
    rejects += [Reject(SOURCE, relative(bbox_path, raw_root), "box", f"box for {n}, which is not in {entry_path.name}", n)
                for n in sorted(set(boxes) - known)]
    return records, rejects
