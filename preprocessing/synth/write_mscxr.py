"""MS-CXR local-alignment CSV (v1.1.0 with split): grounded phrases with boxes on MIMIC-CXR-JPG images."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from preprocessing.synth.catalog import CATALOG
from preprocessing.synth.files import csv_text, write_text
from preprocessing.synth.truth import StudyTruth
from preprocessing.synth.write_mimic import RenderedBoxes, study_dir

MS_CXR_DIR = "ms-cxr/1.1.0"
MS_CXR_FILE = "MS_CXR_Local_Alignment_v1.1.0.csv"
HEADER = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height", "split")
SELECT_P = 0.6


def write_ms_cxr(root: Path, studies: list[StudyTruth], boxes: dict[str, RenderedBoxes], rng: np.random.Generator) -> None:
    """One row per box; a phrase about a bilateral finding has one row per side."""
    patient_split: dict[int, str] = {}
    rows = []
    for study in studies:
        frontal = next((im for im in study.images if im.frontal), None)
        phrases = [s for s in study.sentences if s.polarity == "yes" and CATALOG[s.kind].ms_cxr]
        if frontal is None or not phrases or rng.random() >= SELECT_P:
            continue
        split = patient_split.setdefault(study.subject_id, str(rng.choice(["train", "val", "test"], p=[0.5, 0.2, 0.3])))
        path = f"{study_dir(study.subject_id, study.study_id)}/{frontal.dicom_id}.jpg"
        for s in phrases:
            for lesion_index in s.lesions:
                x1, y1, x2, y2 = boxes[frontal.dicom_id].lesions[lesion_index]
                rows.append((frontal.dicom_id, CATALOG[s.kind].ms_cxr, s.text.rstrip("."), path, round(x1), round(y1),
                             round(x2 - x1), round(y2 - y1), frontal.width, frontal.height, split))
    write_text(root / MS_CXR_DIR / MS_CXR_FILE, csv_text(HEADER, rows))
