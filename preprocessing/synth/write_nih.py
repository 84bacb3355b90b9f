"""NIH ChestX-ray8: 1024x1024 PNGs, Data_Entry_2017.csv (trailing commas), BBox_List_2017.csv (odd header)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocessing.classes import NIH_BOX_8, NIH_NO_FINDING
from preprocessing.synth.catalog import CATALOG
from preprocessing.synth.files import write_text
from preprocessing.synth.phantom import Lesion
from preprocessing.synth.truth import sample_lesions

NIH_DIR = "nih-chest-xrays"
DATA_ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                     "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
BOX_P = 0.5
IMAGES_PER_FOLDER = 40


@dataclass(frozen=True)
class NihImage:
    index: str           # Image Index, e.g. 00000012_001.png
    patient_id: int
    follow_up: int
    size: int
    lesions: tuple[Lesion, ...]
    seed: int
    has_boxes: bool
    folder: str          # images_001 ...


def sample_images(rng: np.random.Generator, n_images: int, image_scale: float) -> list[NihImage]:
    images: list[NihImage] = []
    patient = 0
    while len(images) < n_images:
        patient += 1
        for follow_up in range(int(rng.integers(1, 4))):
            if len(images) == n_images:
                break
            lesions = tuple(sample_lesions(rng, int(rng.choice(3, p=(0.4, 0.4, 0.2)))))
            boxed = any(CATALOG[les.kind].nih in NIH_BOX_8 for les in lesions) and rng.random() < BOX_P
            images.append(NihImage(
                index=f"{patient:08d}_{follow_up:03d}.png", patient_id=patient, follow_up=follow_up,
                size=max(64, round(1024 * image_scale)), lesions=lesions, seed=int(rng.integers(2**31)),
                has_boxes=boxed, folder=f"images_{1 + len(images) // IMAGES_PER_FOLDER:03d}",
            ))
    return images


def image_path(root: Path, im: NihImage) -> Path:
    return root / NIH_DIR / im.folder / "images" / im.index


def finding_labels(im: NihImage) -> str:
    names = sorted({CATALOG[les.kind].nih for les in im.lesions})
    return "|".join(names) if names else NIH_NO_FINDING


def write_tables(root: Path, images: list[NihImage], boxes: dict[str, list], rng: np.random.Generator) -> None:
    entries, bbox_rows = [], []
    for im in images:
        age = 20 + (im.patient_id * 7) % 70 + im.follow_up
        w, h = (2500, 2048) if im.patient_id % 2 else (3056, 2544)
        entries.append(f"{im.index},{finding_labels(im)},{im.follow_up},{im.patient_id},{age},"
                       f"{'MF'[im.patient_id % 2]},{'PA' if im.follow_up % 2 == 0 else 'AP'},{w},{h},0.143,0.143,")
        if not im.has_boxes:
            continue
        for les, (x1, y1, x2, y2) in zip(im.lesions, boxes[im.index], strict=True):
            name = CATALOG[les.kind].nih
            if name in NIH_BOX_8:
                label = "Infiltrate" if name == "Infiltration" else name
                bbox_rows.append(f"{im.index},{label},{float(x1)},{float(y1)},{float(x2 - x1)},{float(y2 - y1)}")
    base = root / NIH_DIR
    write_text(base / "Data_Entry_2017.csv", DATA_ENTRY_HEADER + "\n" + "".join(e + "\n" for e in entries))
    write_text(base / "BBox_List_2017.csv", BBOX_HEADER + "\n" + "".join(r + "\n" for r in bbox_rows))
    test_patients = {im.patient_id for im in images if rng.random() < 0.2}
    write_text(base / "train_val_list.txt", "".join(f"{im.index}\n" for im in images if im.patient_id not in test_patients))
    write_text(base / "test_list.txt", "".join(f"{im.index}\n" for im in images if im.patient_id in test_patients))
