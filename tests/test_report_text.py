"""Report sectioning and sentence splitting on hand-written reports in the real MIMIC-CXR text layout."""

import importlib.util
import shutil
import textwrap
from pathlib import Path

import pytest
from spacy.language import Language

from preprocessing import sentences
from preprocessing.report_sections import findings_and_impression, normalize_section_name, split_sections
from preprocessing.sentences import clean_phrase, report_sentences, report_sentences_batch, split_sentences


def _layout(body: str, title: str = "FINAL REPORT") -> str:
    """Centered title line, then every line prefixed with exactly one space ("blank" lines become " ")."""
    lines = textwrap.dedent(body).strip("\n").splitlines()
    return " " * 33 + title + "\n" + "\n".join(" " + line for line in lines)


NORMAL = _layout("""
    EXAMINATION:  CHEST (PA AND LAT)

    INDICATION:  ___ year old woman with cough  // ?pneumonia

    TECHNIQUE:  Chest PA and lateral

    COMPARISON:  ___

    FINDINGS:

    Heart size is normal.  There is a new small left pleural effusion.  No
    pneumothorax.  Heart size is normal.

    IMPRESSION:

    Small left pleural effusion.  No pneumothorax.
""")

IMPRESSION_ONLY = _layout("""
    EXAMINATION:  CHEST (PORTABLE AP)

    INDICATION:  ___ year old man with dyspnea.

    IMPRESSION:  Lungs are clear.  Normal.  No pleural effusion.
""")

HEADERLESS = _layout("""
    CHEST RADIOGRAPH PERFORMED ON ___

    Lungs are clear.  Cardiomediastinal silhouette is normal.

    No pneumothorax.
""")

WET_READ = _layout("""
    WET READ: ___ ___ 8:19 AM
    Left basilar opacity, possibly atelectasis.

    EXAMINATION:  CHEST (PORTABLE AP)

    FINDINGS:

    Left basilar opacity is likely atelectasis.  No pneumothorax.

    IMPRESSION:  WET READ: ___ ___ 9:02 PM  Left basilar atelectasis.
""")

ADDENDUM_FIRST = _layout("""
    ADDENDUM:  Findings were discussed with Dr. ___ by telephone at 10:15 AM on
    ___.

    ______________________________________________________________________________
                                    FINAL REPORT
    EXAMINATION:  CHEST (PA AND LAT)

    FINDINGS:

    Mild pulmonary vascular congestion.

    IMPRESSON:  Mild pulmonary edema.
""", title="FINAL ADDENDUM")

NUMBERED = _layout("""
    FINDINGS:  Heart size is mildly enlarged.  There is no pneumothorax.

    IMPRESSION:

    1.  Mild cardiomegaly.
    2.  New right upper lobe opacity, concerning for pneumonia
    3.  No pleural effusion.
    #4 Follow-up radiograph recommended.
""")

TEMPLATED_HEADERS = _layout("""
    EXAMINATION:  CHEST (PA AND LAT)

    FINDINGS:

    CHEST, PA AND LATERAL:  The lungs are clear.  No focal consolidation.

    FINDINGS AND IMPRESSION:  No acute cardiopulmonary process.
""")

INLINE_HEADER = _layout("""
    FINDINGS:  Heart size is normal.  IMPRESSION:  No acute process.
""")

FIXTURES = [NORMAL, IMPRESSION_ONLY, HEADERLESS, WET_READ, ADDENDUM_FIRST, NUMBERED, TEMPLATED_HEADERS, INLINE_HEADER]


@pytest.mark.parametrize("report", FIXTURES)
def test_fixtures_have_the_real_layout(report: str) -> None:
    first, *rest = report.split("\n")
    assert first.startswith(" " * 20) and first.strip() in ("FINAL REPORT", "FINAL ADDENDUM")
    for line in rest:
        assert line.startswith(" ") and len(line) <= 79
        assert line == " " or line[1] != " " or line.strip() == "FINAL REPORT"


