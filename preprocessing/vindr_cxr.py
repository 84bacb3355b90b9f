"""VinDr-CXR: per-reader boxes and labels -> one record per image; readers' boxes are fused per class (WBF).

Two layouts are read. PhysioNet's (``annotations/``, checked first): train labels are the majority vote of the
three readers' image-label rows; the official test set is split 50/50 into val/test with a seeded shuffle so the
split is reproducible. Kaggle's "VinBigData" copy (``train.csv`` beside ``train/``, see :func:`read_kaggle`) has one
row per (image, reader, box) and no label table, so its labels are voted from those rows.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from ensemble_boxes import weighted_boxes_fusion

from preprocessing.classes import VINDR_LABELS_28, VINDR_LOCAL_22, VINDR_NO_FINDING
from preprocessing.records import PixelBox, RawRecord, Reject, relative, relative_below
from preprocessing.tables import find_table, parse_float, read_csv_strings

SOURCE = "vindr_cxr"
WBF_IOU = 0.1
WBF_SKIP = 1e-4
LABEL_RENAMES = {"Other diseases": "Other disease"}
GLOBAL_ONLY = set(VINDR_LABELS_28) - set(VINDR_LOCAL_22)
COORDS = ("x_min", "y_min", "x_max", "y_max")
BOX_COLUMNS = ("image_id", "class_name", *COORDS)
# Kaggle "VinBigData" train.csv: its 14 classes in class_id order, then "No finding" (class_id 14)
KAGGLE_TABLE = "train.csv"
KAGGLE_CLASSES: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD", "Infiltration",
    "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", VINDR_NO_FINDING,
)
KAGGLE_COLUMNS = ("image_id", "class_name", "rad_id", *COORDS)


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
    where = relative(path, raw_root)
    for i, row in enumerate(df.iter_rows(named=True)):
        try:
            votes[row["image_id"]].append({n: {0.0: 0, 1.0: 1}[float(row[n] or 0)] for n in VINDR_LABELS_28 if n in row})
        except (KeyError, ValueError) as exc:
            rejects.append(Reject(SOURCE, f"{where}#row{i + 2}", "table",
                                  f"label row with a value other than 0/1 ({exc}); vote taken without it",
                                  str(row.get("image_id"))))
    if "rad_id" not in df.columns:
        return {img: vs[0] for img, vs in votes.items()}
    return {img: {n: int(sum(v[n] for v in vs) * 2 > len(vs)) for n in vs[0]} for img, vs in votes.items()}


def _box(row: dict[str, str | None], where: str, rejects: list[Reject]) -> PixelBox | None:
    """The box of one annotation row; None for a row without one ("No finding", a global label without
    coordinates) and for unreadable coordinates, which become a reject naming the row."""
    name = row["class_name"]
    if name == VINDR_NO_FINDING or (name in GLOBAL_ONLY and row["x_min"] is None):
        return None
    try:
        coords = [parse_float(row[k]) for k in COORDS]
        if any(c is None for c in coords):
            raise ValueError("empty coordinate")
        if not all(math.isfinite(c) for c in coords):
            raise ValueError(f"non-finite coordinate {coords}")
    except ValueError as exc:
        rejects.append(Reject(SOURCE, where, "box", f"unreadable {name} box ({exc})", str(row["image_id"])))
        return None
    return PixelBox(name, *coords, reader=row.get("rad_id"))


def _boxes(path: Path, raw_root: Path, rejects: list[Reject]) -> dict[str, list[PixelBox]]:
    out: dict[str, list[PixelBox]] = defaultdict(list)
    where = relative(path, raw_root)
    for i, row in enumerate(read_csv_strings(path, BOX_COLUMNS).iter_rows(named=True)):
        out.setdefault(row["image_id"], [])
        box = _box(row, f"{where}#row{i + 2}", rejects)
        if box is not None:
            out[row["image_id"]].append(box)
    return out


def read_vindr(root: Path, raw_root: Path, seed: int) -> tuple[list[RawRecord], list[Reject]]:
    """Records of either layout: PhysioNet's ``annotations/`` when present, else Kaggle's ``train.csv``."""
    kaggle = None if (root / "annotations").is_dir() else find_table(root, KAGGLE_TABLE)
    if kaggle is not None:
        return read_kaggle(root, kaggle, raw_root)
    return _read_physionet(root, raw_root, seed)


def _record(root: Path, rel: Callable[[Path], str], folder: str, image_id: str, split: str, boxes: list[PixelBox],
            labels: dict[str, int]) -> RawRecord:
    image = root / folder / f"{image_id}.dicom"
    return RawRecord(source=SOURCE, split=split, sample_id=image_id, image_id=image_id, image_path=str(image),
                     source_path=rel(image), view_position="PA", boxes=boxes,
                     fuse_boxes=folder == "train", labels=labels)


def _read_physionet(root: Path, raw_root: Path, seed: int) -> tuple[list[RawRecord], list[Reject]]:
    rejects: list[Reject] = []
    ann = root / "annotations"
    records: list[RawRecord] = []
    rel = relative_below(root, raw_root)
    for official in ("train", "test"):
        names = f"annotations_{official}.csv", f"image_labels_{official}.csv"
        box_file, label_file = find_table(ann, names[0]), find_table(ann, names[1])
        if box_file is None or label_file is None:
            rejects.append(Reject(SOURCE, relative(ann, raw_root), "table",
                                  f"missing {names[0]} or {names[1]} (or .csv.gz); nor is there a Kaggle "
                                  f"{KAGGLE_TABLE} in {relative(root, raw_root)}"))
            continue
        boxes = _boxes(box_file, raw_root, rejects)
        labels = _labels(label_file, raw_root, rejects)
        ids = sorted(set(boxes) | set(labels))
        split_of = {image_id: "train" for image_id in ids}
        if official == "test":
            order = np.random.default_rng(seed).permutation(len(ids))
            half = len(ids) // 2
            split_of = {ids[j]: ("val" if k < half else "test") for k, j in enumerate(order)}
        for image_id in ids:
            if image_id not in labels:
                rejects.append(Reject(SOURCE, rel(root / official / f"{image_id}.dicom"), "table",
                                      f"image {image_id} has boxes but no image-label row; kept with boxes only", image_id))
            records.append(_record(root, rel, official, image_id, split_of[image_id], boxes.get(image_id, []),
                                   labels.get(image_id, {})))
    return records, rejects


def majority_vote(marks: dict[str, set[str]], names: tuple[str, ...]) -> dict[str, int]:
    """Per label, 1 when more than half of the image's readers marked it (each reader counts once), else 0."""
    return {n: int(2 * sum(n in m for m in marks.values()) > len(marks)) for n in names}


