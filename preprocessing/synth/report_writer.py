"""Free-text MIMIC-CXR reports in the real layout: a centred title, then every line starting with one space."""
from __future__ import annotations

import re
import textwrap

from preprocessing.synth.truth import Sentence, StudyTruth

TITLE = " " * 33 + "FINAL REPORT"
ADDENDUM_TITLE = " " * 32 + "FINAL ADDENDUM"
INDICATIONS = ("cough // ?pneumonia", "shortness of breath", "fever, evaluate for infiltrate",
               "chest pain", "s/p line placement", "hypoxia")


def _paragraph(text: str) -> list[str]:
    """Wrap at 79 characters including the leading space that every report line carries."""
    return [" " + line for line in textwrap.wrap(text, width=78, break_on_hyphens=False)]


def _section(header: str, text: str) -> list[str]:
    if len(header) + len(text) < 70 and header not in ("FINDINGS", "IMPRESSION"):
        return [f" {header}:  {text}", " "]
    return [f" {header}: ", " ", *_paragraph(text), " "]


def _join(sentences: list[Sentence]) -> str:
    return "  ".join(s.text for s in sentences)


def write_report(study: StudyTruth, seed: int) -> str:
    """Render the study's sentences with the header style it was assigned (see StudyTruth.report_style)."""
    who = ("man", "woman")[seed % 2]
    portable = study.images[0].view == "AP"
    preamble = [
        f" EXAMINATION:  {'CHEST (PORTABLE AP)' if portable else 'CHEST (PA AND LAT)'}", " ",
        f" INDICATION:  ___ year old {who} with {INDICATIONS[seed % len(INDICATIONS)]}", " ",
        " TECHNIQUE:  Portable AP chest" if portable else " TECHNIQUE:  Chest PA and lateral", " ",
        " COMPARISON:  ___", " ",
    ]
    style = study.report_style
    if style == "headerless":
        lines = [TITLE, " ", *_paragraph(_join(study.sentences))]
    elif style == "impression_only":
        lines = [TITLE, *preamble, *_section("IMPRESSION", _join(study.sentences))]
    else:
        lines = [TITLE, *preamble, *_section("FINDINGS", _join(study.findings)),
                 *_section("IMPRESSION", _join(study.impression))]
        if style == "wet_read":
            lines[1:1] = [" WET READ: ___ ___ 8:19 AM", *_paragraph(study.sentences[0].text), " "]
        elif style == "addendum":
            lines = [ADDENDUM_TITLE, " ADDENDUM:  Findings were discussed with Dr. ___ at 9:15 AM.", " ",
                     " " + "_" * 78, " ", *lines]
    while lines and lines[-1] == " ":
        lines.pop()
    return "\n".join(lines) + "\n"


def raw_phrase(report: str, sentence: str) -> str:
    """The sentence as it stands in the report, line breaks included (how Chest ImaGenome quotes phrases)."""
    pattern = r"\s+".join(re.escape(word) for word in sentence.split())
    match = re.search(pattern, report)
    return match.group(0) if match else sentence
