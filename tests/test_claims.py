"""Sentences without a false claim (evaluation/claims.py), checked against verdicts written by reading the sentences."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.claims import false_claim, sentences_free
from preprocessing.labeler import NEGATIVE, POSITIVE, UNCERTAIN

# (true report, generated report, verdict per generated sentence: True = no false claim)
CASES: list[tuple[str, str, list[bool]]] = [
    ("Large right pleural effusion. No pneumothorax.",
     "Large right pleural effusion. No pleural effusion. There is a pneumothorax. Heart size is normal.",
     [True,    # the effusion is in the report
      False,   # (b) denies the report's effusion
      False,   # (a) the report denies a pneumothorax
      True]),  # denies cardiomegaly, which the report does not state
    ("Moderate cardiomegaly. Small left pleural effusion. Possible pneumonia in the right lower lobe.",
     "Enlarged heart. No acute cardiopulmonary abnormality. There is right lower lobe pneumonia. No pneumonia. "
     "Possible left basilar atelectasis. No focal consolidation. The lungs are clear.",
     [True,    # cardiomegaly is in the report
      False,   # (c) "normal" on an abnormal study
      True,    # pneumonia: the report is uncertain, so stating it is no false claim
      True,    # denying it neither: (b) needs the report to state it positive
      False,   # (a) an uncertain claim of atelectasis, which the report does not mention
      True,    # the report says nothing about consolidation
      False]),  # (c) the labeler reads "lungs are clear" as only No Finding
    ("No acute cardiopulmonary process.",
     "No acute cardiopulmonary abnormality. Heart size is normal. Comparison is made to the prior study. "
     "Left rib fracture.",
     [True, True, True,  # a normal study: statements of normality and boilerplate are fine
      False]),  # (a) a fracture the report does not have
    ("Pacemaker in place. Mild pulmonary edema.",
     "No acute cardiopulmonary abnormality. Left chest tube is present. There is mild pulmonary edema.",
     [False,   # (c) the edema makes the study abnormal
      True,    # a support device, which the report states (the class, not which device)
      True]),
    ("Pacemaker in place. No acute cardiopulmonary process.",
     "No acute cardiopulmonary abnormality.",
     [True]),  # a device alone does not make the study abnormal
    ("Small left pleural effusion.", "", []),  # nothing generated: no sentences
]


@pytest.fixture(scope="module")
def labeler():
    from preprocessing.labeler import RuleLabeler

    return RuleLabeler()


def test_rules_on_labels():
    assert not false_claim({}, {"Edema": POSITIVE})  # nothing labelled: no claim
    assert not false_claim({"No Finding": POSITIVE}, {})
    assert not false_claim({"No Finding": POSITIVE}, {"Support Devices": POSITIVE, "No Finding": POSITIVE})
    assert not false_claim({"No Finding": POSITIVE}, {"Edema": UNCERTAIN})  # (c) needs a positive finding
    assert false_claim({"No Finding": POSITIVE}, {"Edema": POSITIVE})
    assert not false_claim({"Cardiomegaly": NEGATIVE, "No Finding": POSITIVE}, {"Edema": POSITIVE})  # only (b)
    assert false_claim({"Edema": NEGATIVE, "No Finding": POSITIVE}, {"Edema": POSITIVE})
    assert not false_claim({"Edema": NEGATIVE}, {"Edema": UNCERTAIN})
    assert false_claim({"Edema": UNCERTAIN}, {"Edema": NEGATIVE})
    assert not false_claim({"Edema": POSITIVE}, {"Edema": UNCERTAIN})
    assert false_claim({"Support Devices": POSITIVE, "No Finding": POSITIVE}, {"No Finding": POSITIVE})
    assert sentences_free([{}, {"Edema": POSITIVE}, {"Edema": NEGATIVE}], {"Edema": POSITIVE}) == 2


@pytest.mark.parametrize("truth, generated, verdicts", CASES)
def test_verdict_per_sentence(labeler, truth, generated, verdicts):
    from evaluation.claims import labels
    from preprocessing.sentences import split_sentences

    sentences = split_sentences(generated)
    assert len(sentences) == len(verdicts)
    report = labels(labeler.label([truth])[0])
    got = [not false_claim(labels(c), report) for c in labeler.label(sentences)] if sentences else []
    assert got == verdicts, list(zip(sentences, got))


def _scorer(labeler, claims: bool = True):
    from evaluation.task_text import TextSamples, TextScorer

    truths, generated = [c[0] for c in CASES], [c[1] for c in CASES]
    samples = TextSamples(np.arange(len(CASES)), np.zeros((0, 4)), truths, np.arange(len(CASES)))
    return TextScorer(generated, samples, labeler, None, claims=claims)


def test_pooled_fraction_against_brute_force(labeler):
    scorer = _scorer(labeler)
    ok, n = scorer.claims
    assert n.tolist() == [len(v) for _, _, v in CASES] and ok.tolist() == [sum(v) for _, _, v in CASES]
    rng = np.random.default_rng(0)
    for draw in range(20):
        w = rng.integers(0, 4, len(CASES)) if draw else np.ones(len(CASES), int)
        copies = np.repeat(np.arange(len(CASES)), w)  # each report as often as drawn, its sentences with it
        pooled = [v for k in copies for v in CASES[k][2]]
        got = scorer(w)
        if pooled:
            assert got["sentences_without_false_claim"] == pytest.approx(np.mean(pooled))
        else:
            assert np.isnan(got["sentences_without_false_claim"])
        want = np.mean([len(CASES[k][2]) for k in copies]) if copies.size else float("nan")
        assert got["sentences_per_report"] == pytest.approx(want, nan_ok=True)
    assert scorer(np.ones(len(CASES), int))["sentences_without_false_claim"] == pytest.approx(12 / 19)


def test_only_when_asked(labeler):
    got = _scorer(labeler, claims=False)(np.ones(len(CASES), int))
    assert "mic_f1_14" in got and not {"sentences_without_false_claim", "sentences_per_report"} & set(got)


def test_table_rows():
    from evaluation.table import markdown

    stat = {"value": 0.5, "mean": 0.5, "std": 0.1}
    count = {"value": 3.3, "mean": 3.3, "std": 0.5}
    results = {"rg_mimic": {"n": 4, "metrics": {"sentences_without_false_claim": stat, "sentences_per_report": count}}}
    lines = markdown(results).splitlines()
    assert "| Full report generation | MIMIC-CXR | sentences w/o false claim | 4 | 50.0 ± 10.0 |" in lines
    assert "| Full report generation | MIMIC-CXR | sentences / report | 4 | 3.3 ± 0.5 |" in lines
