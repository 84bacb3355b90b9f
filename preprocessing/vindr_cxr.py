"""VinDr-CXR: per-reader boxes and labels -> one record per image; readers' boxes are fused per class (WBF).

Train labels are the majority vote of the three readers; the official test set is split 50/50 into val/test
with a seeded shuffle so the split is reproducible.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from ensemble_boxes import weighted_boxes_fusion

from preprocessing.classes import VINDR_LABELS_28, VINDR_LOCAL_22, VINDR_NO_FINDING
from preprocessing.records import PixelBox, RawRecord, Reject, relative
from preprocessing.tables import find_table, parse_float, read_csv_strings

SOURCE = "vindr_cxr"
WBF_IOU = 0.1
WBF_SKIP = 1e-4
LABEL_RENAMES = {"Other diseases": "Other disease"}
GLOBAL_ONLY = set(VINDR_LABELS_28) - set(VINDR_LOCAL_22)


def fuse_boxes(boxes: list[PixelBox], width: int, height: int) -> list[PixelBox]:
    """Weighted box fusion per class across readers (IoU 0.1, as the reference); single boxes pass through."""
    by_class: dict[str, list[PixelBox]] = defaultdict(list)
    for b in boxes:
        by_class[b.name].append(b)
    fused: list[PixelBox] = []
    scale = np.array([width, height, width, height], dtype=np.float64)
    for name, group in by_class.items():
        if len(group) == 1:
            fused.append(PixelBox(name, group[0].x1, group[0].y1, group[0].x2, group[0].y2))
            continue
        per_reader: dict[str | None, list[list[float]]] = defaultdict(list)
        for b in group:
            per_reader[b.reader].append([b.x1, b.y1, b.x2, b.y2])
        lists = [np.clip(np.asarray(v) / scale, 0.0, 1.0).tolist() for v in per_reader.values()]
        out, _, _ = weighted_boxes_fusion(lists, [[1.0] * len(v) for v in lists], [[0] * len(v) for v in lists],
                                          iou_thr=WBF_IOU, skip_box_thr=WBF_SKIP)
        fused += [PixelBox(name, *(np.asarray(b) * scale).tolist()) for b in out]
    return fused


def _labels(path: Path, raw_root: Path, rejects: list[Reject]) -> dict[str, dict[str, int]]:
    """image_id -> label -> 0/1; with a rad_id column, the majority vote of the readers (no ties with three)."""
    df = read_csv_strings(path, ("image_id",)).rename(lambda c: LABEL_RENAMES.get(c, c))
    votes: dict[str, list[dict[str, int]]] = defaultdict(list)
    for i, row in enumerate(df.iter_rows(named=True)):
        try:
            votes[row["image_id"]].append({n: {0.0: 0, 1.0: 1}[float(row[n] or 0)] for n in VINDR_LABELS_28 if n in row})
        except (KeyError, ValueError) as exc:
            rejects.append(Reject(SOURCE, f"{relative(path, raw_root)}#row{i + 2}", "table",
                                  f"label row with a value other than 0/1 ({exc}); vote taken without it",
                                  str(row.get("image_id"))))
    if "rad_id" not in df.columns:
        return {img: vs[0] for img, vs in votes.items()}
    return {img: {n: int(sum(v[n] for v in vs) * 2 > len(vs)) for n in vs[0]} for img, vs in votes.items()}


def _boxes(path: Path, raw_root: Path, rejects: list[Reject]) -> dict[str, list[PixelBox]]:
    out: dict[str, list[PixelBox]] = defaultdict(list)
    columns = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")
    for i, row in enumerate(read_csv_strings(path, columns).iter_rows(named=True)):
        out.setdefault(row["image_id"], [])
        name = row["class_name"]
        if name == VINDR_NO_FINDING or (name in GLOBAL_ONLY and row["x_min"] is None):
            continue
        try:
            coords = [parse_float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
            if any(c is None for c in coords):
                raise ValueError("empty coordinate")
        except ValueError as exc:
            rejects.append(Reject(SOURCE, f"{relative(path, raw_root)}#row{i + 2}", "box",
                                  f"unreadable {name} box ({exc})", row["image_id"]))
            continue
        out[row["image_id"]].append(PixelBox(name, *coords, reader=row.get("rad_id")))
    return out


def read_vindr(root: Path, raw_root: Path, seed: int) -> tuple[list[RawRecord], list[Reject]]:
    rejects: list[Reject] = []
    ann = root / "annotations"
    records: list[RawRecord] = []
    for official in ("train", "test"):
        names = f"annotations_{official}.csv", f"image_labels_{official}.csv"
        box_file, label_file = find_table(ann, names[0]), find_table(ann, names[1])
        if box_file is None or label_file is None:
            rejects.append(Reject(SOURCE, relative(ann, raw_root), "table", f"missing {names[0]} or {names[1]} (or .csv.gz)"))
            continue
        boxes = _boxes(box_file, raw_root, rejects)
        labels = _labels(label_file, raw_root, rejects)
        ids = sorted(set(boxes) | set(labels))
        if official == "test":
            order = np.random.default_rng(seed).permutation(len(ids))
            half = len(ids) // 2
            split_of = {ids[j]: ("val" if k < half else "test") for k, j in enumerate(order)}
        for image_id in ids:
            image = root / official / f"{image_id}.dicom"
            if image_id not in labels:
                rejects.append(Reject(SOURCE, relative(image, raw_root), "table",
                                      f"image {image_id} has boxes but no image-label row; kept with boxes only", image_id))
            records.append(RawRecord(
                source=SOURCE, split="train" if official == "train" else split_of[image_id], sample_id=image_id,
                image_id=image_id, image_path=str(image), source_path=relative(image, raw_root), view_position="PA",
                boxes=boxes.get(image_id, []), fuse_boxes=official == "train", labels=labels.get(image_id, {}),
            ))
    return records, rejects
