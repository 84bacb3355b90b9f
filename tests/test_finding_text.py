"""Targets of the pathology-generation term: report sentences routed to the 14 CheXpert pathology queries."""
from __future__ import annotations

import numpy as np

from preprocessing.labeler import CONDITIONS, NEGATIVE, POSITIVE, UNCERTAIN, RuleLabeler, with_no_finding
from pipelines.training.collate import collate
from pipelines.training.finding_text import finding_targets, found, report_queries, route, sentence_codes
from preprocessing.classes import CHEXPERT_14
from preprocessing.synth.catalog import CATALOG
from test_collate import _numpy_batch
from train_support import raw_row


def _codes(*mentions: dict[str, int]) -> np.ndarray:
    out = np.zeros((len(mentions), len(CONDITIONS)), np.int8)
    for i, m in enumerate(mentions):
        for name, code in m.items():
            out[i, CONDITIONS.index(name)] = code
    return out


def test_route_sends_each_sentence_to_every_condition_it_mentions():
    sentences = ["No effusion.", "Big heart and effusion.", "Lungs are clear.", "Maybe pneumonia.", "No acute process."]
    codes = _codes({"Pleural Effusion": NEGATIVE}, {"Cardiomegaly": POSITIVE, "Pleural Effusion": POSITIVE}, {},
                   {"Pneumonia": UNCERTAIN}, {})
    routed = dict(zip(CHEXPERT_14, route(sentences, codes)))
    assert routed == {
        **{c: "" for c in CHEXPERT_14},
        "Pleural Effusion": "No effusion. Big heart and effusion.",
        "Cardiomegaly": "Big heart and effusion.",
        "Pneumonia": "Maybe pneumonia.",
        "No Finding": "Lungs are clear. No acute process.",  # sentences that mention no condition
    }


def test_targets_cover_every_mentioned_query_and_as_many_silent_ones():
    reports = [
        ["There is a moderate right pleural effusion.", "No pneumothorax.", "The lungs are clear."],
        [],
        ["Mild cardiomegaly.", "There is no focal consolidation."],
    ]
    t = finding_targets(reports, np.random.default_rng(0))
    assert (t.prompts, t.negatives) == report_queries() and len(t.prompts) == len(t.negatives) == 14
    labeler = RuleLabeler()
    mentions = labeler.mentions([s for r in reports for s in r])
    for n, report in enumerate(reports):
        chosen = {int(k) % 14: text for i, k, text in zip(t.image, t.query, t.texts) if i == n}
        said = {k for k, text in chosen.items() if text}
        codes = labeler.mentions(report) if report else np.zeros((0, 14), np.int8)
        expected = {CHEXPERT_14.index(c) for c in CHEXPERT_14 if c != "No Finding"
                    and (codes[:, CONDITIONS.index(c)] != 0).any()}
        if report and (codes == 0).all(axis=1).any():
            expected.add(CHEXPERT_14.index("No Finding"))
        assert said == expected
        assert len(chosen) - len(said) == min(len(said), 14 - len(said))  # silent queries get the empty target
    assert mentions.shape == (5, 14)
    effusion = CHEXPERT_14.index("Pleural Effusion")
    assert [x for i, k, x in zip(t.image, t.query, t.texts) if i == 0 and k == effusion] == [
        "There is a moderate right pleural effusion."]
    # a found condition speaks from its own prompt, every other target from its negative prompt
    expected_found = np.stack([with_no_finding(labeler.mentions([" ".join(r)]))[0] for r in reports])
    expected_found = np.isin(expected_found[:, [CONDITIONS.index(c) for c in CHEXPERT_14]], (POSITIVE, UNCERTAIN))
    for i, k, text in zip(t.image.tolist(), t.query.tolist(), t.texts):
        assert (k < 14) == bool(expected_found[i, k % 14] and text), (i, k, text)
    assert expected_found[0, effusion] and not expected_found[0, CHEXPERT_14.index("Pneumothorax")]
    assert expected_found[2, CHEXPERT_14.index("Cardiomegaly")] and not expected_found[2, CHEXPERT_14.index("No Finding")]
    assert (effusion in t.query[t.image == 0].tolist()) and (14 + CHEXPERT_14.index("Pneumothorax") in t.query[t.image == 0].tolist())


def test_found_reads_a_report_as_the_labeler_does():
    normal = ["No pleural effusion.", "The lungs are clear."]
    uncertain = ["Possible small right pleural effusion.", "No pneumothorax."]
    nf, effusion = CHEXPERT_14.index("No Finding"), CHEXPERT_14.index("Pleural Effusion")
    assert found(sentence_codes(normal)).tolist() == [k == nf for k in range(14)]
    assert found(sentence_codes(uncertain)).tolist() == [k == effusion for k in range(14)]


def test_every_synthetic_finding_sentence_reaches_its_own_queries():
    words = {"side": "right", "Side": "Right", "zone": "lower", "size": "small", "Size": "Small"}
    for kind, spec in CATALOG.items():
        sentences = [t.format(**words) for t in spec.positive + spec.negative + spec.uncertain]
        routed = [dict(zip(CHEXPERT_14, route([s], sentence_codes([s])))) for s in sentences]
        for sentence, targets in zip(sentences, routed):
            for condition in spec.chexpert:
                assert targets[condition] == sentence, (kind, sentence, condition)
            assert targets["No Finding"] == ""


def test_collate_builds_finding_targets_only_from_report_sentences():
    mimic = collate(_numpy_batch([raw_row("mimic_cxr"), raw_row("vindr_cxr")]), np.random.default_rng(0), 22, 29, 8)
    assert mimic.findings is not None and set(mimic.findings.image.tolist()) == {0}
    assert mimic.findings.texts[0] == "Opacity in the right lower lobe."  # a Lung Opacity mention, routed there
    vindr = collate(_numpy_batch([raw_row("vindr_cxr")]), np.random.default_rng(0), 22, 29, 8)
    assert vindr.findings is None
