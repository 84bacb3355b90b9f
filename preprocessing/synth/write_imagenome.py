"""Chest ImaGenome silver scene graphs (zip of <dicom_id>_SceneGraph.json) and split CSVs for frontal images."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from preprocessing.classes import CIG_BBOX_NAMES_36
from preprocessing.synth.catalog import CATALOG, SIZE_WORDS
from preprocessing.synth.files import csv_text, write_text, write_zip
from preprocessing.synth.report_writer import raw_phrase
from preprocessing.synth.truth import ImageTruth, Sentence, StudyTruth
from preprocessing.synth.write_mimic import RenderedBoxes, study_dir

CIG_DIR = "chest-imagenome/1.0.0"
SPLIT_NAMES = {"train": "train", "validate": "valid", "test": "test"}
SPLIT_HEADER = ("subject_id", "study_id", "dicom_id", "path", "ViewPosition")


def cui(name: str) -> str:
    """A stable fake UMLS CUI per name (the real ones are not needed by any reader)."""
    return "C" + str(int(hashlib.sha1(name.encode()).hexdigest(), 16) % 10**7).zfill(7)


def _objects(dicom_id: str, boxes: RenderedBoxes, width: int, height: int, rng: np.random.Generator) -> list[dict]:
    side = max(width, height)
    ratio, left, top = 224 / side, (side - width) / 2, (side - height) / 2
    dirty = int(rng.integers(len(CIG_BBOX_NAMES_36))) if rng.random() < 0.2 else -1
    objects = []
    for i, name in enumerate(CIG_BBOX_NAMES_36):
        x1, y1, x2, y2 = (round(v) for v in boxes.anatomy[name])
        if i == dirty:  # real graphs carry slightly out-of-image coordinates now and then; readers clamp them
            x1, y1 = x1 - 7, y1 - 5
        c = [round((x1 + left) * ratio), round((y1 + top) * ratio), round((x2 + left) * ratio), round((y2 + top) * ratio)]
        objects.append({
            "object_id": f"{dicom_id}_{name}", "x1": c[0], "y1": c[1], "x2": c[2], "y2": c[3],
            "width": c[2] - c[0], "height": c[3] - c[1], "bbox_name": name, "synsets": [cui(name)],
            "name": name.capitalize(), "original_x1": x1, "original_y1": y1, "original_x2": x2, "original_y2": y2,
            "original_width": x2 - x1, "original_height": y2 - y1,
        })
    return objects


def _sentence_attributes(s: Sentence) -> list[str]:
    if s.polarity == "no":
        return [f"anatomicalfinding|no|{f}" for f in CATALOG[s.kind].cig_findings] + ["nlp|yes|normal"]
    return [f"anatomicalfinding|yes|{f}" for f in CATALOG[s.kind].cig_findings] + ["nlp|yes|abnormal"]


def _attributes(dicom_id: str, study: StudyTruth, report: str) -> list[dict]:
    by_region: dict[str, list[tuple[int, Sentence]]] = {}
    for idx, s in enumerate(study.sentences):
        for region in s.regions:
            by_region.setdefault(region, []).append((idx, s))
    out = []
    for region, items in by_region.items():
        attrs = [_sentence_attributes(s) for _, s in items]
        severity = [[f"severity|yes|{w}" for _, w in SIZE_WORDS if w in s.text.lower()][:1] for _, s in items]
        out.append({
            region: True, "bbox_name": region, "synsets": [cui(region)], "name": region.capitalize(),
            "attributes": attrs, "attributes_ids": [[cui(a) for a in row] for row in attrs],
            "phrases": [raw_phrase(report, s.text) for _, s in items],
            "phrase_IDs": [f"{study.study_id}|{idx}" for idx, _ in items],
            "sections": ["finalreport"] * len(items), "comparison_cues": [[] for _ in items],
            "temporal_cues": [[] for _ in items], "severity_cues": severity, "texture_cues": [[] for _ in items],
            "object_id": f"{dicom_id}_{region}",
        })
    return out


def _graph_header(study: StudyTruth, im: ImageTruth) -> dict:
    return {
        "image_id": im.dicom_id, "viewpoint": im.view, "patient_id": study.subject_id,
        "study_id": study.study_id, "gender": ("F", "M")[study.subject_id % 2],
        "age_decile": f"{40 + 10 * (study.subject_id % 5)}-{50 + 10 * (study.subject_id % 5)}",
        "reason_for_exam": "___ year old with shortness of breath",
    }


def write_chest_imagenome(root: Path, studies: list[StudyTruth], boxes: dict[str, RenderedBoxes],
                          reports: dict[int, str], rng: np.random.Generator) -> None:
    """One scene graph per frontal image (PA/AP), plus silver split CSVs with their unnamed index column.

    A frontal image without rendered boxes (`chex synth --metadata-only`) gets a graph with its header only (ids,
    view, demographics) and no objects or attributes: the zip then lists every graph the release has, cheaply."""
    members, split_rows = [], {name: [] for name in SPLIT_NAMES.values()}
    for study in studies:
        for im in study.images:
            if not im.frontal:
                continue
            graph = {**_graph_header(study, im), "objects": [], "attributes": [], "relationships": []}
            if im.dicom_id in boxes:
                graph["objects"] = _objects(im.dicom_id, boxes[im.dicom_id], im.width, im.height, rng)
                graph["attributes"] = _attributes(im.dicom_id, study, reports[study.study_id])
            members.append((f"scene_graph/{im.dicom_id}_SceneGraph.json", json.dumps(graph, indent=1).encode()))
            path = f"{study_dir(study.subject_id, study.study_id)}/{im.dicom_id}.dcm"
            split_rows[SPLIT_NAMES[study.split]].append((study.subject_id, study.study_id, im.dicom_id, path, im.view))
    base = root / CIG_DIR / "silver_dataset"
    write_zip(base / "scene_graph.zip", members)
    for name, rows in split_rows.items():
        write_text(base / "splits" / f"{name}.csv", csv_text(("", *SPLIT_HEADER), ((i, *r) for i, r in enumerate(rows))))
    write_text(base / "splits" / "images_to_avoid.csv", csv_text(SPLIT_HEADER, []))
