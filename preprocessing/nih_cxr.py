"""NIH ChestX-ray8: Data_Entry labels + BBox_List boxes; box images split by patient into val/test.

Both CSVs have headers with commas inside brackets, so rows are read by position.
All images of a val/test patient stay in that split (no patient leaks into train, unlike the reference).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from preprocessing.box_geometry import xywh_to_xyxy
from preprocessing.classes import NIH_14, NIH_LABEL_ALIASES, NIH_NO_FINDING
from preprocessing.records import PixelBox, RawRecord, Reject, relative
from preprocessing.tables import find_table, read_csv_rows

SOURCE = "nih_cxr"
ENTRY, ENTRY_V2020, BBOX = "Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv", "BBox_List_2017.csv"


def index_images(root: Path) -> dict[str, Path]:
    """Image Index -> file, for both the Kaggle layout (images_0XX/images/) and a flat images/ folder."""
    return {p.name: p for p in sorted(root.glob("images*/**/*.png"))}


def read_nih(root: Path, raw_root: Path, seed: int) -> tuple[list[RawRecord], list[Reject]]:
    entry_path = find_table(root, ENTRY, ENTRY_V2020)
    if entry_path is None:
        return [], [Reject(SOURCE, relative(root, raw_root), "table", f"missing {ENTRY} (or {ENTRY_V2020}, .csv.gz)")]
    rejects: list[Reject] = []
    boxes: dict[str, list[PixelBox]] = defaultdict(list)
    bbox_path = find_table(root, BBOX)
    if bbox_path is not None:
        for i, row in enumerate(read_csv_rows(bbox_path)):
            try:
                x, y, w, h = (float(v) for v in row[2:6])
            except (ValueError, IndexError):
                rejects.append(Reject(SOURCE, f"{relative(bbox_path, raw_root)}#row{i + 2}", "box",
                                      f"unreadable box row {row}", row[0] if row else ""))
                continue
            name = NIH_LABEL_ALIASES.get(row[1], row[1])
            boxes[row[0]].append(PixelBox(name, *xywh_to_xyxy(np.array([x, y, w, h])).tolist()))
    files = index_images(root)
    entries = []
    for i, row in enumerate(read_csv_rows(entry_path)):
        if len(row) < 4 or not row[0]:
            rejects.append(Reject(SOURCE, f"{relative(entry_path, raw_root)}#row{i + 2}", "table", f"short row {row}"))
            continue
        entries.append((row[0], row[1], row[3], row[6] if len(row) > 6 else ""))
    eval_patients = sorted({pid for name, _, pid, _ in entries if name in boxes})
    order = np.random.default_rng(seed).permutation(len(eval_patients))
    half = len(eval_patients) // 2
    split_of_patient = {eval_patients[j]: ("val" if k < half else "test") for k, j in enumerate(order)}
    records = []
    for name, findings, pid, view in entries:
        present = {NIH_LABEL_ALIASES.get(t, t) for t in findings.split("|")}
        path = files.get(name, root / "images" / name)
        records.append(RawRecord(
            source=SOURCE, split=split_of_patient.get(pid, "train"), sample_id=name, image_id=name,
            image_path=str(path), source_path=relative(path, raw_root), patient_id=pid, view_position=view,
            boxes=boxes.get(name, []), labels={n: int(n in present) for n in (*NIH_14, NIH_NO_FINDING)},
        ))
    known = {e[0] for e in entries}
    rejects += [Reject(SOURCE, relative(bbox_path, raw_root), "box", f"box for {n}, which is not in {entry_path.name}", n)
                for n in sorted(set(boxes) - known)]
    return records, rejects
