"""MIMIC-CXR-JPG (images + metadata/split/label CSVs) and MIMIC-CXR reports, in the PhysioNet layout."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from preprocessing.classes import CHEXPERT_14
from preprocessing.synth.files import csv_text, write_gzip_text, write_text, write_zip
from preprocessing.synth.phantom import Lesion, render_frontal, render_lateral
from preprocessing.synth.report_writer import write_report
from preprocessing.synth.truth import ImageTruth, StudyTruth

MIMIC_JPG_DIR = "mimic-cxr-jpg/2.0.0"
MIMIC_REPORTS_DIR = "mimic-cxr/2.0.0"
REPORTS_ZIP = "mimic-cxr-reports.zip"
METADATA_HEADER = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral", "": ""}


@dataclass(frozen=True)
class RenderedBoxes:
    """Pixel boxes of one rendered frontal image, kept so scene graphs and MS-CXR rows match the pixels."""

    anatomy: dict[str, tuple[float, float, float, float]]
    lesions: list[tuple[float, float, float, float]]


def exam_name(study: StudyTruth) -> str:
    return "CHEST (PORTABLE AP)" if study.images[0].view == "AP" else "CHEST (PA AND LAT)"


def study_dir(subject_id: int, study_id: int) -> str:
    s = str(subject_id)
    return f"files/p{s[:2]}/p{s}/s{study_id}"


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


def render_image(path: Path, image: ImageTruth, lesions: list[Lesion], fmt: str = "JPEG") -> RenderedBoxes | None:
    """Render one study image to `path`; lateral views carry no boxes."""
    rng = np.random.default_rng(image.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.view in ("LATERAL", "LL"):
        Image.fromarray(to_uint8(render_lateral(image.width, image.height, rng))).save(path, fmt, quality=95)
        return None
    phantom = render_frontal(image.width, image.height, lesions, rng)
    Image.fromarray(to_uint8(phantom.image)).save(path, fmt, quality=95)
    return RenderedBoxes(phantom.anatomy, phantom.lesion_boxes)


def image_jobs(root: Path, studies: list[StudyTruth]) -> list[tuple[Path, ImageTruth, list[Lesion]]]:
    base = root / MIMIC_JPG_DIR
    return [(base / study_dir(s.subject_id, s.study_id) / f"{im.dicom_id}.jpg", im, s.lesions)
            for s in studies for im in s.images]


def write_tables(root: Path, studies: list[StudyTruth]) -> None:
    """metadata / split / chexpert / negbio CSVs, gzip-compressed as released."""
    base = root / MIMIC_JPG_DIR
    meta, split, labels = [], [], []
    for s in studies:
        proc = exam_name(s)
        for im in s.images:
            meta.append((im.dicom_id, s.subject_id, s.study_id, proc, im.view, im.height, im.width, s.study_date,
                         repr(s.study_time), proc, VIEW_MEANING.get(im.view, ""), "Erect" if im.view != "AP" else ""))
            split.append((im.dicom_id, s.study_id, s.subject_id, s.split))
        if s.has_chexpert_row:
            values = s.chexpert()
            labels.append((s.subject_id, s.study_id, *(values.get(name) for name in CHEXPERT_14)))
    write_gzip_text(base / "mimic-cxr-2.0.0-metadata.csv.gz", csv_text(METADATA_HEADER, meta))
    write_gzip_text(base / "mimic-cxr-2.0.0-split.csv.gz", csv_text(("dicom_id", "study_id", "subject_id", "split"), split))
    label_header = ("subject_id", "study_id", *CHEXPERT_14)
    write_gzip_text(base / "mimic-cxr-2.0.0-chexpert.csv.gz", csv_text(label_header, labels))
    write_gzip_text(base / "mimic-cxr-2.0.0-negbio.csv.gz", csv_text(label_header, labels))
    write_text(base / "IMAGE_FILENAMES", "".join(
        f"{study_dir(s.subject_id, s.study_id)}/{im.dicom_id}.jpg\n" for s in studies for im in s.images))


def write_reports(root: Path, studies: list[StudyTruth]) -> dict[int, str]:
    """One report per study next to its study folder (files/pXX/pXXXXXXXX/sXXXXXXXX.txt)."""
    reports = {}
    for s in studies:
        text = write_report(s, seed=s.study_id)
        write_text(root / MIMIC_REPORTS_DIR / f"{study_dir(s.subject_id, s.study_id)}.txt", text)
        reports[s.study_id] = text
    return reports


def write_reports_zip(root: Path, studies: list[StudyTruth]) -> None:
    """All reports as PhysioNet ships them: members files/pXX/pXXXXXXXX/sXXXXXXXX.txt of mimic-cxr-reports.zip."""
    write_zip(root / MIMIC_REPORTS_DIR / REPORTS_ZIP, (
        (f"{study_dir(s.subject_id, s.study_id)}.txt", write_report(s, seed=s.study_id).encode()) for s in studies))
