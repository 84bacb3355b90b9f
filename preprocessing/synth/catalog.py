"""What each synthetic lesion kind means in every dataset's vocabulary, and how a report says it.

One table keeps the image, the labels of five datasets, the scene-graph attributes and the report sentences
consistent with each other: a lesion drawn in the phantom is named, labelled and described from here.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LesionSpec:
    """Names of one lesion kind across datasets; None where a dataset has no such class."""

    chexpert: tuple[str, ...]
    vindr: tuple[str, ...]            # box classes (one box per class, same coordinates)
    vindr_global: tuple[str, ...]     # image-level VinDr labels implied by the lesion
    nih: str | None
    ms_cxr: str | None
    cig_findings: tuple[str, ...]     # Chest ImaGenome anatomicalfinding names
    zones: tuple[str, ...]            # lung zones it may be placed in ("" = not zonal)
    sided: bool                       # placed in one lung (else central / bilateral)
    positive: tuple[str, ...]         # sentence templates: {side} {Side} {zone} {size}
    negative: tuple[str, ...]         # sentences denying it (unsided)
    uncertain: tuple[str, ...]        # hedged sentences -> CheXpert -1.0


CATALOG: dict[str, LesionSpec] = {
    "pleural_effusion": LesionSpec(
        chexpert=("Pleural Effusion",), vindr=("Pleural effusion",), vindr_global=(), nih="Effusion",
        ms_cxr="Pleural Effusion", cig_findings=("pleural effusion", "costophrenic angle blunting"),
        zones=("lower",), sided=True,
        positive=("There is a {size} {side} pleural effusion.", "{Size} {side} pleural effusion.",
                  "{Side} pleural effusion with blunting of the costophrenic angle."),
        negative=("No pleural effusion.", "There is no pleural effusion.", "No pleural effusions are seen."),
        uncertain=("Possible small {side} pleural effusion.",),
    ),
    "cardiomegaly": LesionSpec(
        chexpert=("Cardiomegaly",), vindr=("Cardiomegaly",), vindr_global=(), nih="Cardiomegaly",
        ms_cxr="Cardiomegaly", cig_findings=("enlarged cardiac silhouette",), zones=(), sided=False,
        positive=("The heart is enlarged.", "{Size} cardiomegaly.", "The cardiac silhouette is enlarged, unchanged."),
        negative=("Heart size is normal.", "The cardiac silhouette is within normal limits.",
                  "Normal heart size."),
        uncertain=("The heart is possibly mildly enlarged.",),
    ),
    "consolidation": LesionSpec(
        chexpert=("Consolidation", "Lung Opacity"), vindr=("Consolidation",), vindr_global=("Pneumonia",),
        nih="Consolidation", ms_cxr="Consolidation", cig_findings=("consolidation", "lung opacity"),
        zones=("upper", "mid", "lower"), sided=True,
        positive=("Consolidation in the {side} {zone} lung zone.", "{Size} {side} {zone} lung consolidation.",
                  "There is dense consolidation in the {side} {zone} lung."),
        negative=("No focal consolidation.", "There is no focal consolidation."),
        uncertain=("Possible consolidation in the {side} {zone} lung.",),
    ),
    "atelectasis": LesionSpec(
        chexpert=("Atelectasis",), vindr=("Atelectasis",), vindr_global=(), nih="Atelectasis",
        ms_cxr="Atelectasis", cig_findings=("atelectasis", "linear/patchy atelectasis"),
        zones=("lower", "mid"), sided=True,
        positive=("Linear atelectasis in the {side} {zone} lung zone.", "Plate-like atelectasis in the {side} {zone} lung.",
                  "{Side} {zone} lung atelectasis."),
        negative=("No atelectasis.",),
        uncertain=("Minimal {side} {zone} lung atelectasis is possible.",),
    ),
    "nodule": LesionSpec(
        chexpert=("Lung Lesion",), vindr=("Nodule/Mass",), vindr_global=(), nih="Nodule", ms_cxr=None,
        cig_findings=("lung lesion", "mass/nodule (not otherwise specified)"), zones=("upper", "mid", "lower"),
        sided=True,
        positive=("There is a {size} nodule in the {side} {zone} lung zone.", "{Size} {side} {zone} lung nodule."),
        negative=("No suspicious pulmonary nodules.", "No pulmonary nodules or masses."),
        uncertain=("Possible nodule in the {side} {zone} lung.",),
    ),
    "mass": LesionSpec(
        chexpert=("Lung Lesion",), vindr=("Nodule/Mass",), vindr_global=("Lung tumor",), nih="Mass", ms_cxr=None,
        cig_findings=("lung lesion", "mass/nodule (not otherwise specified)"), zones=("upper", "mid", "lower"),
        sided=True,
        positive=("There is a {size} mass in the {side} {zone} lung zone.", "{Size} {side} {zone} lung mass."),
        negative=("No pulmonary masses.",),
        uncertain=("Possible mass in the {side} {zone} lung.",),
    ),
    "pneumothorax": LesionSpec(
        chexpert=("Pneumothorax",), vindr=("Pneumothorax",), vindr_global=(), nih="Pneumothorax",
        ms_cxr="Pneumothorax", cig_findings=("pneumothorax",), zones=("upper",), sided=True,
        positive=("There is a {size} {side} apical pneumothorax.", "{Size} {side} pneumothorax.",
                  "{Side} apical pneumothorax is noted."),
        negative=("No pneumothorax.", "There is no pneumothorax."),
        uncertain=("Possible tiny {side} apical pneumothorax.",),
    ),
    "edema": LesionSpec(
        chexpert=("Edema",), vindr=("Edema",), vindr_global=(), nih="Edema", ms_cxr="Edema",
        cig_findings=("pulmonary edema/hazy opacity",), zones=(), sided=False,
        positive=("{Size} pulmonary edema.", "Bilateral perihilar haziness consistent with pulmonary edema."),
        negative=("No pulmonary edema.", "There is no pulmonary vascular congestion or edema."),
        uncertain=("Possible mild pulmonary edema.",),
    ),
    "opacity": LesionSpec(
        chexpert=("Lung Opacity",), vindr=("Lung Opacity", "Infiltration"), vindr_global=(), nih="Infiltration",
        ms_cxr="Lung Opacity", cig_findings=("lung opacity", "airspace opacity"), zones=("upper", "mid", "lower"),
        sided=True,
        positive=("Patchy opacity in the {side} {zone} lung zone.", "Ill-defined {side} {zone} lung opacity."),
        negative=("No focal airspace opacity.",),
        uncertain=("Questionable opacity in the {side} {zone} lung.",),
    ),
}

SIZE_WORDS: tuple[tuple[float, str], ...] = ((0.7, "small"), (0.85, "moderate"), (1.01, "large"))
NORMAL_SENTENCES: tuple[str, ...] = (
    "No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.", "The lungs are clear.",
)


def size_word(severity: float) -> str:
    """Map a severity in [0.5, 1] to the adjective a radiologist would use."""
    return next(word for limit, word in SIZE_WORDS if severity < limit)


def cig_regions(kind: str, side: str | None, zone: str | None) -> tuple[str, ...]:
    """Chest ImaGenome regions a sentence about this lesion is attached to (most specific first)."""
    if kind == "cardiomegaly":
        return ("cardiac silhouette",)
    if kind == "edema" and side is None:
        return ("right lung", "left lung", "right hilar structures", "left hilar structures")
    if kind == "edema":
        return (f"{side} lung", f"{side} hilar structures")
    if kind == "pleural_effusion":
        return (f"{side} costophrenic angle", f"{side} lower lung zone", f"{side} lung")
    if kind == "pneumothorax":
        return (f"{side} apical zone", f"{side} lung")
    return (f"{side} {zone} lung zone", f"{side} lung")


def negation_regions(kind: str) -> tuple[str, ...]:
    """Regions an unsided negative sentence ("No pleural effusion.") talks about."""
    if kind == "cardiomegaly":
        return ("cardiac silhouette",)
    if kind == "pleural_effusion":
        return ("right costophrenic angle", "left costophrenic angle")
    return ("right lung", "left lung")