def test_normal_report_sections() -> None:
    assert split_sections(NORMAL) == [
        ("preamble", "FINAL REPORT"),
        ("examination", "CHEST (PA AND LAT)"),
        ("indication", "___ year old woman with cough  // ?pneumonia"),
        ("technique", "Chest PA and lateral"),
        ("comparison", "___"),
        ("findings", "Heart size is normal.  There is a new small left pleural effusion.  No\n pneumothorax."
                     "  Heart size is normal."),
        ("impression", "Small left pleural effusion.  No pneumothorax."),
    ]


def test_normal_report_sentences_deduplicated_within_and_across_sections() -> None:
    assert report_sentences(NORMAL) == [
        "Heart size is normal.", "There is a new small left pleural effusion.", "No pneumothorax.",
        "Small left pleural effusion.",
    ]


def test_impression_only_keeps_negations_and_drops_single_words() -> None:
    assert [name for name, _ in split_sections(IMPRESSION_ONLY)] == [
        "preamble", "examination", "indication", "impression"]
    assert findings_and_impression(IMPRESSION_ONLY) == ["Lungs are clear. Normal. No pleural effusion."]
    assert report_sentences(IMPRESSION_ONLY) == ["Lungs are clear.", "No pleural effusion."]


def test_headerless_report_falls_back_to_text_after_first_paragraph() -> None:
    assert split_sections(HEADERLESS) == [
        ("full report", HEADERLESS.strip()),
        ("last_paragraph", "Lungs are clear.  Cardiomediastinal silhouette is normal.\n \n No pneumothorax."),
    ]
    assert report_sentences(HEADERLESS) == [
        "Lungs are clear.", "Cardiomediastinal silhouette is normal.", "No pneumothorax."]


def test_wet_read_header_is_its_own_section_and_inline_stamp_is_stripped() -> None:
    assert split_sections(WET_READ)[1] == ("wet read", "___ ___ 8:19 AM\n Left basilar opacity, possibly atelectasis.")
    assert findings_and_impression(WET_READ) == [
        "Left basilar opacity is likely atelectasis. No pneumothorax.", "Left basilar atelectasis."]


def test_addendum_first_report_uses_the_original_report_sections() -> None:
    sections = split_sections(ADDENDUM_FIRST)
    assert [name for name, _ in sections] == ["preamble", "addendum", "examination", "findings", "impression"]
    assert sections[0] == ("preamble", "FINAL ADDENDUM")
    assert sections[1][1].endswith("_" * 78 + "\n" + " " * 33 + "FINAL REPORT")
    assert report_sentences(ADDENDUM_FIRST) == ["Mild pulmonary vascular congestion.", "Mild pulmonary edema."]


def test_addendum_before_headerless_report_drops_separator_and_banner() -> None:
    report = _layout("""
        ADDENDUM:  Wrong side was dictated, corrected below.

        ______________________________________________________________________________
                                        FINAL REPORT
        Right lower lobe opacity.  No effusion.
    """, title="FINAL ADDENDUM")
    assert [name for name, _ in split_sections(report)] == ["preamble", "addendum", "last_paragraph"]
    assert findings_and_impression(report) == ["Right lower lobe opacity. No effusion."]


def test_numbered_impression_loses_enumerators_and_splits_items() -> None:
    assert findings_and_impression(NUMBERED)[1] == (
        "Mild cardiomegaly.\nNew right upper lobe opacity, concerning for pneumonia\n3. No pleural effusion.\n"
        "Follow-up radiograph recommended.")
    assert report_sentences(NUMBERED) == [
        "Heart size is mildly enlarged.", "There is no pneumothorax.", "Mild cardiomegaly.",
        "New right upper lobe opacity, concerning for pneumonia", "No pleural effusion.",
        "Follow-up radiograph recommended.",
    ]


def test_templated_headers_map_to_findings_and_impression_and_empty_findings_is_dropped() -> None:
    assert split_sections(TEMPLATED_HEADERS)[2:] == [
        ("findings", "The lungs are clear.  No focal consolidation."),
        ("impression", "No acute cardiopulmonary process."),
    ]


