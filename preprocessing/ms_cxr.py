"""MS-CXR local alignment CSV (v1.0.0 or v1.1.0) -> one record per MIMIC-CXR-JPG image with grounded phrases.

Splits: v1.1.0's official `split` column when present; otherwise the reference's mapping from the MIMIC split
(MIMIC validate/test -> test, MIMIC train -> val).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl

from preprocessing.box_geometry import xywh_to_xyxy
from preprocessing.records import GroundedPhrase, PixelBox, RawRecord, Reject, relative
from preprocessing.sentences import clean_phrase
from preprocessing.tables import glob_tables, read_csv_strings

SOURCE = "ms_cxr"
SPLIT_MAP = {"train": "train", "val": "val", "validate": "val", "test": "test"}
FROM_MIMIC_SPLIT = {"train": "val", "val": "test", "test": "test"}


def find_alignment_csv(root: Path) -> Path | None:
    """The newest MS_CXR_Local_Alignment_v*.csv(.gz) below root (the zip's top folder name varies by release)."""
    found = sorted(glob_tables(root, "MS_CXR_Local_Alignment_v*.csv"),
                   key=lambda p: (p.name.removesuffix(".gz"), p.as_posix()))  # by version, not folder
    return found[-1] if found else None


def _frame_scale(row: dict, image: dict) -> tuple[float, float] | None:
    """Scale from the CSV's image_width/height frame to the MIMIC metadata frame; None if the aspect differs."""
    try:
        iw, ih = float(row["image_width"]), float(row["image_height"])
    except (KeyError, TypeError, ValueError):
        return (1.0, 1.0)   # no usable frame in the CSV: the boxes are taken to be in the metadata frame
    if iw <= 0 or ih <= 0:
        return None
    if not image["width"] or (iw, ih) == (image["width"], image["height"]):
        return (1.0, 1.0)
    if abs(iw / ih - image["width"] / image["height"]) > 0.01 * image["width"] / image["height"]:
        return None
    return image["width"] / iw, image["height"] / ih


def read_ms_cxr(root: Path, raw_root: Path, mimic_images: pl.DataFrame) -> tuple[list[RawRecord], list[Reject]]:
    """Rows are resolved to MIMIC-CXR-JPG images by dicom_id (the CSV's own path may point at a .dcm)."""
    csv_path = find_alignment_csv(root)
    if csv_path is None:
        return [], [Reject(SOURCE, relative(root, raw_root), "table", "no MS_CXR_Local_Alignment_v*.csv found")]
    rel_csv = relative(csv_path, raw_root)
    table = read_csv_strings(csv_path, ("dicom_id", "x", "y", "w", "h", "label_text", "category_name"))
    named = mimic_images.filter(pl.col("dicom_id").is_in(table["dicom_id"].drop_nulls().unique().implode()))
    lookup = {row["dicom_id"]: row for row in named.iter_rows(named=True)}   # the MS-CXR images only, not all 377k
    grouped: dict[str, dict[str, GroundedPhrase]] = defaultdict(dict)
    official_split: dict[str, str] = {}
    rejects: list[Reject] = []
    for i, row in enumerate(table.iter_rows(named=True)):
        where = f"{rel_csv}#row{i + 2}"
        dicom_id = row["dicom_id"]
        if dicom_id not in lookup:
            rejects.append(Reject(SOURCE, where, "phrase", f"dicom_id {dicom_id} is not in MIMIC-CXR-JPG", dicom_id))
            continue
        try:
            x, y, w, h = (float(row[k]) for k in ("x", "y", "w", "h"))
        except (TypeError, ValueError):
            rejects.append(Reject(SOURCE, where, "box", "non-numeric x/y/w/h", dicom_id))
            continue
        frame = _frame_scale(row, lookup[dicom_id])
        if frame is None:
            rejects.append(Reject(SOURCE, where, "box", f"box frame {row.get('image_width')}x{row.get('image_height')} does "
                                  f"not match the image's {lookup[dicom_id]['width']}x{lookup[dicom_id]['height']}", dicom_id))
            continue
        x, w = x * frame[0], w * frame[0]
        y, h = y * frame[1], h * frame[1]
        phrase = clean_phrase(row["label_text"] or "")
        if not phrase:
            rejects.append(Reject(SOURCE, where, "phrase", "empty label_text", dicom_id))
            continue
        category = row["category_name"]
        entry = grouped[dicom_id].setdefault(phrase, GroundedPhrase(phrase, category, []))
        entry.boxes.append(PixelBox(category, *xywh_to_xyxy(np.array([x, y, w, h])).tolist()))
        if row.get("split"):
            official_split[dicom_id] = SPLIT_MAP.get(row["split"], row["split"])
    records = []
    for dicom_id in sorted(grouped):
        img = lookup[dicom_id]
        phrases = [grouped[dicom_id][p] for p in sorted(grouped[dicom_id])]
        records.append(RawRecord(
            source=SOURCE, split=official_split.get(dicom_id) or FROM_MIMIC_SPLIT[img["split"]],
            sample_id=f"{img['patient_id']}/{img['study_id']}/{dicom_id}", image_id=dicom_id,
            image_path=img["image_path"], source_path=img["source_path"], patient_id=img["patient_id"],
            study_id=img["study_id"], view_position=img["view_position"],
            expected_size=(img["width"], img["height"]) if img["width"] else None,
            labels={g.category: 1 for g in phrases},
            grounded_phrases=phrases,
        ))
    return records, rejects
