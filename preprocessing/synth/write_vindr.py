"""VinDr-CXR: DICOM images (MONOCHROME1/2, 12-16 bit, some compressed) and 3-reader train / consensus test CSVs,
as PhysioNet ships them or as Kaggle's "VinBigData" copy (one train.csv of 14 classes)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from preprocessing.classes import VINDR_GLOBAL_TEST, VINDR_GLOBAL_TRAIN, VINDR_LOCAL_22, VINDR_NO_FINDING
from preprocessing.synth.catalog import CATALOG
from preprocessing.synth.files import csv_text, write_text
from preprocessing.synth.phantom import Lesion, render_frontal
from preprocessing.synth.truth import hex_id, sample_lesions
from preprocessing.vindr_cxr import KAGGLE_CLASSES

VINDR_DIR = "vindr-cxr/1.0.0"
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
SIZES = ((2048, 2500), (2500, 3000), (2880, 2880), (3072, 2560), (2304, 2800))
READER_MISS_P = 0.15
BOX_JITTER = 0.03


@dataclass(frozen=True)
class VindrImage:
    image_id: str
    split: str          # train | test (official)
    width: int
    height: int
    lesions: tuple[Lesion, ...]
    seed: int
    bits: int           # BitsStored
    photometric: str
    compression: str    # "" | "rle" | "j2k"
    windowed: bool


def sample_images(rng: np.random.Generator, n_train: int, n_test: int, image_scale: float) -> list[VindrImage]:
    images = []
    for i in range(n_train + n_test):
        w, h = SIZES[int(rng.integers(len(SIZES)))]
        lesions = sample_lesions(rng, int(rng.choice(4, p=(0.3, 0.4, 0.2, 0.1))))
        images.append(VindrImage(
            image_id=hex_id(rng, 1, 32), split="train" if i < n_train else "test",
            width=max(64, round(w * image_scale)), height=max(64, round(h * image_scale)), lesions=tuple(lesions),
            seed=int(rng.integers(2**31)), bits=(12, 14, 16)[i % 3], photometric=("MONOCHROME2", "MONOCHROME1")[i % 4 == 2],
            compression={1: "rle", 5: "rle", 3: "j2k"}.get(i % 8, ""), windowed=i % 5 == 4,
        ))
    return images


def render_dicom(path: Path, im: VindrImage) -> list[tuple[float, float, float, float]]:
    """Write one DICOM and return the pixel boxes of its lesions."""
    phantom = render_frontal(im.width, im.height, list(im.lesions), np.random.default_rng(im.seed))
    top = 2**im.bits - 1
    lo = int(top * 0.05)
    pixels = np.round(lo + phantom.image * (top * 0.9)).astype(np.uint16)
    if im.photometric == "MONOCHROME1":
        pixels = (top - pixels).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[im.image_id, "sop"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[im.image_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[im.image_id, "series"])
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = im.image_id[:12]
    ds.ViewPosition = "PA"
    ds.set_pixel_data(pixels, im.photometric, im.bits, generate_instance_uid=False)
    if im.windowed:
        ds.WindowCenter, ds.WindowWidth = top // 2, int(top * 0.8)
    if im.compression:
        ds.compress(RLELossless if im.compression == "rle" else JPEG2000Lossless, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return phantom.lesion_boxes


def _coords(box: tuple[float, float, float, float], rng: np.random.Generator, jitter: float) -> list[str]:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    out = [x1 + rng.normal(0, jitter * w), y1 + rng.normal(0, jitter * h), x2 + rng.normal(0, jitter * w),
           y2 + rng.normal(0, jitter * h)]
    return [f"{v:.2f}" if rng.random() < 0.7 else f"{round(v)}.0" for v in out]


def write_annotations(root: Path, images: list[VindrImage], boxes: dict[str, list], rng: np.random.Generator) -> None:
    """Train: 3 readers per image, each missing a lesion now and then; test: one consensus set without rad_id."""
    base = root / VINDR_DIR / "annotations"
    ann_train, ann_test, lab_train, lab_test = [], [], [], []
    for im in images:
        if im.split == "train":
            for reader in rng.choice(np.arange(1, 18), size=3, replace=False):
                seen = [i for i in range(len(im.lesions)) if rng.random() >= READER_MISS_P]
                ann_train += _rows(im, boxes[im.image_id], seen, rng, BOX_JITTER, f"R{reader}")
                lab_train.append((im.image_id, f"R{reader}", *_labels(im, seen, VINDR_GLOBAL_TRAIN)))
        else:
            every = list(range(len(im.lesions)))
            ann_test += _rows(im, boxes[im.image_id], every, rng, 0.0, None)
            lab_test.append((im.image_id, *_labels(im, every, VINDR_GLOBAL_TEST)))
    box_cols = ("class_name", "x_min", "y_min", "x_max", "y_max")
    write_text(base / "annotations_train.csv", csv_text(("image_id", "rad_id", *box_cols), ann_train))
    write_text(base / "annotations_test.csv", csv_text(("image_id", *box_cols), ann_test))
    write_text(base / "image_labels_train.csv", csv_text(("image_id", "rad_id", *VINDR_LOCAL_22, *VINDR_GLOBAL_TRAIN), lab_train))
    write_text(base / "image_labels_test.csv", csv_text(("image_id", *VINDR_LOCAL_22, *VINDR_GLOBAL_TEST), lab_test))


def _rows(im: VindrImage, boxes: list, seen: list[int], rng: np.random.Generator, jitter: float,
          reader: str | None) -> list[tuple]:
    prefix = (im.image_id,) if reader is None else (im.image_id, reader)
    rows = []
    for i in seen:
        coords = _coords(boxes[i], rng, jitter)
        rows += [(*prefix, name, *coords) for name in CATALOG[im.lesions[i].kind].vindr]
    return rows or [(*prefix, VINDR_NO_FINDING, None, None, None, None)]


def _labels(im: VindrImage, seen: list[int], global_names: tuple[str, ...]) -> list[int]:
    local = {n for i in seen for n in CATALOG[im.lesions[i].kind].vindr}
    glob = {n for i in seen for n in CATALOG[im.lesions[i].kind].vindr_global}
    if not seen:
        glob.add(VINDR_NO_FINDING)
    return [int(n in local) for n in VINDR_LOCAL_22] + [int(n in glob) for n in global_names]


def image_path(root: Path, im: VindrImage) -> Path:
    return root / VINDR_DIR / im.split / f"{im.image_id}.dicom"



KAGGLE_DIR = "vinbigdata"
KAGGLE_HEADER = ("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")


def kaggle_image_path(root: Path, im: VindrImage) -> Path:
    return root / KAGGLE_DIR / im.split / f"{im.image_id}.dicom"


def write_kaggle(root: Path, images: list[VindrImage], rng: np.random.Generator
                 ) -> tuple[dict[str, list], dict[str, dict[str, list[int]]]]:
    """The Kaggle "VinBigData" copy of the same images: every DICOM (``train/``, and ``test/`` whose labels Kaggle
    kept back) and one ``train.csv`` with 3 readers per train image, each missing a lesion now and then, naming only
    Kaggle's 14 classes (a reader who drew none of them writes a "No finding" row without coordinates). Renders
    serially, for small trees. Returns the lesion boxes per image and, per train image, the lesions each reader saw."""
    boxes = {im.image_id: render_dicom(kaggle_image_path(root, im), im) for im in images}
    seen_by: dict[str, dict[str, list[int]]] = {}
    rows: list[tuple] = []
    for im in (im for im in images if im.split == "train"):
        seen_by[im.image_id] = {}
        for reader in rng.choice(np.arange(1, 18), size=3, replace=False):
            seen = [i for i in range(len(im.lesions)) if rng.random() >= READER_MISS_P]
            seen_by[im.image_id][f"R{reader}"] = seen
            rows += _kaggle_rows(im, boxes[im.image_id], seen, rng, f"R{reader}")
    write_text(root / KAGGLE_DIR / "train.csv", csv_text(KAGGLE_HEADER, rows))
    return boxes, seen_by


def _kaggle_rows(im: VindrImage, boxes: list, seen: list[int], rng: np.random.Generator, reader: str) -> list[tuple]:
    rows = []
    for i in seen:
        coords = _coords(boxes[i], rng, BOX_JITTER)
        rows += [(im.image_id, name, KAGGLE_CLASSES.index(name), reader, *coords)
                 for name in CATALOG[im.lesions[i].kind].vindr if name in KAGGLE_CLASSES]
    return rows or [(im.image_id, VINDR_NO_FINDING, KAGGLE_CLASSES.index(VINDR_NO_FINDING), reader, None, None, None, None)]
