"""Sampling the ground truth of synthetic studies: patients, images, lesions and the report sentences about them.

Everything downstream (pixels, labels, scene graphs, grounded phrases) is derived from these records, so the
sources agree with each other the way the real datasets do.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from preprocessing.classes import CHEXPERT_14
from preprocessing.synth.catalog import CATALOG, NORMAL_SENTENCES, cig_regions, negation_regions, size_word
from preprocessing.synth.phantom import Lesion

LESION_COUNT_P = (0.35, 0.35, 0.2, 0.1)        # probability of 0, 1, 2, 3 lesions per study
UNCERTAIN_P = 0.1
BILATERAL_EFFUSION_P = 0.2
FRONTAL_SIZES = ((2544, 3056), (3056, 2544), (2539, 3050), (2832, 2836), (3050, 2539), (2022, 2022))
SPLIT_P = {"train": 0.7, "validate": 0.15, "test": 0.15}
REPORT_STYLES = ("standard", "impression_only", "headerless", "wet_read", "addendum")
REPORT_STYLE_P = (0.6, 0.15, 0.1, 0.08, 0.07)
_RANK = {1.0: 2, -1.0: 1, 0.0: 0}   # a positive mention outranks a hedge, which outranks a negation


@dataclass(frozen=True)
class Sentence:
    """One report sentence and what it asserts."""

    text: str
    kind: str | None            # lesion kind, None for "normal" sentences
    polarity: str               # "yes" | "no" | "uncertain" | "normal"
    lesions: tuple[int, ...]    # indices into StudyTruth.lesions described by the sentence
    regions: tuple[str, ...]    # Chest ImaGenome regions the sentence is attached to


@dataclass(frozen=True)
class ImageTruth:
    dicom_id: str
    view: str                   # PA | AP | LATERAL | LL | "" (missing ViewPosition)
    width: int
    height: int
    seed: int                   # phantom rendering seed

    @property
    def frontal(self) -> bool:
        return self.view in ("PA", "AP")


@dataclass
class StudyTruth:
    subject_id: int
    study_id: int
    split: str                  # MIMIC split name: train | validate | test
    study_date: int
    study_time: float
    lesions: list[Lesion]
    findings: list[Sentence]
    impression: list[Sentence]
    images: list[ImageTruth] = field(default_factory=list)
    report_style: str = "standard"   # standard | impression_only | headerless | wet_read | addendum
    has_chexpert_row: bool = True

    @property
    def sentences(self) -> list[Sentence]:
        return self.findings + self.impression

    def chexpert(self) -> dict[str, float]:
        """CheXpert labels as the labeler would read this report: 1 positive, -1 uncertain, 0 negated."""
        labels: dict[str, float] = {}
        for s in self.sentences:
            if s.kind is None:
                continue
            value = {"yes": 1.0, "uncertain": -1.0, "no": 0.0}[s.polarity]
            for name in CATALOG[s.kind].chexpert:
                if name not in labels or _RANK[value] > _RANK[labels[name]]:
                    labels[name] = value
        if not any(v != 0.0 for v in labels.values()):
            labels["No Finding"] = 1.0
        return {k: labels[k] for k in CHEXPERT_14 if k in labels}


def hex_id(rng: np.random.Generator, groups: int, width: int = 8) -> str:
    """Random lowercase hex groups joined by '-' (MIMIC dicom_id: 5 x 8; VinDr image_id: 1 x 32)."""
    return "-".join("".join(f"{d:x}" for d in rng.integers(0, 16, width)) for _ in range(groups))


def sample_lesions(rng: np.random.Generator, n: int) -> list[Lesion]:
    """Distinct lesions for one image; bilateral effusions appear as a right and a left lesion."""
    kinds = list(CATALOG)
    lesions: list[Lesion] = []
    used: set[tuple[str, str | None]] = set()
    while len(lesions) < n:
        kind = kinds[int(rng.integers(len(kinds)))]
        spec = CATALOG[kind]
        side = ("right", "left")[int(rng.integers(2))] if spec.sided else None
        if kind in ("cardiomegaly", "edema") and any(k == kind for k, _ in used):
            continue
        if (kind, side) in used:
            continue
        zone = spec.zones[int(rng.integers(len(spec.zones)))] if spec.zones else None
        severity = float(rng.uniform(0.55, 1.0))
        lesions.append(Lesion(kind=kind, side=side, zone=zone, severity=severity))
        used.add((kind, side))
        if kind == "pleural_effusion" and rng.random() < BILATERAL_EFFUSION_P:
            other = "left" if side == "right" else "right"
            if (kind, other) not in used:
                lesions.append(Lesion(kind=kind, side=other, zone=zone, severity=severity))
                used.add((kind, other))
    return lesions


def _fill(template: str, lesion: Lesion) -> str:
    side = lesion.side or ""
    size = size_word(lesion.severity)
    text = template.format(side=side, Side=side.capitalize(), zone=lesion.zone or "", size=size, Size=size.capitalize())
    return text[0].upper() + text[1:]


def describe(rng: np.random.Generator, lesions: list[Lesion]) -> tuple[list[Sentence], list[Sentence]]:
    """Findings and impression sentences for a lesion list, with negations of some absent kinds."""
    findings: list[Sentence] = []
    done: set[int] = set()
    for i, lesion in enumerate(lesions):
        if i in done:
            continue
        spec = CATALOG[lesion.kind]
        partner = next((j for j, o in enumerate(lesions) if j != i and j not in done and o.kind == lesion.kind
                        and lesion.kind == "pleural_effusion"), None)
        if partner is not None:
            text = f"{size_word(lesion.severity).capitalize()} bilateral pleural effusions."
            regions = cig_regions(lesion.kind, "right", None) + cig_regions(lesion.kind, "left", None)
            findings.append(Sentence(text, lesion.kind, "yes", (i, partner), regions))
            done.update((i, partner))
            continue
        uncertain = rng.random() < UNCERTAIN_P
        templates = spec.uncertain if uncertain else spec.positive
        text = _fill(templates[int(rng.integers(len(templates)))], lesion)
        findings.append(Sentence(text, lesion.kind, "uncertain" if uncertain else "yes", (i,),
                                 cig_regions(lesion.kind, lesion.side, lesion.zone)))
        done.add(i)
    present_labels = {name for lesion in lesions for name in CATALOG[lesion.kind].chexpert}
    # a kind is only denied when it shares no CheXpert label with a present one ("no opacity" beside consolidation
    # would contradict the image)
    absent = [k for k in CATALOG if not present_labels & set(CATALOG[k].chexpert)]
    for k in rng.permutation(absent)[: int(rng.integers(1, 4))]:
        neg = CATALOG[k].negative
        findings.append(Sentence(neg[int(rng.integers(len(neg)))], str(k), "no", (), negation_regions(str(k))))
    if not lesions:
        normal = NORMAL_SENTENCES[int(rng.integers(len(NORMAL_SENTENCES)))]
        return findings, [Sentence(normal, None, "normal", (), ())]
    first = next(s for s in findings if s.polarity != "no")
    lesion = lesions[first.lesions[0]]
    others = [t for t in (CATALOG[lesion.kind].uncertain if first.polarity == "uncertain" else CATALOG[lesion.kind].positive)
              if _fill(t, lesion) != first.text]
    if not others or first.lesions != (first.lesions[0],):
        return findings, [first]
    text = _fill(others[int(rng.integers(len(others)))], lesion)
    return findings, [Sentence(text, first.kind, first.polarity, first.lesions, first.regions)]


def _study_time(rng: np.random.Generator) -> float:
    """HHMMSS.fff as MIMIC stores it: a float, so leading zeros vanish (73012.5 = 07:30:12.5)."""
    h, m, sec = int(rng.integers(24)), int(rng.integers(60)), int(rng.integers(60))
    return round(h * 10000 + m * 100 + sec + float(rng.integers(1000)) / 1000, 3)


def sample_studies(rng: np.random.Generator, n_studies: int, image_scale: float) -> list[StudyTruth]:
    """MIMIC-CXR studies: 1-3 per patient, a frontal image each, often a lateral one, patient-level splits."""
    studies: list[StudyTruth] = []
    patient = 0
    stride = max(1, 9_999_999 // n_studies)
    while len(studies) < n_studies:
        subject_id = 10000000 + patient * stride + int(rng.integers(0, stride))  # stays within 1xxxxxxx
        patient += 1
        split = str(rng.choice(list(SPLIT_P), p=list(SPLIT_P.values())))
        base_date = 21500101 + int(rng.integers(0, 50)) * 10000 + int(rng.integers(1, 12)) * 100
        for visit in range(int(rng.integers(1, 4))):
            if len(studies) == n_studies:
                break
            lesions = sample_lesions(rng, int(rng.choice(4, p=LESION_COUNT_P)))
            findings, impression = describe(rng, lesions)
            study = StudyTruth(
                subject_id=subject_id, study_id=50000001 + len(studies), split=split,
                study_date=base_date + visit + 1, study_time=_study_time(rng),
                lesions=lesions, findings=findings, impression=impression,
                report_style=str(rng.choice(REPORT_STYLES, p=REPORT_STYLE_P)),
                has_chexpert_row=len(studies) != 1,  # the real file lacks a row for a few studies
            )
            w, h = FRONTAL_SIZES[int(rng.integers(len(FRONTAL_SIZES)))]
            w, h = max(64, round(w * image_scale)), max(64, round(h * image_scale))
            view = "" if len(studies) == 2 else ("PA", "AP")[int(rng.integers(2))]  # one image lacks ViewPosition
            study.images.append(ImageTruth(hex_id(rng, 5), view, w, h, int(rng.integers(2**31))))
            if rng.random() < 0.5:
                study.images.append(ImageTruth(hex_id(rng, 5), ("LATERAL", "LL")[int(rng.random() < 0.3)], w, h,
                                               int(rng.integers(2**31))))
            studies.append(study)
    return studies
