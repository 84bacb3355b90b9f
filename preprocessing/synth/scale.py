"""How big the real releases are, and the same shapes at a fraction of that size (`chex synth --scale`).

The counts are the ones ../specs/dataset-formats.md gives for each release; a fraction scales every count and
rounds it, so a small tree keeps the proportions (views, labelled studies, boxed images) of the real one.
"""
from __future__ import annotations

from dataclasses import dataclass

# MIMIC-CXR-JPG metadata: images per ViewPosition ("" = missing), 377,110 in all
MIMIC_VIEWS: dict[str, int] = {
    "AP": 147_173, "PA": 96_161, "LATERAL": 82_853, "LL": 35_133, "": 15_769, "PA LLD": 4, "LAO": 3, "RAO": 3,
    "AP AXIAL": 2, "AP LLD": 2, "XTABLE LATERAL": 2, "AP RLD": 2, "SWIMMERS": 1, "PA RLD": 1, "LPO": 1,
}
MIMIC_SPLIT_IMAGES = {"train": 368_960, "validate": 2_991, "test": 5_159}
FULL = {
    "mimic_patients": 65_379, "mimic_studies": 227_835, "mimic_images": sum(MIMIC_VIEWS.values()),
    "chexpert_missing": 8,          # studies without a chexpert/negbio row
    "ms_cxr_rows": 1_162, "vindr_train": 15_000, "vindr_test": 3_000,
    "nih_images": 112_120, "nih_box_images": 880, "nih_box_rows": 984,
}


@dataclass(frozen=True)
class ScaleCounts:
    """Rows each table gets at one scale (names as in FULL) and the MIMIC images per view, summing to the images."""

    mimic_patients: int
    mimic_studies: int
    mimic_images: int
    chexpert_missing: int
    ms_cxr_rows: int
    vindr_train: int
    vindr_test: int
    nih_images: int
    nih_box_images: int
    nih_box_rows: int
    mimic_views: dict[str, int]


def apportion(weights: dict[str, int], total: int) -> dict[str, int]:
    """Integer shares of `total` proportional to `weights` that sum to it exactly (largest remainder, ties by order)."""
    whole = sum(weights.values())
    exact = {k: w * total / whole for k, w in weights.items()}
    out = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(weights, key=lambda k: (-(exact[k] - out[k]), list(weights).index(k)))
    for k in by_remainder[: total - sum(out.values())]:
        out[k] += 1
    return out


def counts_at(fraction: float) -> ScaleCounts:
    """Counts at `fraction` of the real size (1.0 = the releases): each rounded and at least 1, except the unlabelled
    studies (8 in the release), which may round to none."""
    if not 0 < fraction <= 1:
        raise ValueError(f"scale fraction must be within (0, 1], got {fraction}")
    n = {k: max(1, round(v * fraction)) for k, v in FULL.items()}
    n["chexpert_missing"] = min(round(FULL["chexpert_missing"] * fraction), n["mimic_studies"] - 1)
    return ScaleCounts(**n, mimic_views=apportion(MIMIC_VIEWS, n["mimic_images"]))
