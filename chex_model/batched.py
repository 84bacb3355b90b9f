"""Many queries and reports on many images answered together: one image-encoder pass over all the images, then one
language-model generation over every ROI token of every request (grouped by sentence length and beam width).

This is what a server's dynamic batching calls: concurrent requests share the two steps that dominate their cost.
Each job gets the answers it would get alone (:func:`~chex_model.inference.query`, :func:`~chex_model.inference.report`).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from chex_model.inference import (
    ImageInput, QueryResult, Report, encode_images, finish_query, finish_report, ground_query, inference_context,
    plan_report, prepare_image,
)
from chex_model.prompts import PromptSet, load_prompt_set


@dataclass
class QueryJob:
    image: ImageInput
    prompts: list[str] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    box_prompts: list[tuple[list[float], str]] = field(default_factory=list)
    classes: list[tuple[str, str]] = field(default_factory=list)
    max_new_tokens: int | None = None
    num_beams: int = 1


@dataclass
class ReportJob:
    image: ImageInput
    prompt_set: PromptSet | str = "report"
    max_new_tokens: int | None = None
    num_beams: int = 1


Answer = list[QueryResult] | Report | ValueError


def _plan(model, job: QueryJob | ReportJob, feats, prep):
    if isinstance(job, QueryJob):
        return ground_query(model, feats, prep, job.prompts, job.boxes, job.box_prompts, job.classes)
    ps = job.prompt_set if isinstance(job.prompt_set, PromptSet) else load_prompt_set(job.prompt_set)
    return plan_report(model, feats, prep, ps)


def answer_batch(model, jobs: list[QueryJob | ReportJob]) -> list[Answer]:
    """Each job's answer, in order; a job whose input is bad (image, box, prompt set) gets its ValueError instead,
    and the others are answered."""
    size = model.image_encoder.image_size
    answers: list[Answer | None] = [None] * len(jobs)
    preps = {}
    for i, job in enumerate(jobs):
        try:
            preps[i] = prepare_image(job.image, size)
        except (ValueError, OSError) as exc:
            answers[i] = exc if isinstance(exc, ValueError) else ValueError(str(exc))
    with inference_context(model):
        plans = {}
        for i, feats in zip(preps, encode_images(model, list(preps.values())) if preps else []):
            try:
                plans[i] = _plan(model, jobs[i], feats, preps[i])
            except (ValueError, FileNotFoundError) as exc:
                answers[i] = exc if isinstance(exc, ValueError) else ValueError(str(exc))
        sentences = _generate_grouped(model, jobs, plans)
        for i, plan in plans.items():
            if isinstance(jobs[i], QueryJob):
                answers[i] = finish_query(plan, sentences[i])
            else:
                answers[i] = finish_report(model, plan, sentences[i])
    return answers  # type: ignore[return-value]


def _generate_grouped(model, jobs, plans: dict) -> dict[int, list[str]]:
    """One generation per (max_new_tokens, num_beams) over the concatenated ROI tokens of its jobs, split back."""
    import torch

    groups: dict[tuple, list[int]] = defaultdict(list)
    for i in plans:
        groups[(jobs[i].max_new_tokens, jobs[i].num_beams)].append(i)
    out: dict[int, list[str]] = {}
    for (max_new, beams), members in groups.items():
        rows = [plans[i].features for i in members]
        flat = model.generate(torch.cat(rows), max_new, beams) if sum(len(r) for r in rows) else []
        start = 0
        for i, r in zip(members, rows):
            out[i], start = flat[start: start + len(r)], start + len(r)
    return out
