"""What `chex ingest` reads and how it stores images (configs/ingest.yaml holds the same defaults)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SourcePaths:
    """Dataset roots, relative to --raw or absolute; null skips a source, a missing folder fails the job."""

    mimic_cxr_jpg: str | None = "mimic-cxr-jpg/2.0.0"
    mimic_cxr_reports: str | None = "mimic-cxr/2.0.0"
    chest_imagenome: str | None = "chest-imagenome/1.0.0"
    ms_cxr: str | None = "ms-cxr"
    vindr_cxr: str | None = "vindr-cxr/1.0.0"
    nih_cxr: str | None = "nih-chest-xrays"


@dataclass
class IngestConfig:
    image_size: int = 512            # stored square side: short side resized to this, then centre crop
    split_seed: int = 12345          # VinDr test -> val/test and NIH box patients -> val/test
    equalize_dicom: bool = True      # histogram equalization of DICOMs (the MIMIC JPGs were made that way)
    allow_truncated_images: bool = False  # true = decode truncated JPEG/PNG (missing rows gray), as the reference does
    batch_size: int = 8              # records per Ray Data batch
    hash_raw_content: bool = True    # sha256 of every raw file for lineage; false = path/size/mtime only (huge mirrors)
    # DICOM Modality values kept as chest radiographs; others (CT, MR, SEG, ...) are rejects. Empty = no check.
    allowed_modalities: list[str] = field(default_factory=lambda: ["CR", "DX"])
    max_reject_fraction: float = 0.05  # fail the job when a source loses more of its records than this to rejects
    allow_missing_images: bool = False  # true = a partial mirror: image files the metadata lists may be absent
    sources: SourcePaths = field(default_factory=SourcePaths)