@pytest.mark.parametrize(("raw", "name"), [
    ("IMPRESSON", "impression"), ("FINDNGS", "findings"), ("FINDINGS AND IMPRESSION", "impression"),
    ("CONCLUSION", "impression"), ("CHEST, PA AND LATERAL", "findings"), ("PORTABLE AP VIEW", "findings"),
    ("CLINICAL HISTORY", "history"), ("PFI", "history"), ("REASON FOR EXAMINATION", "indication"),
    ("COMPARISONS", "comparison"), ("TYPE OF EXAMINATION", "examination"), ("RECOMMENDATION(S)", "recommendations"),
    ("CHEST", "findings"), ("PORTABLE SEMI-ERECT", "findings"), ("TECHNIQUE", "technique"),
    ("NOTIFICATION", "notification"),
])
def test_section_name_normalization(raw: str, name: str) -> None:
    assert normalize_section_name(raw) == name


def test_header_not_preceded_by_newline_space_is_not_detected() -> None:
    assert [name for name, _ in split_sections(INLINE_HEADER)] == ["preamble", "findings"]
    assert findings_and_impression(INLINE_HEADER) == ["Heart size is normal. No acute process."]
    assert split_sections("FINAL REPORT\nIMPRESSION: No acute process.") == [
        ("full report", "FINAL REPORT\nIMPRESSION: No acute process.")]


def test_header_ending_its_line_swallows_the_header_on_the_next_line() -> None:
    report = _layout("""
        COMPARISON:
        FINDINGS:  The lungs are clear.

        IMPRESSION:  Normal chest.
    """)
    assert split_sections(report)[1:] == [
        ("comparison", "FINDINGS:  The lungs are clear."), ("impression", "Normal chest.")]


def test_report_without_usable_text_gives_nothing() -> None:
    assert findings_and_impression("") == []
    assert report_sentences(" " * 33 + "FINAL REPORT\n Normal.") == []


@pytest.mark.parametrize(("text", "expected"), [
    ("Nodule measures approx. 2 cm. Heart normal.", ["Nodule measures approx. 2 cm.", "Heart normal."]),
    ("Patient No. 5 was seen. Fig. 2 shows it.", ["Patient No. 5 was seen.", "Fig. 2 shows it."]),
    ("Pt. is s/p CABG. Lungs clear.", ["Pt. is s/p CABG.", "Lungs clear."]),
    ("Called Dr. Smith at 3:15 p.m. today. Unchanged vs. prior, e.g. CT.",
     ["Called Dr. Smith at 3:15 p.m. today.", "Unchanged vs. prior, e.g. CT."]),
    ("From St. Mary hospital. Size 2.3 cm vs. 1.8 cm.", ["From St. Mary hospital.", "Size 2.3 cm vs. 1.8 cm."]),
    ("1. Suspicious RUL mass, recommend biopsy. 2. Small effusion.",
     ["Suspicious RUL mass, recommend biopsy.", "Small effusion."]),
    ("Lines as follows\n1) Tube in stomach\n2) Line in SVC",
     ["Lines as follows", "Tube in stomach", "Line in SVC"]),
    ("#1 Suspicious mass. #2 Small effusion.", ["Suspicious mass.", "Small effusion."]),
    ("Measures 1 cm. 2 cm nodule in RUL.", ["Measures 1 cm.", "2 cm nodule in RUL."]),
])
def test_split_sentences_abbreviations_and_lists(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_clean_phrase_matches_sentence_cleaning() -> None:
    assert clean_phrase("1. left lower\n   lobe opacity. .") == "Left lower lobe opacity."
    assert clean_phrase("#2  small   effusion") == "Small effusion"


def test_batch_equals_single_calls() -> None:
    reports = [NORMAL, "", NUMBERED, HEADERLESS]
    assert report_sentences_batch(reports) == [report_sentences(r) for r in reports]
    assert report_sentences_batch(reports)[1] == []


def test_second_import_does_not_re_register_the_component(tmp_path: Path) -> None:
    # A copy at another path (e.g. an installed package next to the source tree): spaCy raises E004 on a
    # second registration of the name from another file, so the module must skip it.
    copy = tmp_path / "sentences_copy.py"
    shutil.copyfile(sentences.__file__, copy)
    spec = importlib.util.spec_from_file_location("sentences_copy", copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert Language.has_factory("chex_sentence_fixes")
    assert module.get_nlp().get_pipe("chex_sentence_fixes") is sentences.fix_sentence_starts
    assert module.split_sentences("1. Small effusion.") == ["Small effusion."]
