"""Clinical labels and clinical-efficacy F1: the rule labeler against hand labels and the synthetic report templates,
the metrics against scikit-learn and brute force, and the CheXbert adapter against a direct forward pass of a tiny
random checkpoint saved in the original format."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import f1_score

from evaluation.clinical_f1 import FIVE, binary_5plus, binary_14, ce_metrics, example_f1, macro_f1, micro_f1
from evaluation.chexbert import load_labeler
from preprocessing.labeler import BLANK, CONDITIONS, NEGATIVE, POSITIVE, UNCERTAIN, RuleLabeler
from preprocessing.synth.catalog import CATALOG, NORMAL_SENTENCES, SIZE_WORDS

HAND_SET = Path(__file__).parent / "data" / "labeler_sentences.yaml"
CODE = {"pos": POSITIVE, "neg": NEGATIVE, "unc": UNCERTAIN}
FINDINGS = CONDITIONS[:-1]  # No Finding is derived, never hand-labelled
NF = CONDITIONS.index("No Finding")


@pytest.fixture(scope="module")
def labeler() -> RuleLabeler:
    return RuleLabeler()


def codes_of(labeler, text: str) -> dict[str, int]:
    row = labeler.label([text])[0]
    return {c: int(row[j]) for j, c in enumerate(CONDITIONS)}


# ---- rule labeler ------------------------------------------------------------------------------------------------
def test_agreement_with_hand_labels(labeler):
    items = yaml.safe_load(HAND_SET.read_text())
    assert len(items) >= 80
    expected = np.zeros((len(items), len(FINDINGS)), np.int8)
    for i, item in enumerate(items):
        for name, value in (item["labels"] or {}).items():
            expected[i, FINDINGS.index(name)] = CODE[value]
    got = labeler.label([item["text"] for item in items])[:, :len(FINDINGS)]
    mentioned = expected != BLANK
    accuracy = float((got[mentioned] == expected[mentioned]).mean())
    f1 = f1_score((expected == POSITIVE).ravel(), (got == POSITIVE).ravel())
    wrong = [(items[i]["text"], FINDINGS[j], int(got[i, j]), int(expected[i, j]))
             for i, j in zip(*np.nonzero(mentioned & (got != expected)))]
    print(f"\nhand-labelled set: {len(items)} texts, mention accuracy {accuracy:.3f} "
          f"({int((got[mentioned] == expected[mentioned]).sum())}/{int(mentioned.sum())}), "
          f"micro F1 of positive {f1:.3f}; disagreements: {wrong}")
    assert accuracy >= 0.9
    assert f1 >= 0.9


def filled(template: str, spec) -> set[str]:
    sizes = [word for _, word in SIZE_WORDS]
    return {template.format(side=side, Side=side.capitalize(), zone=zone, size=size, Size=size.capitalize())
            for side, zone, size in itertools.product(("right", "left"), spec.zones or ("",), sizes)}


@pytest.mark.parametrize("kind", sorted(CATALOG))
def test_every_synthetic_template(labeler, kind):
    spec = CATALOG[kind]
    cases = [(text, polarity) for polarity, templates in (("pos", spec.positive), ("neg", spec.negative),
                                                         ("unc", spec.uncertain))
             for template in templates for text in sorted(filled(template, spec))]
    rows = labeler.label([text for text, _ in cases])
    for (text, polarity), row in zip(cases, rows):
        for name in spec.chexpert:
            assert row[CONDITIONS.index(name)] == CODE[polarity], (text, name, row)
        assert row[NF] == (BLANK if polarity != "neg" else POSITIVE), (text, row)


def test_whole_synthetic_reports_match_their_truth(labeler):
    """Reports of several sentences give the generator's own CheXpert labels; the one documented difference is
    "perihilar haziness consistent with edema", which the labeler also reads as a Lung Opacity."""
    from preprocessing.synth.truth import sample_studies

    studies = sample_studies(np.random.default_rng(5), 120, 0.1)
    reports = [" ".join(s.text for s in st.sentences) for st in studies]
    value = {1.0: POSITIVE, -1.0: UNCERTAIN, 0.0: NEGATIVE}
    for study, report, row in zip(studies, reports, labeler.label(reports)):
        truth = {name: value[v] for name, v in study.chexpert().items()}
        if "haziness" in report and truth.get("Lung Opacity") != POSITIVE:
            truth["Lung Opacity"] = POSITIVE
            truth.pop("No Finding", None)
        got = {c: int(row[j]) for j, c in enumerate(CONDITIONS) if row[j] in (POSITIVE, UNCERTAIN) or c in truth}
        assert got == truth, report


def test_normal_sentences(labeler):
    rows = labeler.label(list(NORMAL_SENTENCES))
    assert (rows[:, NF] == POSITIVE).all()
    assert not np.isin(rows[:, :NF], (POSITIVE, UNCERTAIN)).any()


def test_explicit_cases(labeler):
    assert codes_of(labeler, "No pleural effusion.")["Pleural Effusion"] == NEGATIVE
    assert codes_of(labeler, "Possible consolidation.")["Consolidation"] == UNCERTAIN
    assert codes_of(labeler, "possible consolidation in the right lower lobe")["Consolidation"] == UNCERTAIN
    both = codes_of(labeler, "Small left pleural effusion but no pneumothorax.")
    assert both["Pleural Effusion"] == POSITIVE and both["Pneumothorax"] == NEGATIVE
    report = codes_of(labeler, "Heart size is normal. There is a moderate right pleural effusion.")
    assert report["Pleural Effusion"] == POSITIVE and report["No Finding"] == BLANK
    devices_only = codes_of(labeler, "Endotracheal tube in standard position. No pneumothorax.")
    assert devices_only["Support Devices"] == POSITIVE and devices_only["No Finding"] == POSITIVE


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_is_only_no_finding(labeler, text):
    row = labeler.label([text])[0]
    assert row.dtype == np.int8 and row.shape == (14,)
    assert row[NF] == POSITIVE and (row[:NF] == BLANK).all()


@pytest.mark.parametrize("text, expected", [
    ("Possible small left effusion. Large left pleural effusion.", POSITIVE),
    ("No pleural effusion. A small effusion cannot be excluded.", UNCERTAIN),
    ("No pleural effusion. Heart size is normal.", NEGATIVE),
    ("Heart size is normal. Lungs are clear.", BLANK),
])
def test_report_aggregates_sentences(labeler, text, expected):
    assert codes_of(labeler, text)["Pleural Effusion"] == expected


def test_load_labeler_specs(tmp_path):
    assert isinstance(load_labeler(None), RuleLabeler)
    assert isinstance(load_labeler("rules"), RuleLabeler)
    for bad in ("bogus", "chexbert:", "chexbert"):
        with pytest.raises(ValueError, match="labeler must be"):
            load_labeler(bad)
    # missing files: one message naming both, before anything is loaded
    with pytest.raises(FileNotFoundError, match=r"missing\.pth \(chexbert\.pth\) and the BERT folder .*bert \(bert-base"):
        load_labeler(f"chexbert:{tmp_path / 'missing.pth'}")


# ---- clinical-efficacy F1 ----------------------------------------------------------------------------------------
def random_codes(seed: int, n: int = 60) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice([BLANK, POSITIVE, NEGATIVE, UNCERTAIN], size=(n, 14), p=[0.5, 0.25, 0.15, 0.1]).astype(np.int8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_matches_sklearn(seed):
    pred, true = random_codes(seed), random_codes(seed + 100)
    five = [CONDITIONS.index(c) for c in ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")]
    t14, p14 = (true == 1), (pred == 1)
    t5, p5 = np.isin(true[:, five], (1, 3)), np.isin(pred[:, five], (1, 3))
    got = ce_metrics(pred, true)
    assert got["mic_f1_14"] == pytest.approx(f1_score(t14.flatten(), p14.flatten()))
    assert got["mac_f1_14"] == pytest.approx(f1_score(t14, p14, average="macro", zero_division=0))
    assert got["mic_f1_5plus"] == pytest.approx(f1_score(t5.flatten(), p5.flatten()))
    assert got["mac_f1_5plus"] == pytest.approx(f1_score(t5, p5, average="macro", zero_division=0))
    assert micro_f1(p14, t14) == got["mic_f1_14"] and macro_f1(p5, t5) == got["mac_f1_5plus"]
    assert "ex_f1_14" not in got


def brute_force_example_f1(pred, true, ids) -> float:
    scores = []
    for e in dict.fromkeys(ids):
        tp = fp = fn = 0
        for r in range(len(ids)):
            if ids[r] != e:
                continue
            for c in range(pred.shape[1]):
                tp += bool(pred[r, c] and true[r, c])
                fp += bool(pred[r, c] and not true[r, c])
                fn += bool(true[r, c] and not pred[r, c])
        if 2 * tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else float("nan")


@pytest.mark.parametrize("seed", [3, 4])
def test_example_f1_matches_brute_force(seed):
    pred, true = random_codes(seed, 40), random_codes(seed + 100, 40)
    ids = [f"img{k}" for k in np.random.default_rng(seed).integers(0, 9, 40)]
    pred[[k for k, e in enumerate(ids) if e == ids[0]]] = BLANK  # one example with no positive anywhere ...
    true[[k for k, e in enumerate(ids) if e == ids[0]]] = NEGATIVE  # ... is skipped, not scored 0
    expected = brute_force_example_f1(pred == POSITIVE, true == POSITIVE, ids)
    assert example_f1(binary_14(pred), binary_14(true), ids) == pytest.approx(expected)
    assert ce_metrics(pred, true, np.asarray(ids))["ex_f1_14_strict"] == pytest.approx(expected)
    assert np.isnan(example_f1(np.zeros((2, 14), bool), np.zeros((2, 14), bool), [0, 1]))


def test_uncertain_is_negative_for_14_and_positive_for_5plus():
    codes = np.full((4, 14), BLANK, np.int8)
    codes[0, CONDITIONS.index("Cardiomegaly")] = UNCERTAIN
    codes[1, CONDITIONS.index("Edema")] = POSITIVE
    codes[2, CONDITIONS.index("Pleural Effusion")] = NEGATIVE
    codes[3, CONDITIONS.index("Pneumonia")] = UNCERTAIN
    b14, b5 = binary_14(codes), binary_5plus(codes)
    assert b14.shape == (4, 14) and b5.shape == (4, 5)
    assert b14.sum() == 1 and b14[1, CONDITIONS.index("Edema")]
    assert b5[0, FIVE.index("Cardiomegaly")] and b5[1, FIVE.index("Edema")]
    assert b5.sum() == 2


# ---- CheXbert adapter ------------------------------------------------------------------------------------------
CORPUS = [
    "No pleural effusion.", "Small left pleural effusion but no pneumothorax.", "The heart is enlarged.",
    "Possible consolidation in the right lower lobe.", "Endotracheal tube terminates above the carina.",
    "Mild pulmonary edema with bibasilar atelectasis.", "No acute cardiopulmonary process.",
]


@pytest.fixture(scope="module")
def tiny_chexbert(tmp_path_factory):
    """A random 2-layer BERT with CheXbert's heads, saved like the released chexbert.pth, and its tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("chexbert")
    bert_dir = root / "bert"
    bert_dir.mkdir()
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CORPUS * 3, trainers.WordPieceTrainer(
        vocab_size=150, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    vocab = tok.get_vocab()
    (bert_dir / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, initializer_range=0.5)
    config.save_pretrained(bert_dir)
    torch.manual_seed(0)
    bert = BertModel(config).eval()
    heads = [torch.nn.Linear(32, 4) for _ in range(13)] + [torch.nn.Linear(32, 2)]
    for h in heads:
        torch.nn.init.normal_(h.weight, std=1.0)
    state = {f"module.bert.{k}": v for k, v in bert.state_dict().items()}
    for i, h in enumerate(heads):
        state[f"module.linear_heads.{i}.weight"] = h.weight.detach().clone()
        state[f"module.linear_heads.{i}.bias"] = h.bias.detach().clone()
    checkpoint = root / "chexbert.pth"
    torch.save({"model_state_dict": state, "epoch": 7}, checkpoint)
    return checkpoint, bert_dir, tok, bert, heads, state


def direct_codes(tok, bert, heads, text: str) -> np.ndarray:
    """One text at a time, ids from the trained `tokenizers` object, [CLS] and [SEP] added by hand."""
    vocab = tok.get_vocab()
    ids = [vocab["[CLS]"]] + tok.encode(text, add_special_tokens=False).ids[:510] + [vocab["[SEP]"]]
    with torch.no_grad():
        cls = bert(input_ids=torch.tensor([ids])).last_hidden_state[0, 0]
        return np.array([int(h(cls).argmax()) for h in heads], np.int8)


def test_chexbert_matches_direct_forward(tiny_chexbert):
    checkpoint, bert_dir, tok, bert, heads, _ = tiny_chexbert
    labeler = load_labeler(f"chexbert:{checkpoint}")  # the BERT folder defaults to "bert" next to the checkpoint
    texts = CORPUS + ["heart enlarged " * 400, ""]
    codes = labeler.label(texts)
    assert codes.shape == (len(texts), 14) and codes.dtype == np.int8
    assert np.isin(codes[:, :13], (BLANK, POSITIVE, NEGATIVE, UNCERTAIN)).all()
    assert np.isin(codes[:, 13], (BLANK, POSITIVE)).all()
    for text, row in zip(texts[:-1], codes[:-1]):
        np.testing.assert_array_equal(row, direct_codes(tok, bert, heads, text), err_msg=text)
    assert codes[-1, 13] == POSITIVE and (codes[-1, :13] == BLANK).all()
    assert len({tuple(r) for r in codes[:-1]}) > 1  # random heads must not collapse to one answer
    explicit = load_labeler(f"chexbert:{checkpoint},{bert_dir}")
    np.testing.assert_array_equal(explicit.label(CORPUS[:3]), codes[:3])


def test_chexbert_checkpoint_with_missing_key(tiny_chexbert, tmp_path):
    from evaluation.chexbert import CheXbertLabeler

    checkpoint, bert_dir, *_, state = tiny_chexbert
    broken = {k: v for k, v in state.items() if k != "module.linear_heads.13.bias"}
    broken["module.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"model_state_dict": broken}, path)
    expected = r"missing keys \['linear_heads.13.bias'\].*unexpected keys \['extra.weight'\]"
    with pytest.raises(ValueError, match=expected):
        CheXbertLabeler(path, bert_dir)
