"""The MIMIC-CXR cohort at its real size: exact patient, study, image and per-view counts, drawn vectorized.

The demo sampler (`truth.sample_studies`) draws one study at a time, which takes minutes at 227,835 studies. Here the
layout (ids, dates, splits, views, sizes) is drawn as arrays and only what a report says (lesions, sentences) is
sampled per study, with the demo's own `sample_lesions` and `describe`, so labels, reports and scene graphs agree
with each other exactly as in the demo.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from preprocessing.classes import FRONTAL_VIEWS
from preprocessing.synth.scale import MIMIC_SPLIT_IMAGES, ScaleCounts
from preprocessing.synth.truth import (
    FRONTAL_SIZES, LESION_COUNT_P, REPORT_STYLE_P, REPORT_STYLES, ImageTruth, StudyTruth, describe, sample_lesions,
)

STUDIES_PER_PATIENT_SKEW = 0.5   # gamma shape of patients' weights: most have a few studies, some dozens
MEAN_DAYS_BETWEEN_STUDIES = 90
FIRST_DAY, YEARS = np.datetime64("2110-01-01"), 90   # shifted dates, as the release's (21xx)


@dataclass(frozen=True)
class Layout:
    """Per study (sorted by subject_id, study_id as the metadata file is) and per image, as plain lists."""

    subject_id: list[int]
    study_id: list[int]
    split: list[str]
    study_date: list[int]
    study_time: list[float]
    size: list[tuple[int, int]]      # (width, height) of the study's images
    first_image: list[int]           # images of study i: first_image[i] .. first_image[i + 1] - 1
    dicom_id: list[str]
    view: list[str]
    seed: list[int]                  # phantom seed, for the images that are rendered


def hex_ids(rng: np.random.Generator, n: int) -> list[str]:
    """MIMIC dicom_ids: 5 groups of 8 lowercase hex digits joined by '-'."""
    return ["-".join(f"{w:08x}" for w in row) for row in rng.integers(0, 2**32, size=(n, 5), dtype=np.uint64).tolist()]


def spread_ids(rng: np.random.Generator, n: int, low: int, span: int) -> np.ndarray:
    """n distinct ids in [low, low + span), ascending: one at a random place in each of n equal strides."""
    stride = span // n
    return low + np.arange(n, dtype=np.int64) * stride + rng.integers(0, stride, n)


def group_sizes(rng: np.random.Generator, groups: int, items: int, skew: float | None) -> np.ndarray:
    """`items` spread over `groups`, each getting at least one; heavy-tailed when `skew` (a gamma shape) is given."""
    p = None
    if skew is not None:
        p = rng.gamma(skew, size=groups)
        p /= p.sum()
    return 1 + np.bincount(rng.choice(groups, items - groups, p=p), minlength=groups)


def assign_views(rng: np.random.Generator, views: dict[str, int], first_image: np.ndarray, n_images: int) -> list[str]:
    """Exactly `views[v]` images of each view; every study's first image is frontal or lacks ViewPosition."""
    pool = np.repeat(np.array(list(views), dtype=object), list(views.values()))
    can_lead = np.flatnonzero(np.isin(pool, [*FRONTAL_VIEWS, ""]))
    if can_lead.size < first_image.size:
        raise ValueError(f"{can_lead.size} frontal views cannot lead {first_image.size} studies")
    lead = rng.permutation(can_lead)[: first_image.size]
    left = np.ones(n_images, bool)            # pool entries not leading a study
    left[lead] = False
    later = np.ones(n_images, bool)           # images that are not a study's first
    later[first_image] = False
    out = np.empty(n_images, dtype=object)
    out[first_image] = pool[lead]
    out[later] = pool[rng.permutation(np.flatnonzero(left))]
    return out.tolist()


