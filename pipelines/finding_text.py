"""Targets of the pathology-generation term (`patho_gen`, our addition): what a report says about each of its 14
CheXpert pathology queries.

The reference never trains the sentence generator on pathology-query ROI tokens, yet its full report (RG) answers all
14 of them, so their sentences follow the prompt rather than the image. Here each report sentence is routed to the
queries of the conditions it mentions (positive, negative or uncertain, read by the rule labeler, the way the CheXpert
labels of MIMIC-CXR are read from the same reports); "Normal" gets the sentences that mention no condition. A query
its report does not mention has the empty target, so the model learns to stay silent about it.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from chex_model.multitask import FindingTargets
from chex_model.prompts import load_prompt_set
from evaluation.labeler import BLANK, CONDITIONS, RuleLabeler
from preprocessing.classes import CHEXPERT_14

_COLUMNS = np.array([CONDITIONS.index(c) for c in CHEXPERT_14])  # labeler columns in the report's query order
_NO_FINDING = CHEXPERT_14.index("No Finding")


@lru_cache(maxsize=1)
def _report_queries() -> tuple[str, ...]:
    queries = load_prompt_set("report").pathology
    if len(queries) != len(CHEXPERT_14):
        raise ValueError(f"the report prompt set has {len(queries)} pathology queries; the 14 CheXpert classes need 14")
    return tuple(queries)


def report_queries() -> list[str]:
    """The packaged report prompt set's pathology queries, one per CheXpert-14 class in ``CHEXPERT_14`` order."""
    return list(_report_queries())


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


def finding_targets(reports: Sequence[Sequence[str]], rng: np.random.Generator) -> FindingTargets | None:
    """Every (image, query) its report mentions, plus as many silent ones drawn at random (empty target), so the
    silent answer is learned without drowning the described ones. Images without report sentences take no part."""
    images, queries, texts = [], [], []
    for n, sentences in enumerate(reports):
        if not sentences:
            continue
        routed = route(sentences, sentence_codes(sentences))
        said = [k for k, t in enumerate(routed) if t]
        silent = [k for k, t in enumerate(routed) if not t]
        chosen = said + sorted(rng.choice(silent, size=min(len(said), len(silent)), replace=False).tolist())
        images += [n] * len(chosen)
        queries += chosen
        texts += [routed[k] for k in chosen]
    if not texts:
        return None
    return FindingTargets(report_queries(), torch.tensor(images), torch.tensor(queries), texts)
