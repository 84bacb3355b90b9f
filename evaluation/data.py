"""Evaluation samples from the ingest output: rows of one source and split, and their ground truth in array form."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from preprocessing.box_geometry import cxcywh_to_xyxy
from preprocessing.classes import FRONTAL_VIEWS
from preprocessing.records import split_dir

Row = dict[str, Any]


def load_rows(tables: Path, source: str, split: str, limit: int = 0, frontal_only: bool = False) -> list[Row]:
    """Rows of one ingested table, ordered by sample id (so a limit and every run take the same samples)."""
    files = sorted(split_dir(tables, source, split).glob("*.parquet"))
    if not files:
        return []
    frame = pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed").sort("sample_id")
    if frontal_only:
        frame = frame.filter(pl.col("view_position").is_in(list(FRONTAL_VIEWS)))
    if limit:
        frame = frame.head(limit)
    return frame.to_dicts()


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


def class_boxes(row: Row, classes: tuple[str, ...], aliases: dict[str, str] | None = None) -> dict[int, np.ndarray]:
    """Ground-truth boxes of ``row["boxes"]`` per class index (classes outside the list are not evaluated)."""
    index = {c: i for i, c in enumerate(classes)}
    out: dict[int, list[list[float]]] = {}
    for b in row.get("boxes") or []:
        name = (aliases or {}).get(b["name"], b["name"])
        if name in index:
            out.setdefault(index[name], []).append(xyxy(b))
    return {k: unique_boxes(v) for k, v in out.items()}


def report_text(row: Row) -> str:
    return " ".join(row.get("report_sentences") or [])
