"""Text tasks: region explanation (a sentence per ground-truth MS-CXR box or Chest ImaGenome region) and full report
generation on MIMIC-CXR; scored by corpus METEOR and clinical-efficacy F1 from a labeler (chex-reference §5 RE, RG)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from evaluation import claims as cl
from evaluation.bootstrap import indices
from evaluation.data import Row, report_text, unique_boxes, xyxy
from evaluation.meteor import MeteorScorer
from preprocessing.classes import CIG_ANATOMY_29


@dataclass
class TextSamples:
    """One generated text per sample against one reference; ``group`` = the example (image) for Ex-F1."""

    row: np.ndarray
    boxes: np.ndarray  # (K, 4) xyxy (empty for reports)
    targets: list[str]
    group: np.ndarray
    abnormal: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # CIG: the region has a positive finding


def mscxr_truth(rows: Sequence[Row], unique: bool = True) -> TextSamples:
    """A sample per box of each phrase; ``unique``: a box listed twice for one phrase once (ours), else as given."""
    row, boxes, targets = [], [], []
    for i, r in enumerate(rows):
        for g in r.get("grounded_phrases") or []:
            given = [xyxy(b) for b in g["boxes"]] if g["phrase"].strip() else []
            for b in unique_boxes(given) if unique else given:
                row.append(i)
                boxes.append(b)
                targets.append(g["phrase"])
    row_a = np.asarray(row, int)
    return TextSamples(row_a, np.asarray(boxes, float).reshape(-1, 4), targets, row_a, np.ones(len(row), bool))


def cig_truth(rows: Sequence[Row]) -> TextSamples:
    """Per present anatomy region with phrases: the phrases joined by a space (empty targets are dropped)."""
    row, boxes, targets, abnormal = [], [], [], []
    for i, r in enumerate(rows):
        region_box = {b["name"]: xyxy(b) for b in r.get("region_boxes") or []}
        positive = {lab["region"] for lab in r.get("region_labels") or [] if lab["value"] == 1}
        for rp in r.get("region_phrases") or []:
            text = " ".join(p.strip() for p in rp["phrases"] if p.strip())
            if text and rp["region"] in region_box and rp["region"] in CIG_ANATOMY_29:
                row.append(i)
                boxes.append(region_box[rp["region"]])
                targets.append(text)
                abnormal.append(rp["region"] in positive)
    row_a = np.asarray(row, int)
    return TextSamples(row_a, np.asarray(boxes, float).reshape(-1, 4), targets, row_a, np.asarray(abnormal, bool))


def report_truth(rows: Sequence[Row]) -> TextSamples:
    keep = [i for i, r in enumerate(rows) if report_text(r).strip()]
    row_a = np.asarray(keep, int)
    return TextSamples(row_a, np.zeros((0, 4)), [report_text(rows[i]) for i in keep], row_a, np.zeros(len(keep), bool))


def describe(runner, rows: Sequence[Row], samples: TextSamples, desc: str) -> list[str]:
    from evaluation.task_region_cls import features_in_order

    return runner.generate(features_in_order(runner, rows, samples.row, samples.boxes, desc), desc=f"{desc}: generate")


def shuffled(targets: Sequence[str], seed: int = 0) -> list[str]:
    """Chance level: every sample gets another sample's reference (a derangement when there are two or more)."""
    n = len(targets)
    perm = np.random.default_rng(seed).permutation(n)
    return [targets[perm[(k + 1) % n]] for k in range(n)] if n > 1 else list(targets)


def claim_counts(generated: Sequence[str], true_codes: np.ndarray, labeler) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: its generated sentences (the project's splitter) without a false claim against the true report's
    codes, and all its generated sentences; every sentence is labelled in one labeler call (evaluation/claims.py)."""
    from preprocessing.sentences import split_sentences

    sentences = [split_sentences(t or "") for t in generated]
    n = np.array([len(s) for s in sentences], int)
    flat = [s for ss in sentences for s in ss]
    codes = labeler.label(flat) if flat else np.zeros((0, len(cl.CONDITIONS)), np.int8)
    ends = np.cumsum(n)
    ok = np.array([cl.sentences_free([cl.labels(c) for c in codes[e - k:e]], cl.labels(t))
                   for k, e, t in zip(n, ends, true_codes)], int)
    return ok, n


class TextScorer:
    """Corpus METEOR and CE F1 of generated texts as a function of per-*example* weights: the bootstrap resamples
    images (a report, or all the boxes / regions of one image), and a drawn copy is its own example for Ex-F1.
    ``claims`` (full reports): also the share of generated sentences without a false claim and sentences per report."""

    def __init__(self, generated: Sequence[str], samples: TextSamples, labeler, meteor: MeteorScorer | None,
                 split_abnormal: bool = False, claims: bool = False) -> None:
        from evaluation.clinical_f1 import ce_metrics

        self._ce = ce_metrics
        self.samples = samples
        self.meteor = meteor
        self.stats = meteor.stats(generated, samples.targets) if meteor is not None else None
        self.pred_codes = labeler.label(list(generated))
        self.true_codes = labeler.label(list(samples.targets))
        self.split_abnormal = split_abnormal
        self.claims = claim_counts(generated, self.true_codes, labeler) if claims else None
        self.groups, self._group_of = np.unique(samples.group, return_inverse=True)
        self._members = [np.flatnonzero(self._group_of == g) for g in range(len(self.groups))]

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def __call__(self, group_weights: np.ndarray) -> dict[str, float]:
        gw = np.asarray(group_weights, int)
        w = gw[self._group_of]
        out: dict[str, float] = {}
        if self.meteor is not None:
            out["METEOR"] = self.meteor.corpus(self.stats, w)[0]
            if self.split_abnormal:
                ab = self.samples.abnormal
                out["METEOR/abnormal"] = self.meteor.corpus(self.stats, w * ab)[0] if (w * ab).any() else float("nan")
                out["METEOR/normal"] = self.meteor.corpus(self.stats, w * ~ab)[0] if (w * ~ab).any() else float("nan")
        copies = [self._members[g] for g in indices(gw)]
        idx = np.concatenate(copies) if copies else np.zeros(0, int)
        example = np.repeat(np.arange(len(copies)), [len(c) for c in copies])
        out.update(self._ce(self.pred_codes[idx], self.true_codes[idx], example))
        if self.claims is not None:
            out.update(cl.claim_metrics(*self.claims, w))
        return out