def read_kaggle(root: Path, table: Path, raw_root: Path) -> tuple[list[RawRecord], list[Reject]]:
    """Kaggle "VinBigData" layout: ``train.csv`` (``image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max``,
    one row per image, reader and box; "No finding" rows have empty coordinates) and ``train/<image_id>.dicom``.

    Labels are the majority vote of each image's readers over the 14 Kaggle classes and "No finding" (a reader
    marks a class by any row naming it, even one whose box is unreadable); the 8 local and 5 global VinDr labels
    Kaggle dropped are left out, i.e. unknown rather than absent. Boxes are fused per class as for PhysioNet's
    train set. Every image goes to split "train": Kaggle kept the official test labels back for its competition,
    so its ``test/`` DICOMs have no annotation and are not records, and there is no labelled set to split into
    val/test (use the PhysioNet copy for VinDr evaluation). Rows without an image, a reader or a Kaggle class are
    rejects naming the row and count for nothing.
    """
    where = relative(table, raw_root)
    rejects: list[Reject] = []
    marks: dict[str, dict[str, set[str]]] = defaultdict(dict)
    boxes: dict[str, list[PixelBox]] = defaultdict(list)
    for i, row in enumerate(read_csv_strings(table, KAGGLE_COLUMNS).iter_rows(named=True)):
        image_id, rad_id, name = row["image_id"], row["rad_id"], row["class_name"]
        problem = ("no image_id" if not image_id else "no rad_id" if not rad_id else
                   None if name in KAGGLE_CLASSES else f"class_name {name!r} is not a Kaggle class nor 'No finding'")
        if problem is not None:
            rejects.append(Reject(SOURCE, f"{where}#row{i + 2}", "table", f"{problem}; row left out", image_id or ""))
            continue
        marks[image_id].setdefault(rad_id, set()).add(name)
        box = _box(row, f"{where}#row{i + 2}", rejects)
        if box is not None:
            boxes[image_id].append(box)
    rel = relative_below(root, raw_root)
    records = [_record(root, rel, "train", image_id, "train", boxes[image_id],
                       majority_vote(marks[image_id], KAGGLE_CLASSES)) for image_id in sorted(marks)]
    return records, rejects
