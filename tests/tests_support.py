"""Small helpers shared by test modules."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid


def write_csv(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def write_dicom(path: Path, arr: np.ndarray, photometric: str, bits: int, **tags: object) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.set_pixel_data(arr, photometric, bits)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return ds


def only_sources(*names: str):
    """SourcePaths with the named roots at their defaults and every other source null (a configured source whose
    folder is absent fails the ingest)."""
    from dataclasses import fields

    from pipelines.ingest.config import SourcePaths

    unknown = set(names) - {f.name for f in fields(SourcePaths)}
    assert not unknown, unknown
    return SourcePaths(**{f.name: f.default if f.name in names else None for f in fields(SourcePaths)})
