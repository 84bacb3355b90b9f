"""Targets of the pathology-generation term (`patho_gen`, our addition): what a report says about each of its 14
CheXpert pathology queries.

The reference never trains the sentence generator on pathology-query ROI tokens, yet its full report (RG) answers all
14 of them, so their sentences follow the prompt rather than the image. Here each report sentence is routed to the
queries of the conditions it mentions (positive, negative or uncertain, read by the rule labeler, the way the CheXpert
labels of MIMIC-CXR are read from the same reports); "Normal" gets the sentences that mention no condition. A query
its report does not mention has the empty target, so the model learns to stay silent about it.

Each target is decoded from the token of the query's positive prompt when the report finds the condition (positive
or uncertain; "Normal" when nothing is found) and from its "No X" prompt otherwise. The sentence's polarity thus
follows the prompt, and the report chooses the prompt by classifying the query first (``PromptSet.pathology_negative``):
presence is decided by the classifier, which ranks it, not by the generator's prior, which does not.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from chex_model.multitask import FindingTargets
from chex_model.prompts import load_prompt_set
from preprocessing.classes import CHEXPERT_14
from preprocessing.labeler import BLANK, CONDITIONS, POSITIVE, UNCERTAIN, RuleLabeler, strongest, with_no_finding

_COLUMNS = np.array([CONDITIONS.index(c) for c in CHEXPERT_14])  # labeler columns in the report's query order
_NO_FINDING = CHEXPERT_14.index("No Finding")


@lru_cache(maxsize=1)
def _report_queries() -> tuple[tuple[str, ...], tuple[str, ...]]:
    ps = load_prompt_set("report")
    if len(ps.pathology) != len(CHEXPERT_14) or len(ps.pathology_negative) != len(CHEXPERT_14):
        raise ValueError("the report prompt set needs 14 pathology queries and 14 pathology_negative prompts, one per "
                         f"CheXpert class; it has {len(ps.pathology)} and {len(ps.pathology_negative)}")
    return tuple(ps.pathology), tuple(ps.pathology_negative)


def report_queries() -> tuple[list[str], list[str]]:
    """The packaged report prompt set's pathology queries, one per CheXpert-14 class in ``CHEXPERT_14`` order, and
    their negative prompts in the same order."""
    positive, negative = _report_queries()
    return list(positive), list(negative)


def route(sentences: Sequence[str], codes: np.ndarray) -> list[str]:
    """Per CheXpert-14 class: the sentences that mention it, joined by a space in report order ("" = not mentioned).

    ``codes``: ``(len(sentences), 14)`` labeler codes in the labeler's ``CONDITIONS`` order, before the No Finding
    rule; the No Finding entry collects the sentences that mention no condition at all."""
    mentioned = codes[:, _COLUMNS] != BLANK
    mentioned[:, _NO_FINDING] = ~mentioned.any(axis=1)
    return [" ".join(s for s, m in zip(sentences, mentioned[:, k]) if m) for k in range(len(CHEXPERT_14))]


@lru_cache(maxsize=1)
def _labeler() -> RuleLabeler:
    return RuleLabeler()


@lru_cache(maxsize=65536)
def _sentence_codes(sentence: str) -> tuple[int, ...]:
    return tuple(int(c) for c in _labeler().mentions([sentence])[0])


def sentence_codes(sentences: Sequence[str]) -> np.ndarray:
    """Labeler codes ``(len(sentences), 14)`` before the No Finding rule; each distinct sentence is labelled once."""
    return np.array([_sentence_codes(s) for s in sentences], dtype=np.int8).reshape(len(sentences), len(CONDITIONS))


def found(codes: np.ndarray) -> np.ndarray:
    """Per CheXpert-14 class, whether the report whose sentence codes these are finds it (positive or uncertain,
    aggregated over sentences; No Finding by the labeler's rule)."""
    report = np.zeros(len(CONDITIONS), np.int8)
    for row in codes:
        report = strongest(report, row)
    return np.isin(with_no_finding(report[None])[0, _COLUMNS], (POSITIVE, UNCERTAIN))


def finding_targets(reports: Sequence[Sequence[str]], rng: np.random.Generator) -> FindingTargets | None:
    """Every (image, query) its report mentions, plus as many silent ones drawn at random (empty target), so the
    silent answer is learned without drowning the described ones. A target found by its report is decoded from the
    query's positive prompt, any other from its negative prompt (query index + 14). Images without report sentences
    take no part."""
    images, queries, texts = [], [], []
    n_classes = len(CHEXPERT_14)
    for n, sentences in enumerate(reports):
        if not sentences:
            continue
        codes = sentence_codes(sentences)
        routed, present = route(sentences, codes), found(codes)
        said = [k for k, t in enumerate(routed) if t]
        silent = [k for k, t in enumerate(routed) if not t]
        chosen = said + sorted(rng.choice(silent, size=min(len(said), len(silent)), replace=False).tolist())
        images += [n] * len(chosen)
        queries += [k if present[k] and routed[k] else k + n_classes for k in chosen]
        texts += [routed[k] for k in chosen]
    if not texts:
        return None
    return FindingTargets(*report_queries(), torch.tensor(images), torch.tensor(queries), texts)
