"""Sentences of a generated report that make no false claim, judged by the clinical-efficacy labeler against the true
report, so the share of trustworthy sentences comes from the evaluation rather than from an ad-hoc count.

Each generated sentence and the whole true report are labelled by the same labeler as the CE metrics (CheXpert-14
codes; positive / negative / uncertain / blank). A sentence makes a false claim when

(a) it states a finding (any class but No Finding, Support Devices included) positive or uncertain that the true
    report states neither positive nor uncertain;
(b) it states a finding negative that the true report states positive;
(c) it states No Finding positive and nothing else, while the true report states one of the 12 findings positive
    (Support Devices excluded, as in the labeler's No Finding rule): "No acute cardiopulmonary abnormality." on an
    abnormal study.

The labelers derive No Finding (positive when a text states no finding positive or uncertain), so a sentence that
only negates a finding ("Heart size is normal.") is judged by (b) alone; the sentences that label nothing but No
Finding are read as a claim of normality: "No acute cardiopulmonary process.", "The lungs are clear." and also
boilerplate such as "Comparison is made to the prior study." (the labelers tell them apart no better). A sentence
with nothing labelled, No Finding included, makes no claim. Laterality is ignored, as the labelers ignore it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from preprocessing.labeler import BLANK, CONDITIONS, NEGATIVE, POSITIVE, UNCERTAIN

NO_FINDING = "No Finding"
CLAIMS: tuple[str, ...] = tuple(c for c in CONDITIONS if c != NO_FINDING)  # what (a) and (b) judge
ABNORMAL: tuple[str, ...] = tuple(c for c in CLAIMS if c != "Support Devices")  # what (c) contradicts
_STATED = (POSITIVE, UNCERTAIN)

Labels = Mapping[str, int]  # condition name -> code; a missing condition is blank


def labels(codes: Sequence[int] | np.ndarray) -> dict[str, int]:
    """A labeler's code row (14, CONDITIONS order) as a dict of its non-blank conditions."""
    return {c: int(v) for c, v in zip(CONDITIONS, codes) if int(v) != BLANK}


def false_claim(sentence: Labels, report: Labels) -> bool:
    """Whether a sentence's labels contradict the true report's by rule (a), (b) or (c) of the module docstring."""
    for c in CLAIMS:
        said, true = sentence.get(c, BLANK), report.get(c, BLANK)
        if said in _STATED and true not in _STATED:
            return True  # (a)
        if said == NEGATIVE and true == POSITIVE:
            return True  # (b)
    only_normal = sentence.get(NO_FINDING, BLANK) == POSITIVE and all(sentence.get(c, BLANK) == BLANK for c in CLAIMS)
    return only_normal and any(report.get(c, BLANK) == POSITIVE for c in ABNORMAL)  # (c)


def sentences_free(sentences: Sequence[Labels], report: Labels) -> int:
    """How many of a report's generated sentences make no false claim."""
    return sum(not false_claim(s, report) for s in sentences)


def claim_metrics(ok: np.ndarray, n: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """Pooled over samples with bootstrap counts w: sum(w*ok) / sum(w*n) sentences without a false claim, and
    sum(w*n) / sum(w) sentences per report (NaN where the denominator is 0)."""
    w = np.asarray(weights, float)
    sent, total = float(w @ np.asarray(n, float)), float(w.sum())
    return {"sentences_without_false_claim": float(w @ np.asarray(ok, float)) / sent if sent else float("nan"),
            "sentences_per_report": sent / total if total else float("nan")}
