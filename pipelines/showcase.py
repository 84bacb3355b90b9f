"""A showcase that a new user can judge at a glance: a few abnormal MIMIC-CXR test images, each with its true
report, the model's grounded report and free-text prompts answered with boxes (IoU against the true box where the
row has one), drawn into one picture per image, and rendered as console text or markdown.

Boxes are normalized (x1, y1, x2, y2) of the stored square image, the frame of the rows' ``region_boxes``.
"""
from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from chex_model import box_ops
from chex_model.chex import ChEX
from chex_model.inference import PreparedImage, Report, prepare_image, query, report
from chex_model.prompts import anatomy_synonyms, chexpert_prompts, cig_finding_prompts, load_prompt_set, multi_regions
from evaluation.data import Row, load_rows, report_text, xyxy
from evaluation.figures import example_picture
from preprocessing.classes import CIG_ANATOMICAL_FINDINGS_43, CIG_DISEASES_10
from preprocessing.image_io import decode_png

DEFAULT_PROMPTS = ("Left lung", "Bilateral")  # each image also gets a prompt for one of its own true findings
FALLBACK_FINDING = "Cardiomegaly"
NO_FINDING = "No Finding"
CIG_FINDINGS = CIG_ANATOMICAL_FINDINGS_43 + CIG_DISEASES_10


@dataclass(frozen=True)
class GroundedSentence:
    query: str
    box: list[float]  # xyxy
    sentence: str
    finding: bool  # False: a statement of absence (its box shows where the model looked, not a finding)


@dataclass(frozen=True)
class PromptAnswer:
    prompt: str
    box: list[float]  # the detector's best box, xyxy clipped to the image
    score: float | None
    sentence: str
    iou: float | None  # with the row's true box of the prompt (best over a multi-region's members); None: none known


@dataclass(frozen=True)
class ShowcaseImage:
    sample_id: str
    image_id: str
    true_findings: list[str]
    true_report: str
    report: list[GroundedSentence]
    undetermined: list[str]  # pathology queries the model could call neither way
    answers: list[PromptAnswer]
    picture: Path


@dataclass(frozen=True)
class Showcase:
    model_dir: Path
    images: list[ShowcaseImage]


def true_findings(row: Row) -> list[str]:
    """The row's positive CheXpert labels, then its positive Chest ImaGenome findings not already named (case
    ignored): what a reader of the true report would call abnormal. Empty for a normal image."""
    names = [lab["name"] for lab in row.get("labels") or [] if lab["value"] == 1 and lab["name"] != NO_FINDING]
    cig = {lab["finding"] for lab in row.get("region_labels") or [] if lab["value"] == 1}
    seen = {n.lower() for n in names}
    return names + [f for f in CIG_FINDINGS if f in cig and f.lower() not in seen]


def pick_rows(rows: Sequence[Row], n: int) -> list[Row]:
    """The ``n`` abnormal rows with the most true findings, ties in the given (sample id) order: deterministic, and
    the richest reports show the most of what the model can say."""
    abnormal = [r for r in rows if true_findings(r)]
    return sorted(abnormal, key=lambda r: -len(true_findings(r)))[:n]


def finding_prompt(row: Row) -> str:
    """The prompt of the row's first true finding (CheXpert wording first, as the report's pathology queries), or
    Cardiomegaly when the row names none."""
    prompts = {**cig_finding_prompts(), **chexpert_prompts()}
    return next((prompts[f][0] for f in true_findings(row) if f in prompts), FALLBACK_FINDING)


@functools.cache
def _prompt_regions() -> dict[str, tuple[str, ...]]:
    """Lower-cased anatomy prompt (every synonym, multi-region prompts too) -> the Chest ImaGenome regions it names."""
    out = {p.lower(): (region,) for region, prompts in anatomy_synonyms().items() for p in prompts}
    out.update({p.lower(): m.members for m in multi_regions() for p in m.prompts})
    return out


def true_boxes(row: Row, prompt: str) -> list[list[float]]:
    """The row's true xyxy boxes of a prompt: its region's (a multi-region prompt: its members') Chest ImaGenome
    boxes for an anatomy prompt, else the row's pathology boxes of that name. Empty when the row has none."""
    regions = _prompt_regions().get(prompt.lower())
    if regions:
        return [xyxy(b) for b in row.get("region_boxes") or [] if b["name"] in regions]
    return [xyxy(b) for b in row.get("boxes") or [] if b["name"].lower() == prompt.lower()]


def best_iou(box: Sequence[float], truths: Sequence[Sequence[float]]) -> float | None:
    """IoU with the best-matching true box: a multi-region prompt's box is meant to cover one of its members."""
    if not truths:
        return None
    iou = box_ops.box_iou(torch.tensor([box], dtype=torch.float64), torch.tensor(truths, dtype=torch.float64))
    return round(float(iou.max()), 4)


def to_xyxy(box: Sequence[float]) -> list[float]:
    """An inference (cx, cy, w, h) box -> xyxy clipped to the image (as the evaluation scores boxes)."""
    out = box_ops.clip_unit(box_ops.cxcywh_to_xyxy(torch.tensor(box, dtype=torch.float64)))
    return [round(v, 4) for v in out.tolist()]