def _dates(rng: np.random.Generator, per_patient: np.ndarray) -> np.ndarray:
    """YYYYMMDD per study: a first visit per patient, then gaps of about three months (same-day repeats happen)."""
    n = int(per_patient.sum())
    starts = np.concatenate([[0], np.cumsum(per_patient)[:-1]])
    gaps = rng.geometric(1 / MEAN_DAYS_BETWEEN_STUDIES, n) - 1
    gaps[starts] = 0
    since_first = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[starts], per_patient)
    first = rng.integers(0, YEARS * 365, per_patient.size)
    days = FIRST_DAY + (np.repeat(first, per_patient) + since_first).astype("timedelta64[D]")
    return np.char.replace(np.datetime_as_string(days, unit="D"), "-", "").astype(np.int64)


def sample_layout(rng: np.random.Generator, counts: ScaleCounts, image_scale: float) -> Layout:
    """Ids, dates, patient-level splits, views and sizes with the exact counts of `counts`."""
    n_pat, n_st, n_im = counts.mimic_patients, counts.mimic_studies, counts.mimic_images
    per_patient = group_sizes(rng, n_pat, n_st, STUDIES_PER_PATIENT_SKEW)
    patient = np.repeat(np.arange(n_pat), per_patient)
    study_id = rng.permutation(spread_ids(rng, n_st, 50_000_000, 10_000_000))
    order = np.lexsort((study_id, patient))         # by subject, then study_id, as the release sorts
    per_study = group_sizes(rng, n_st, n_im, None)
    first_image = np.concatenate([[0], np.cumsum(per_study)[:-1]])
    split_names = list(MIMIC_SPLIT_IMAGES)
    shares = np.array(list(MIMIC_SPLIT_IMAGES.values())) / sum(MIMIC_SPLIT_IMAGES.values())
    split = np.array(split_names)[rng.choice(len(split_names), n_pat, p=shares)][patient]
    h, m, s, ms = (rng.integers(0, k, n_st) for k in (24, 60, 60, 1000))
    sizes = [(max(64, round(w * image_scale)), max(64, round(h_ * image_scale)))
             for w, h_ in np.array(FRONTAL_SIZES)[rng.integers(len(FRONTAL_SIZES), size=n_st)].tolist()]
    return Layout(
        subject_id=np.repeat(spread_ids(rng, n_pat, 10_000_000, 9_999_999), per_patient).tolist(),
        study_id=study_id[order].tolist(), split=split.tolist(), study_date=_dates(rng, per_patient).tolist(),
        study_time=np.round(h * 10000 + m * 100 + s + ms / 1000, 3).tolist(), size=sizes,
        first_image=first_image.tolist(), dicom_id=hex_ids(rng, n_im),
        view=assign_views(rng, counts.mimic_views, first_image, n_im), seed=rng.integers(2**31, size=n_im).tolist(),
    )


def sample_cohort(layout: Layout, rng: np.random.Generator, unlabelled: int) -> list[StudyTruth]:
    """One StudyTruth per study of the layout; `unlabelled` random studies get no chexpert/negbio row."""
    n = len(layout.study_id)
    n_lesions = rng.choice(len(LESION_COUNT_P), n, p=LESION_COUNT_P).tolist()
    styles = np.array(REPORT_STYLES)[rng.choice(len(REPORT_STYLES), n, p=REPORT_STYLE_P)].tolist()
    no_row = set(rng.choice(n, unlabelled, replace=False).tolist())
    ends = [*layout.first_image[1:], len(layout.dicom_id)]
    studies = []
    for i in range(n):
        lesions = sample_lesions(rng, n_lesions[i])
        findings, impression = describe(rng, lesions)
        w, h = layout.size[i]
        images = [ImageTruth(layout.dicom_id[j], layout.view[j], w, h, layout.seed[j])
                  for j in range(layout.first_image[i], ends[i])]
        studies.append(StudyTruth(
            subject_id=layout.subject_id[i], study_id=layout.study_id[i], split=layout.split[i],
            study_date=layout.study_date[i], study_time=layout.study_time[i], lesions=lesions, findings=findings,
            impression=impression, images=images, report_style=styles[i], has_chexpert_row=i not in no_row,
        ))
    return studies
