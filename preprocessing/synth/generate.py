"""`chex synth`: write every raw source from one seeded ground truth, rendering images on all cores."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from preprocessing.progress import track
from preprocessing.synth import write_imagenome, write_mimic, write_mscxr, write_nih, write_vindr
from preprocessing.synth.phantom import render_frontal
from preprocessing.synth.truth import StudyTruth, sample_studies


@dataclass(frozen=True)
class SynthConfig:
    """How much to generate. VinDr and NIH sizes default to fractions of the MIMIC study count."""

    studies: int = 40
    seed: int = 0
    image_scale: float = 1.0          # 1.0 = realistic sizes (~2500x3000 MIMIC/VinDr, 1024^2 NIH)
    vindr_train: int | None = None
    vindr_test: int | None = None
    nih_images: int | None = None
    workers: int = 0                  # 0 = all cores
    scale: float | None = None        # None = the sizes above; else this fraction of the real releases (1.0 = full)
    metadata_only: bool = False       # with `scale`: every table at that size, pixels only for the sizes above

    def __post_init__(self) -> None:
        if self.scale is not None and not 0 < self.scale <= 1:
            raise ValueError(f"scale must be a fraction within (0, 1], got {self.scale}")
        if (self.scale is None) == self.metadata_only:
            raise ValueError("metadata_only and a release scale go together: a full-scale tree renders only a sample, "
                             "and a demo-sized one renders every image")

    def counts(self) -> tuple[int, int, int]:
        n = self.studies
        return (self.vindr_train if self.vindr_train is not None else max(2, n // 2),
                self.vindr_test if self.vindr_test is not None else max(2, n // 4),
                self.nih_images if self.nih_images is not None else max(4, n // 2))


def _render_nih(path: Path, im: write_nih.NihImage) -> list:
    phantom = render_frontal(im.size, im.size, list(im.lesions), np.random.default_rng(im.seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(write_mimic.to_uint8(phantom.image)).save(path, "PNG")
    return phantom.lesion_boxes


def _call(job: tuple[Callable[..., Any], tuple]) -> Any:
    fn, args = job
    return fn(*args)


@dataclass
class SynthTruth:
    """The sampled ground truth; `synthesize` writes it, tests re-sample it to check what ingest reads back."""

    studies: list[StudyTruth]
    vindr: list[write_vindr.VindrImage]
    nih: list[write_nih.NihImage]
    rng: dict[str, np.random.Generator]


MARKER = "chex-synth.json"


def marker(cfg: SynthConfig) -> dict[str, Any]:
    """What identifies a generated tree (written last, so an interrupted run has none)."""
    defaults = asdict(SynthConfig())
    return {k: v for k, v in asdict(cfg).items()
            if k != "workers" and not (k in ("scale", "metadata_only") and v == defaults[k])}


def sample_truth(cfg: SynthConfig) -> SynthTruth:
    """Independent generators per source, so changing one source's size leaves the others' bytes unchanged."""
    rng = {name: np.random.default_rng([cfg.seed, k]) for k, name in enumerate(("mimic", "cig", "mscxr", "vindr", "nih"))}
    n_train, n_test, n_nih = cfg.counts()
    return SynthTruth(
        studies=sample_studies(rng["mimic"], cfg.studies, cfg.image_scale),
        vindr=write_vindr.sample_images(rng["vindr"], n_train, n_test, cfg.image_scale),
        nih=write_nih.sample_images(rng["nih"], n_nih, cfg.image_scale),
        rng=rng,
    )


def render_all(out: Path, studies: list[StudyTruth], vindr: list[write_vindr.VindrImage], nih: list[write_nih.NihImage],
               workers: int) -> tuple[dict[str, write_mimic.RenderedBoxes], dict[str, list], dict[str, list]]:
    """Render these images on `workers` processes (0 = all cores); returns the boxes drawn, per source and image."""
    mimic_jobs = write_mimic.image_jobs(out, studies)
    jobs = ([(write_mimic.render_image, job) for job in mimic_jobs]
            + [(write_vindr.render_dicom, (write_vindr.image_path(out, im), im)) for im in vindr]
            + [(_render_nih, (write_nih.image_path(out, im), im)) for im in nih])
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        results = list(track(pool.map(_call, jobs, chunksize=1), "synth", total=len(jobs), unit="images"))
    mimic_boxes = {im.dicom_id: r for (_, im, _), r in zip(mimic_jobs, results) if r is not None}
    vindr_boxes = {im.image_id: r for im, r in zip(vindr, results[len(mimic_jobs):len(mimic_jobs) + len(vindr)])}
    nih_boxes = {im.index: r for im, r in zip(nih, results[len(mimic_jobs) + len(vindr):])}
    return mimic_boxes, vindr_boxes, nih_boxes


def synthesize(out: Path, cfg: SynthConfig) -> dict[str, int]:
    """Generate all sources under `out`; returns counts per source. Same config -> byte-identical files.
    (A metadata-only config is written by `metadata_only.synthesize_metadata_only`.)"""
    if cfg.metadata_only:
        raise ValueError("a metadata-only config: call preprocessing.synth.metadata_only.synthesize_metadata_only")
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    truth = sample_truth(cfg)
    studies, vindr, nih, rng = truth.studies, truth.vindr, truth.nih, truth.rng
    mimic_boxes, vindr_boxes, nih_boxes = render_all(out, studies, vindr, nih, cfg.workers)

    write_mimic.write_tables(out, studies)
    reports = write_mimic.write_reports(out, studies)
    write_imagenome.write_chest_imagenome(out, studies, mimic_boxes, reports, rng["cig"])
    write_mscxr.write_ms_cxr(out, studies, mimic_boxes, rng["mscxr"])
    write_vindr.write_annotations(out, vindr, vindr_boxes, rng["vindr"])
    write_nih.write_tables(out, nih, nih_boxes, rng["nih"])
    (out / MARKER).write_text(json.dumps(marker(cfg), sort_keys=True) + "\n")
    return {
        "mimic_studies": len(studies), "mimic_images": sum(len(s.images) for s in studies),
        "scene_graphs": sum(im.frontal for s in studies for im in s.images),
        "vindr_images": len(vindr), "nih_images": len(nih), "seconds": round(time.perf_counter() - t0, 1),
    }
