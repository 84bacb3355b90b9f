"""Prompt strings for every class vocabulary (chex-reference.md §3) and the YAML prompt sets used for reports."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from chex_model.typed_config import ConfigError, from_dict
from preprocessing.classes import (
    CHEXPERT_14,
    CIG_ANATOMICAL_FINDINGS_43,
    CIG_ANATOMY_29,
    CIG_DISEASES_10,
    MS_CXR_8,
    NIH_BOX_8,
    VINDR_LOCAL_22,
)

PROMPT_SET_DIR = Path(__file__).resolve().parent / "prompt_sets"
_ACRONYMS = {"ild": "ILD", "copd": "COPD", "svc": "SVC", "pa": "PA"}


def _sentence_case(name: str) -> str:
    words = [_ACRONYMS.get(w, w) for w in name.replace("/", " or ").split()]
    text = " ".join(words)
    return text[0].upper() + text[1:]


def negative(prompt: str) -> str:
    """ "Pleural effusion" -> "No pleural effusion" (acronyms keep their case)."""
    words = [w if any(c.isupper() for c in w[1:]) else w.lower() for w in prompt.split()]
    return " ".join(["No", *words])


def chexpert_prompts() -> dict[str, tuple[str, str]]:
    special = {"No Finding": ("Normal", "Abnormal"), "Pleural Other": ("Pleural pathology", "No pleural pathology")}
    out = {}
    for name in CHEXPERT_14:
        pos = special.get(name, (_sentence_case(name.lower()), ""))[0]
        out[name] = (pos, special[name][1] if name in special else negative(pos))
    return out


def cig_finding_prompts() -> dict[str, tuple[str, str]]:
    out = {}
    for name in CIG_ANATOMICAL_FINDINGS_43 + CIG_DISEASES_10:
        pos = _sentence_case(name)
        neg = "No mass or nodule" if name.startswith("mass/nodule") else negative(pos)
        out[name] = (pos, neg)
    return out


def vindr_prompts() -> dict[str, tuple[str, str]]:
    special = {"Enlarged PA": "Enlarged pulmonary artery (PA)", "ILD": "Interstitial lung disease (ILD)",
               "Nodule/Mass": "Mass or nodule"}
    return {name: (special.get(name, name), negative(special.get(name, name))) for name in VINDR_LOCAL_22}


def ms_cxr_prompts() -> dict[str, tuple[str, str]]:
    return {name: (name, negative(name)) for name in MS_CXR_8}


def nih_prompts() -> dict[str, tuple[str, str]]:
    special = {"Effusion": "Effusion (pleural or other)"}
    return {name: (special.get(name, name), negative(special.get(name, name))) for name in NIH_BOX_8}


def box_prompt(name: str) -> str:
    """Prompt used to *detect* a class (the reference prompts anatomy rather than findings for a few classes)."""
    return {"Cardiomegaly": "Cardiac silhouette", "Effusion": "Pleural effusion", "Nodule": "Lung nodule"}.get(name, name)


def anatomy_prompts() -> dict[str, str]:
    return {name: _sentence_case(name) for name in CIG_ANATOMY_29}


@dataclass(frozen=True)
class MultiRegion:
    name: str
    members: tuple[str, ...]  # region names whose boxes the prompt's boxes are matched to
    prompts: tuple[str, ...]  # the first is the canonical query, the rest training synonyms


@functools.cache
def _anatomy_vocabulary() -> tuple[dict[str, tuple[str, ...]], tuple[MultiRegion, ...]]:
    data = yaml.safe_load((PROMPT_SET_DIR / "anatomy.yaml").read_text())
    regions = {name: tuple(prompts) for name, prompts in data["regions"].items()}
    multi = tuple(MultiRegion(name, tuple(m["members"]), tuple(m["prompts"])) for name, m in data["multi_regions"].items())
    if set(regions) != set(CIG_ANATOMY_29) or any(p[0] != anatomy_prompts()[n] for n, p in regions.items()):
        raise ConfigError("anatomy.yaml must list every Chest ImaGenome region, its canonical prompt first")
    if any(set(m.members) - set(regions) for m in multi):
        raise ConfigError("anatomy.yaml: a multi-region member is not a Chest ImaGenome region")
    return regions, multi


def anatomy_synonyms() -> dict[str, tuple[str, ...]]:
    """Region name -> its prompts, canonical first (the reference's training synonyms, ``cig_anat_synonym``)."""
    return dict(_anatomy_vocabulary()[0])


def multi_regions() -> tuple[MultiRegion, ...]:
    """The multi-region prompts (both lungs, upper / middle / lower / apical zones) with their member regions."""
    return _anatomy_vocabulary()[1]


@dataclass
class Positivity:
    positive: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)
    threshold: float = 0.5


@dataclass
class Dedup:
    strict: float = 0.95  # always drop one of two sentences at least this similar ((cos + 1) / 2, CLIP text)
    loose: float = 0.9  # ... and at least this similar while more than `max_sentences` remain
    max_sentences: int = 10


@dataclass
class PromptSet:
    """Queries of a grounded report. Anatomy queries are answered only when the ROI token is classified abnormal
    (sigmoid(cos(f, mean positive) - cos(f, mean negative)) >= threshold, or the model's calibration of it).
    Pathology queries are always answered, unless ``pathology_negative`` gives one "No X" prompt per query: then each
    is classified against its negative first, and answered from its own prompt's token when present, from its
    negative prompt's token when absent, and not at all when the model cannot tell (between the two thresholds), so
    that every sentence agrees with the classification."""

    name: str = ""
    pathology: list[str] = field(default_factory=list)
    pathology_negative: list[str] = field(default_factory=list)
    pathology_threshold: float = 0.5  # P(present) from which a gated pathology query is decoded from its own prompt
    pathology_absent_below: float = 0.1  # ... and below which from its negative; in between it is not answered
    normal_query: str = ""  # the pathology query that states no finding: present only if every other one is absent
    anatomy: list[str] = field(default_factory=list)
    positivity: Positivity = field(default_factory=Positivity)
    dedup: Dedup = field(default_factory=Dedup)
    calibrated: bool = True  # use the model's presence calibration where it has one (False: the reference's rules)


def load_prompt_set(name_or_path: str | Path = "report") -> PromptSet:
    """A built-in set by name (``chex_model/prompt_sets/<name>.yaml``) or any YAML file of the same shape."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROMPT_SET_DIR / f"{name_or_path}.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read prompt set {path}: {exc}") from exc
    ps = from_dict(PromptSet, data)
    if not ps.pathology and not ps.anatomy:
        raise ConfigError(f"prompt set {path} has no queries")
    if not 0 <= ps.pathology_absent_below <= ps.pathology_threshold:
        raise ConfigError(f"prompt set {path}: need 0 <= pathology_absent_below <= pathology_threshold")
    if ps.normal_query and ps.normal_query not in ps.pathology:
        raise ConfigError(f"prompt set {path}: normal_query {ps.normal_query!r} is not one of its pathology queries")
    if ps.pathology_negative and len(ps.pathology_negative) != len(ps.pathology):
        raise ConfigError(f"prompt set {path}: pathology_negative needs one prompt per pathology query "
                          f"({len(ps.pathology)}), got {len(ps.pathology_negative)}")
    if ps.anatomy and not (ps.positivity.positive and ps.positivity.negative):
        raise ConfigError(f"prompt set {path}: anatomy queries need positivity.positive and positivity.negative prompts")
    return ps
