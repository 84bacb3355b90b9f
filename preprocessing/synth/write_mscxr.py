"""MS-CXR local-alignment CSV (v1.1.0 with split): grounded phrases with boxes on MIMIC-CXR-JPG images."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from preprocessing.synth.catalog import CATALOG
from preprocessing.synth.files import csv_text, write_text
from preprocessing.synth.phantom import Box
from preprocessing.synth.truth import ImageTruth, Sentence, StudyTruth
from preprocessing.synth.write_mimic import RenderedBoxes, study_dir

MS_CXR_DIR = "ms-cxr/1.1.0"
MS_CXR_FILE = "MS_CXR_Local_Alignment_v1.1.0.csv"
HEADER = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height", "split")
SELECT_P = 0.6
SPLITS, SPLIT_P = ["train", "val", "test"], [0.5, 0.2, 0.3]


def _grounded(study: StudyTruth) -> tuple[ImageTruth | None, list[Sentence]]:
    """The study's first frontal image and its positive sentences about a finding MS-CXR has a category for."""
    frontal = next((im for im in study.images if im.frontal), None)
    return frontal, [s for s in study.sentences if s.polarity == "yes" and CATALOG[s.kind].ms_cxr]


def _rows(study: StudyTruth, frontal: ImageTruth, phrases: list[Sentence], lesion_boxes: list[Box], split: str) -> list[tuple]:
    """One row per box; a phrase about a bilateral finding has one row per side."""
    path = f"{study_dir(study.subject_id, study.study_id)}/{frontal.dicom_id}.jpg"
    rows = []
    for s in phrases:
        for lesion_index in s.lesions:
            x1, y1, x2, y2 = lesion_boxes[lesion_index]
            rows.append((frontal.dicom_id, CATALOG[s.kind].ms_cxr, s.text.rstrip("."), path, round(x1), round(y1),
                         round(x2 - x1), round(y2 - y1), frontal.width, frontal.height, split))
    return rows


def write_ms_cxr(root: Path, studies: list[StudyTruth], boxes: dict[str, RenderedBoxes], rng: np.random.Generator) -> None:
    """Rows for a random SELECT_P of the studies with a groundable phrase; splits are drawn per patient."""
    patient_split: dict[int, str] = {}
    rows = []
    for study in studies:
        frontal, phrases = _grounded(study)
        if frontal is None or not phrases or rng.random() >= SELECT_P:
            continue
        split = patient_split.setdefault(study.subject_id, str(rng.choice(SPLITS, p=SPLIT_P)))
        rows += _rows(study, frontal, phrases, boxes[frontal.dicom_id].lesions, split)
    write_text(root / MS_CXR_DIR / MS_CXR_FILE, csv_text(HEADER, rows))


def write_ms_cxr_exact(root: Path, studies: list[StudyTruth], n_rows: int, first: int,
                       lesion_boxes: Callable[[StudyTruth, ImageTruth], list[Box]], rng: np.random.Generator) -> None:
    """Exactly `n_rows` rows (the release's 1,162 at full scale), one phrase per image as in the release, from the
    `first` studies (the rendered sample, so an ingest of it finds MS-CXR images) and then studies in random order;
    the last study taken keeps only the rows still needed. Rows come in study order; `lesion_boxes` gives a frontal
    image's boxes."""
    taken: dict[int, int] = {}   # study index -> rows it contributes
    total = 0
    for i in [*range(first), *(first + rng.permutation(len(studies) - first)).tolist()]:
        frontal, phrases = _grounded(studies[i])
        if frontal is not None and phrases:
            taken[i] = min(len(phrases[0].lesions), n_rows - total)
            total += taken[i]
            if total == n_rows:
                break
    else:
        raise ValueError(f"only {total} MS-CXR rows can be grounded in {len(studies)} studies, not {n_rows}")
    patient_split: dict[int, str] = {}
    rows = []
    for i in sorted(taken):
        study = studies[i]
        frontal, phrases = _grounded(study)
        split = patient_split.setdefault(study.subject_id, str(rng.choice(SPLITS, p=SPLIT_P)))
        rows += _rows(study, frontal, phrases[:1], lesion_boxes(study, frontal), split)[: taken[i]]
    write_text(root / MS_CXR_DIR / MS_CXR_FILE, csv_text(HEADER, rows))
