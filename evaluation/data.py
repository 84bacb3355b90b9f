"""Evaluation samples from the ingest output: rows of one source and split, and their ground truth in array form."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from preprocessing.box_geometry import cxcywh_to_xyxy
from preprocessing.classes import FRONTAL_VIEWS
from preprocessing.records import split_dir

SPLITS = ("train", "val", "test")
FROM_MIMIC_SPLIT = {"train": "val", "val": "test", "test": "test"}  # the paper's MS-CXR split (chex-reference §4)

Row = dict[str, Any]


def load_rows(tables: Path, source: str, split: str, limit: int = 0, frontal_only: bool = False) -> list[Row]:
    """Rows of one ingested table, ordered by sample id (so a limit and every run take the same samples)."""
    frame = _read(tables, source, split)
    if frame is None:
        return []
    frame = frame.sort("sample_id")
    if frontal_only:
        frame = frame.filter(pl.col("view_position").is_in(list(FRONTAL_VIEWS)))
    if limit:
        frame = frame.head(limit)
    return frame.to_dicts()


def _read(tables: Path, source: str, split: str, columns: list[str] | None = None) -> pl.DataFrame | None:
    files = sorted(split_dir(tables, source, split).glob("*.parquet"))
    if not files:
        return None
    return pl.concat([pl.read_parquet(f, columns=columns) for f in files], how="vertical_relaxed")


def mimic_split_of(tables: Path) -> dict[str, str]:
    """sample_id -> MIMIC-CXR split of every ingested MIMIC-CXR image (MS-CXR images share MIMIC's sample ids)."""
    out: dict[str, str] = {}
    for split in SPLITS:
        frame = _read(tables, "mimic_cxr", split, ["sample_id"])
        if frame is not None:
            out.update(dict.fromkeys(frame["sample_id"].to_list(), split))
    return out


def load_mscxr_paper_split(tables: Path, split: str, limit: int = 0) -> tuple[list[Row], int]:
    """MS-CXR rows of ``split`` as the paper splits MS-CXR: by the image's MIMIC-CXR split (train -> val, validate and
    test -> test; nothing in train). An image missing from the MIMIC-CXR tables keeps its ingested split; their
    number is returned beside the rows, so the run can say so."""
    mimic = mimic_split_of(tables)
    rows, unmapped = [], 0
    for stored in SPLITS:
        frame = _read(tables, "ms_cxr", stored)
        for row in frame.to_dicts() if frame is not None else []:
            mapped = FROM_MIMIC_SPLIT.get(mimic.get(row["sample_id"], ""))
            unmapped += mapped is None
            if (mapped or stored) == split:
                rows.append(row)
    rows.sort(key=lambda r: r["sample_id"])
    return rows[:limit] if limit else rows, unmapped


def xyxy(box: dict[str, float]) -> list[float]:
    """A stored (cx, cy, w, h) box struct -> normalized xyxy."""
    return cxcywh_to_xyxy(np.array([box["cx"], box["cy"], box["w"], box["h"]], dtype=np.float64)).tolist()


def unique_boxes(boxes) -> np.ndarray:
    """Identical boxes once, first-seen order: MS-CXR lists a box again for every phrase that names it, and one
    finding must not count as two objects to detect."""
    out: list[list[float]] = []
    for b in np.asarray(boxes, dtype=np.float64).reshape(-1, 4).tolist():
        if not any(np.allclose(b, o, atol=1e-6) for o in out):
            out.append(b)
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def class_boxes(row: Row, classes: tuple[str, ...], aliases: dict[str, str] | None = None, unique: bool = True
                ) -> dict[int, np.ndarray]:
    """Ground-truth boxes of ``row["boxes"]`` per class index (classes outside the list are not evaluated);
    ``unique``: identical boxes of a class once (ours), else as given (the paper)."""
    index = {c: i for i, c in enumerate(classes)}
    out: dict[int, list[list[float]]] = {}
    for b in row.get("boxes") or []:
        name = (aliases or {}).get(b["name"], b["name"])
        if name in index:
            out.setdefault(index[name], []).append(xyxy(b))
    return {k: unique_boxes(v) if unique else np.asarray(v, dtype=np.float64).reshape(-1, 4) for k, v in out.items()}


def report_text(row: Row) -> str:
    return " ".join(row.get("report_sentences") or [])