def answer_prompts(model, image: PreparedImage, row: Row, prompts: Sequence[str],
                   max_new_tokens: int | None = None) -> list[PromptAnswer]:
    """All prompts in one :func:`~chex_model.inference.query` call (as ``chex query --prompt ...`` asks them)."""
    out = []
    for prompt, r in zip(prompts, query(model, image, list(prompts), max_new_tokens=max_new_tokens)):
        box = to_xyxy(r.box)
        out.append(PromptAnswer(prompt, box, r.score, r.sentence, best_iou(box, true_boxes(row, prompt))))
    return out


def grounded(rep: Report) -> list[GroundedSentence]:
    """The report's sentences with their boxes in the showcase's xyxy frame."""
    return [GroundedSentence(s.query, to_xyxy(s.box), s.sentence, s.finding) for s in rep.sentences]


def draw(image: np.ndarray, row: Row, item: ShowcaseImage, path: Path) -> Path:
    """Report sentences and prompt answers as predictions; the prompts' true boxes and the true report (the whole
    frame) as the truth."""
    pred = [(s.query, np.asarray(s.box) if s.finding else None, s.sentence) for s in item.report]
    if item.undetermined:
        pred.append(("cannot tell", None, ", ".join(item.undetermined)))
    pred += [(f"prompt {a.prompt!r}", np.asarray(a.box), a.sentence) for a in item.answers]
    true = [(f"{a.prompt} (IoU {a.iou:.2f})", np.asarray(b), "") for a in item.answers if a.iou is not None
            for b in true_boxes(row, a.prompt)]
    true.append(("true report", np.array([0.0, 0.0, 1.0, 1.0]), item.true_report))
    return example_picture(image, pred, true, path)


def _file_name(k: int, image_id: str) -> str:
    return f"{k + 1}-{re.sub(r'[^A-Za-z0-9_.-]', '_', image_id)}.png"


def showcase(model_dir: Path, tables: Path, out: Path, n_images: int = 3, prompts: Sequence[str] = DEFAULT_PROMPTS,
             max_new_tokens: int | None = None, device: str = "cpu") -> Showcase:
    """Load the model, take the ``n_images`` abnormal frontal MIMIC-CXR test images with the most true findings
    (fewer if the split has fewer), and per image: the grounded report of the shipped ``report`` policy, the
    ``prompts`` plus one prompt of the image's own true finding answered with boxes, and a picture in ``out``."""
    model = ChEX.from_pretrained(model_dir, device=device)
    policy = load_prompt_set("report")
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for k, row in enumerate(pick_rows(load_rows(tables, "mimic_cxr", "test", 0, frontal_only=True), n_images)):
        pixels = decode_png(row["image_png"])
        prepared = prepare_image(pixels, model.image_encoder.image_size)
        rep = report(model, prepared, policy, max_new_tokens=max_new_tokens)
        asked = list(dict.fromkeys([*prompts, finding_prompt(row)]))
        item = ShowcaseImage(row["sample_id"], row["image_id"], true_findings(row), report_text(row), grounded(rep),
                             rep.undetermined, answer_prompts(model, prepared, row, asked, max_new_tokens),
                             out / _file_name(k, row["image_id"]))
        draw(pixels, row, item, item.picture)
        images.append(item)
    return Showcase(Path(model_dir), images)


def _clip(text: str, width: int) -> str:
    """At most ``width`` characters (a cut, not a word wrap: generated text may have no spaces)."""
    return text if len(text) <= width else text[: width - 3] + "..."


def _box_text(box: Sequence[float]) -> str:
    return "[" + " ".join(f"{v:.2f}" for v in box) + "]"


def _answer_text(a: PromptAnswer) -> str:
    score = "" if a.score is None else f" score {a.score:.2f}"
    iou = "" if a.iou is None else f" IoU {a.iou:.2f}"
    return f"{a.prompt!r} -> {_box_text(a.box)}{score}{iou}: {a.sentence or '(no sentence)'}"


def _lines(item: ShowcaseImage) -> list[str]:
    """One image's content, one fact a line, shared by the text and markdown renderings."""
    said = [s for s in item.report if s.finding]
    absent = [s.query for s in item.report if not s.finding]
    lines = [f"true findings: {', '.join(item.true_findings)}",
             f"true report: {_clip(item.true_report, 160)}"]
    lines += [f"report: {s.query} {_box_text(s.box)}: {s.sentence}" for s in said] or ["report: (no finding said)"]
    if absent:
        lines.append(f"report says absent: {', '.join(absent)}")
    if item.undetermined:
        lines.append(f"report cannot tell: {', '.join(item.undetermined)}")
    return lines + [f"prompt {_answer_text(a)}" for a in item.answers]


def render_text(show: Showcase) -> str:
    """Short plain text for the console (what ``make demo`` ends with)."""
    out = [f"Showcase: {len(show.images)} abnormal MIMIC-CXR test image(s), model {show.model_dir}"]
    for k, item in enumerate(show.images, 1):
        out.append(f"[{k}] image {item.image_id}  ({item.picture})")
        out += [f"    {_clip(line, 150)}" for line in _lines(item)]
    return "\n".join(out) + "\n"


def render_markdown(show: Showcase, rel_to: Path) -> str:
    """Markdown for the docs, the pictures linked relative to ``rel_to`` (the folder the markdown file lies in)."""
    out = [f"# Showcase: {len(show.images)} abnormal MIMIC-CXR test images", ""]
    for k, item in enumerate(show.images, 1):
        link = Path(os.path.relpath(item.picture, rel_to)).as_posix()
        out += [f"## {k}. Image `{item.image_id}`", "", f"![{item.image_id}]({link})", ""]
        out += [f"- {line}" for line in _lines(item)] + [""]
    return "\n".join(out)
