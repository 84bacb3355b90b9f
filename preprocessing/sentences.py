"""Report sentences as ChEX trains on them: spaCy sentence splitting (no model download) plus the reference's
per-sentence cleaning (whitespace, dot runs, enumerators, capitalization, >= 2 words, de-duplication).

The reference uses stanza; we use `spacy.blank("en")` + the rule-based `sentencizer` (specs/stack.md 5) and a
small component that repairs the cases the sentencizer gets wrong on radiology text (tested in
tests/test_report_text.py): numbered lists ("1. Mass." was split after "1.", line-start "1)" items were not
split, "#2" was glued to the previous sentence) and abbreviations followed by a number or a lower-case word
("approx. 2 cm", "No. 5", "Fig. 2", "Pt. is"). "Dr.", "e.g.", "i.e.", "vs.", "St.", "Jan.", "p.m." and decimals
were already right.
"""

import re
from collections.abc import Iterable
from functools import lru_cache

import spacy
from spacy.language import Language
from spacy.tokens import Doc, Span, Token

from preprocessing.report_sections import ENUMERATOR, findings_and_impression

_COMPONENT = "chex_sentence_fixes"
_ABBREVIATIONS = frozenset({"approx", "fig", "figs", "no", "nos", "pt", "pts"})
_LIST_PUNCT = frozenset({".", ")"})
_SENTENCE_END = frozenset({".", "!", "?"})
_MIN_WORDS = 2

_WHITESPACE = re.compile(r"\s+")
_DOT_RUN = re.compile(r"\.(?:\s*\.)+")
_LEADING_ENUMERATOR = re.compile(r"^" + ENUMERATOR + r"\s+")


def _starts_item(doc: Doc, i: int) -> bool:
    """True if token i starts a line or the text, or follows sentence-final punctuation."""
    if i == 0:
        return True
    prev = doc[i - 1]
    return (prev.is_space and "\n" in prev.text) or prev.text in _SENTENCE_END


def _not_start(token: Token | None) -> None:
    if token is not None:
        token.is_sent_start = False


def fix_sentence_starts(doc: Doc) -> Doc:
    """Make list markers start their item's sentence and keep abbreviations inside their sentence."""
    n = len(doc)
    for i, tok in enumerate(doc):
        nxt = doc[i + 1] if i + 1 < n else None
        after = doc[i + 2] if i + 2 < n else None
        if tok.text == "#" and nxt is not None and nxt.is_digit and not tok.whitespace_ and _starts_item(doc, i):
            tok.is_sent_start = True  # "#2 Effusion": the sentencizer put "#" into the previous sentence
            _not_start(nxt)
            _not_start(after)
        elif (tok.is_digit and len(tok) <= 2 and nxt is not None and nxt.text in _LIST_PUNCT
              and not tok.whitespace_ and _starts_item(doc, i)):
            tok.is_sent_start = True  # "1. Suspicious RUL mass." / "\n2) Small effusion"
            _not_start(nxt)
            _not_start(after)
        elif (tok.lower_ in _ABBREVIATIONS and nxt is not None and nxt.text == "." and not tok.whitespace_
              and after is not None and (after.like_num or after.is_lower)):
            _not_start(after)  # "approx. 2 cm", "No. 5", "Fig. 2", "Pt. is"
    return doc


if not Language.has_factory(_COMPONENT):  # spaCy raises E004 if a copy of this module (another path) re-registers
    Language.component(_COMPONENT, func=fix_sentence_starts)


@lru_cache(maxsize=1)
def get_nlp() -> Language:
    """The sentence pipeline, built once per process (tokenizer + sentencizer + fixes)."""
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe(_COMPONENT, after="sentencizer")
    return nlp


def clean_phrase(text: str) -> str:
    """Per-sentence cleaning, also applied to dataset phrases so they compare equal to report sentences."""
    text = _DOT_RUN.sub(".", _WHITESPACE.sub(" ", text)).strip()
    text = _LEADING_ENUMERATOR.sub("", text).strip()
    return text[:1].upper() + text[1:]


def _dedup(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _clean_sentences(sents: Iterable[Span]) -> list[str]:
    cleaned = (clean_phrase(s.text) for s in sents)
    return [s for s in cleaned if len(s.split()) >= _MIN_WORDS]


def split_sentences(text: str) -> list[str]:
    """Cleaned sentences of a text with at least two words each, de-duplicated in order."""
    return _dedup(_clean_sentences(get_nlp()(text).sents))


def report_sentences_batch(texts: list[str], batch_size: int = 256) -> list[list[str]]:
    """`report_sentences` for many reports; sections of all reports go through one `nlp.pipe` stream."""
    sections = [findings_and_impression(text) for text in texts]
    docs = get_nlp().pipe((s for secs in sections for s in secs), batch_size=batch_size)
    result = []
    for secs in sections:
        result.append(_dedup(s for _ in secs for s in _clean_sentences(next(docs).sents)))
    return result


def report_sentences(report_text: str) -> list[str]:
    """Sentences of the findings then impression section, de-duplicated across both."""
    return report_sentences_batch([report_text])[0]
