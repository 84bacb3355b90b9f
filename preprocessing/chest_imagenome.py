"""Chest ImaGenome silver scene graphs: anatomy boxes, per-region finding labels and phrases.

Graphs are located by glob (zip members or extracted files, any nesting) and parsed by the ingest workers.
Dirty coordinates are clamped to the image as the reference does; boxes that vanish are reported, not hidden.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from preprocessing.classes import FRONTAL_VIEWS
from preprocessing.records import PixelBox
from preprocessing.sentences import clean_phrase

SUFFIX = "_SceneGraph.json"
MIN_VALID_BOXES = 5
LABEL_CATEGORIES = {"anatomicalfinding", "disease"}


class SceneGraphError(ValueError):
    """A scene graph that cannot be used at all (invalid JSON, wrong view, too few boxes)."""


@dataclass
class SceneGraph:
    boxes: list[PixelBox] = field(default_factory=list)
    labels: list[tuple[str, str, int]] = field(default_factory=list)   # (region, finding, 1 yes | 0 no)
    phrases: dict[str, list[str]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)                   # boxes left out, with the reason


def index_scene_graphs(root: Path) -> dict[str, tuple[str, str]]:
    """dicom_id -> (container, member): members of silver_dataset/scene_graph.zip or extracted JSON files."""
    index: dict[str, tuple[str, str]] = {}
    for zpath in sorted(root.rglob("scene_graph*.zip")):
        with zipfile.ZipFile(zpath) as zf:
            for name in zf.namelist():
                if name.endswith(SUFFIX):
                    index.setdefault(name.rsplit("/", 1)[-1][: -len(SUFFIX)], (str(zpath), name))
    for path in sorted(root.rglob(f"*{SUFFIX}")):
        index.setdefault(path.name[: -len(SUFFIX)], (str(path.parent), path.name))
    return index


def parse_scene_graph(data: bytes, width: int, height: int) -> SceneGraph:
    """Boxes in original pixels clamped to (width, height); duplicate regions are merged into their union."""
    try:
        graph = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SceneGraphError(f"invalid JSON: {exc}") from exc
    if not isinstance(graph, dict) or not isinstance(graph.get("objects"), list):
        raise SceneGraphError("no 'objects' list in scene graph")
    if graph.get("viewpoint") not in FRONTAL_VIEWS:
        raise SceneGraphError(f"viewpoint {graph.get('viewpoint')!r} is not PA/AP")
    sg = SceneGraph()
    merged: dict[str, PixelBox] = {}
    for obj in graph["objects"]:
        if not isinstance(obj, dict):
            sg.dropped.append(f"malformed object entry {str(obj)[:60]!r}")
            continue
        name = obj.get("bbox_name")
        try:
            x1, y1, x2, y2 = (float(obj[k]) for k in ("original_x1", "original_y1", "original_x2", "original_y2"))
        except (KeyError, TypeError, ValueError):
            sg.dropped.append(f"{name}: missing or non-numeric original coordinates")
            continue
        x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
        if x2 <= x1 or y2 <= y1:
            sg.dropped.append(f"{name}: empty after clamping to the {width}x{height} image")
            continue
        if name in merged:
            b = merged[name]
            merged[name] = PixelBox(name, min(b.x1, x1), min(b.y1, y1), max(b.x2, x2), max(b.y2, y2))
        else:
            merged[name] = PixelBox(name, x1, y1, x2, y2)
    if len(merged) < MIN_VALID_BOXES:
        raise SceneGraphError(f"only {len(merged)} valid anatomy boxes (< {MIN_VALID_BOXES})")
    sg.boxes = list(merged.values())
    labels: dict[tuple[str, str], int] = {}
    for attr in graph.get("attributes") or []:
        region = attr.get("bbox_name") if isinstance(attr, dict) else None
        if not isinstance(region, str):
            continue
        for phrase_attrs in attr.get("attributes") or []:
            for item in phrase_attrs if isinstance(phrase_attrs, list) else []:
                parts = str(item).split("|")
                if len(parts) != 3:
                    continue
                category, polarity, name = parts
                if category in LABEL_CATEGORIES or (category == "nlp" and name in ("abnormal", "normal")):
                    finding = "abnormal" if category == "nlp" else name
                    value = int(polarity == "yes") if category != "nlp" else int((name == "abnormal") == (polarity == "yes"))
                    labels[(region, finding)] = max(labels.get((region, finding), 0), value)
        phrases = [p for p in (clean_phrase(str(t)) for t in attr.get("phrases") or []) if len(p.split()) >= 2]
        if phrases:
            sg.phrases[region] = list(dict.fromkeys(sg.phrases.get(region, []) + phrases))
    sg.labels = [(r, f, v) for (r, f), v in labels.items()]
    return sg
