"""The hand-off between readers and the ingest job: one RawRecord per image, one Reject per unreadable thing.

Readers only parse tables (cheap, on the driver); pixels, reports and scene graphs are read by the Ray workers
from the paths a record names, so the expensive work is distributed.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class PixelBox:
    """A box in original image pixels (x1, y1, x2, y2); `reader` tags VinDr readers before fusion."""

    name: str
    x1: float
    y1: float
    x2: float
    y2: float
    reader: str | None = None


@dataclass
class GroundedPhrase:
    phrase: str
    category: str
    boxes: list[PixelBox]


@dataclass
class RawRecord:
    """Everything known about one image before its pixels are decoded."""

    source: str                       # mimic_cxr | vindr_cxr | nih_cxr | ms_cxr
    split: str                        # train | val | test
    sample_id: str
    image_id: str
    image_path: str                   # absolute path of the image file
    source_path: str                  # image path relative to the raw root (what rejects and lineage show)
    patient_id: str | None = None
    study_id: str | None = None
    view_position: str | None = None
    expected_size: tuple[int, int] | None = None   # (width, height) from metadata, checked against the pixels
    boxes: list[PixelBox] = field(default_factory=list)
    fuse_boxes: bool = False          # VinDr train: fuse readers' boxes per class once the image size is known
    labels: dict[str, int] = field(default_factory=dict)
    report: tuple[str, str] | None = None           # MIMIC report: (folder or mimic-cxr-reports.zip, member)
    report_source_path: str | None = None
    scene_graph: tuple[str, str] | None = None      # (folder or scene_graph.zip, member)
    scene_graph_source_path: str | None = None
    grounded_phrases: list[GroundedPhrase] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> RawRecord:
        d = json.loads(text)
        d["boxes"] = [PixelBox(**b) for b in d["boxes"]]
        d["grounded_phrases"] = [GroundedPhrase(g["phrase"], g["category"], [PixelBox(**b) for b in g["boxes"]])
                                 for g in d["grounded_phrases"]]
        d["expected_size"] = tuple(d["expected_size"]) if d["expected_size"] else None
        d["scene_graph"] = tuple(d["scene_graph"]) if d["scene_graph"] else None
        d["report"] = tuple(d["report"]) if d["report"] else None
        return RawRecord(**d)


@dataclass(frozen=True)
class Reject:
    """Something that could not be read: where it came from, at which stage, and why (one clear sentence)."""

    source: str
    source_path: str
    stage: str                        # table | image | report | scene_graph | box | phrase
    reason: str
    record_id: str = ""


def relative(path: Path, root: Path) -> str:
    """Path relative to the raw root when inside it, else absolute (readers may point outside --raw)."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def relative_below(root: Path, raw_root: Path) -> Callable[[Path], str]:
    """:func:`relative` for many paths below one folder, resolving the folder once (resolving every path took most
    of the time to plan a full-size source). A path that leaves the folder falls back to :func:`relative`."""
    base = relative(root, raw_root)

    def rel(path: Path) -> str:
        try:
            sub = path.relative_to(root).as_posix()
        except ValueError:
            return relative(path, raw_root)
        if sub == "." or ".." in sub.split("/"):
            return relative(path, raw_root)
        return sub if base == "." else f"{base}/{sub}"
    return rel


TABLES = "tables"   # the ingest output's table folder: tables/source=<source>/split=<split>/*.parquet


def partition(source: str, split: str) -> str:
    """The hive partition path of one source and split, relative to the table folder."""
    return f"source={source}/split={split}"


def split_dir(out: Path | str, source: str, split: str) -> Path:
    """Where the Parquet files of one source and split lie in an ingest output folder."""
    return Path(out) / TABLES / partition(source, split)
