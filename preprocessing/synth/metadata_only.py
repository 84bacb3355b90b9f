"""`chex synth --metadata-only --scale full`: every table, index and archive at the releases' real size, with pixels
(and full scene graphs) only for a sample, so the ingest planner can be measured at full scale on a laptop's disk.

The sample is the first `studies` MIMIC-CXR studies and the first VinDr / NIH images of the demo's sizes for that
study count; they are rendered exactly as the demo renders them. Every other image exists only as rows: its
metadata, labels and report are as real as the sample's, its boxes come from `region_boxes`, its scene graph is a
header without objects, and its image file is absent (ingesting the whole tree would reject it as missing).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from preprocessing.classes import NIH_BOX_8
from preprocessing.synth import write_imagenome, write_mimic, write_mscxr, write_nih, write_vindr
from preprocessing.synth.catalog import CATALOG
from preprocessing.synth.cohort import sample_cohort, sample_layout
from preprocessing.synth.region_boxes import lesion_boxes
from preprocessing.synth.report_writer import write_report
from preprocessing.synth.scale import counts_at
from preprocessing.synth.truth import ImageTruth, StudyTruth

if TYPE_CHECKING:
    from preprocessing.synth.generate import SynthConfig

STREAMS = ("layout", "content", "cig", "mscxr", "vindr", "nih")


def box_count(im: write_nih.NihImage) -> int:
    """BBox_List rows an NIH image gets when boxed: one per lesion of the 8 box classes."""
    return sum(CATALOG[les.kind].nih in NIH_BOX_8 for les in im.lesions)


def mark_boxed(images: list[write_nih.NihImage], n_images: int, n_rows: int,
               rng: np.random.Generator) -> list[write_nih.NihImage]:
    """Exactly `n_images` boxed images carrying `n_rows` boxes (880 and 984 in the release): random images with one
    box-class lesion, and `n_rows - n_images` with two."""
    counts = np.array([box_count(im) for im in images])
    twos = n_rows - n_images
    pick = [*rng.permutation(np.flatnonzero(counts == 1))[: n_images - twos], *rng.permutation(np.flatnonzero(counts == 2))[:twos]]
    if len(pick) != n_images:
        raise ValueError(f"{len(images)} NIH images have too few box-class lesions for {n_images} boxed images")
    boxed = set(pick)
    return [dataclasses.replace(im, has_boxes=i in boxed) for i, im in enumerate(images)]


def _mimic(out: Path, studies: list[StudyTruth], sample: int, boxes: dict[str, write_mimic.RenderedBoxes],
           n_ms_cxr: int, rng: dict[str, np.random.Generator]) -> None:
    """MIMIC-CXR-JPG tables, the reports zip, Chest ImaGenome (full graphs for the sample) and MS-CXR."""
    def frontal_boxes(study: StudyTruth, im: ImageTruth) -> list:
        drawn = boxes.get(im.dicom_id)
        return drawn.lesions if drawn else lesion_boxes(study.lesions, im.width, im.height, im.seed)

    write_mimic.write_tables(out, studies)
    write_mimic.write_reports_zip(out, studies)
    reports = {s.study_id: write_report(s, seed=s.study_id) for s in studies[:sample]}
    write_imagenome.write_chest_imagenome(out, studies, boxes, reports, rng["cig"])
    write_mscxr.write_ms_cxr_exact(out, studies, n_ms_cxr, sample, frontal_boxes, rng["mscxr"])


def synthesize_metadata_only(out: Path, cfg: SynthConfig) -> dict[str, int]:
    """Write the tree under `out`; returns its counts. Same config -> byte-identical files."""
    from preprocessing.synth.generate import MARKER, marker, render_all

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    n = counts_at(cfg.scale)
    rng = {name: np.random.default_rng([cfg.seed, 10 + k]) for k, name in enumerate(STREAMS)}
    studies = sample_cohort(sample_layout(rng["layout"], n, cfg.image_scale), rng["content"], n.chexpert_missing)
    vindr = write_vindr.sample_images(rng["vindr"], n.vindr_train, n.vindr_test, cfg.image_scale)
    nih = mark_boxed(write_nih.sample_images(rng["nih"], n.nih_images, cfg.image_scale), n.nih_box_images,
                     n.nih_box_rows, rng["nih"])
    train, test, n_nih = cfg.counts()
    sample = min(cfg.studies, len(studies))
    vindr_sample = vindr[:min(train, n.vindr_train)] + vindr[n.vindr_train:n.vindr_train + test]
    mimic_boxes, vindr_boxes, nih_boxes = render_all(out, studies[:sample], vindr_sample, nih[:n_nih], cfg.workers)
    rendered = sum(len(s.images) for s in studies[:sample]) + len(vindr_sample) + len(nih[:n_nih])

    _mimic(out, studies, sample, mimic_boxes, n.ms_cxr_rows, rng)
    for im in vindr:
        vindr_boxes.setdefault(im.image_id, lesion_boxes(im.lesions, im.width, im.height, im.seed))
    write_vindr.write_annotations(out, vindr, vindr_boxes, rng["vindr"])
    for im in (im for im in nih if im.has_boxes):
        nih_boxes.setdefault(im.index, lesion_boxes(im.lesions, im.size, im.size, im.seed))
    write_nih.write_tables(out, nih, nih_boxes, rng["nih"])
    (out / MARKER).write_text(json.dumps(marker(cfg), sort_keys=True) + "\n")
    return {
        "mimic_studies": len(studies), "mimic_images": sum(len(s.images) for s in studies),
        "scene_graphs": sum(im.frontal for s in studies for im in s.images), "ms_cxr_rows": n.ms_cxr_rows,
        "vindr_images": len(vindr), "nih_images": len(nih),
        "rendered_images": rendered,
        "seconds": round(time.perf_counter() - t0, 1),
    }
