"""Section splitting of MIMIC-CXR free-text reports and the findings/impression text ChEX trains on.

`split_sections` re-implements the *behaviour* of the official MIMIC-CXR section parser (MIT-LCP
`section_parser.py`, see specs/dataset-formats.md 2.4) so that section names agree with the published
`mimic_cxr_sectioned.csv` and with the ChEX/RGRG reference. The per-study custom rules of the official parser
are not applied: the reference drops those studies before sectioning.
"""

import re

# "\n", ONE space, an upper-case name, ":", one whitespace char. Not preceded by "\n " => not a header.
_HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s")
_PARAGRAPH = "\n \n"
_LINE_ENDS = re.compile(r"\r\n?")

# Fixed synonym/typo map, applied before the substring rules (a few entries are also covered by those).
_NAME_MAP: dict[str, str] = {
    "comparisons": "comparison",
    "clinical history": "history", "patient history": "history", "pfi": "history",
    "reason for exam": "indication", "reason for examination": "indication",
    "clinical indication": "indication", "indications": "indication",
    "conclusion": "impression", "conclusions": "impression",
    "findings and impression": "impression", "findings/impression": "impression",
    "impresson": "impression", "impresion": "impression", "imression": "impression", "impressiom": "impression",
    "findngs": "findings", "findins": "findings", "fidings": "findings", "finding": "findings",
    "chest, two views": "findings",
    "exam": "examination", "type of examination": "examination",
    "recommendation": "recommendations", "recommendation(s)": "recommendations",
}
# Checked in this order: the first word contained in the name wins.
_CANONICAL_WORDS = ("impression", "findings", "history", "comparison", "addendum")
# Templated view headers ("CHEST, PA AND LATERAL:", "PORTABLE AP CHEST:") introduce the findings.
_VIEW_WORDS = ("chest", "portable", "pa and lat", "ap and lat", "ap view", "pa view", "two views", "single view",
               "frontal", "upright", "supine")

# Section-text cleaning (ChEX removes wet-read stamps and template labels; this list is ours):
ENUMERATOR = r"(?:#\s?\d{1,2}|\d{1,2}[.)])"  # "1.", "2)", "#3", "# 4" list markers
_START = r"(^\s*|[.!?:]\s+|\n\s*)"  # text start, after sentence punctuation, or a line start
_WET_READ = re.compile(r"WET READ(?: VERSION #?\d+)?:?.{0,80}?\b[AP]M\b", re.DOTALL)  # "WET READ: ___ ___ 8:19 AM"
_BANNER = re.compile(r"FINAL (?:REPORT|ADDENDUM)|_{4,}")  # title lines and the addendum separator line
# Upper-case labels of >= 2 chars ending in ":" ("IMPRESSION:", "PA AND LATERAL CHEST RADIOGRAPH:"), stacked too.
_LABELS = re.compile(_START + r"(?:[A-Z][A-Z ,()/&-]*[A-Z)]:[ \t]*)+")
# Enumerators starting the text or a sentence; a line-start one after text without a period is kept so the
# sentence splitter still sees an item boundary there.
_SENTENCE_ENUMERATOR = re.compile(r"(^\s*|[.!?:]\s+)" + ENUMERATOR + r"\s+")
_SPACES = re.compile(r"[ \t]+")


def normalize_section_name(name: str) -> str:
    """Map a raw header to the official canonical name, so typos and synonyms land in the same section."""
    name = name.strip().lower()
    name = _NAME_MAP.get(name, name)
    for word in _CANONICAL_WORDS:
        if word in name:
            return word
    if any(word in name for word in _VIEW_WORDS):
        return "findings"
    return name


def _header_matches(text: str) -> list[re.Match[str]]:
    """Headers in order. As in the official parser, the next search starts at the first newline after the end
    of the previous header, so a header that ends its line swallows a header on the line right below it."""
    matches: list[re.Match[str]] = []
    pos = 0
    while (match := _HEADER.search(text, pos)) is not None:
        matches.append(match)
        pos = text.find("\n", match.end())
        if pos < 0:
            break
    return matches


def split_sections(text: str) -> list[tuple[str, str]]:
    """(normalized name, stripped text) per section, in report order; duplicates are kept.

    `preamble` holds the text before the first header, `full report` the whole text if there is no header.
    Empty `findings`/`impression` sections are dropped; if neither remains and the last section has several
    paragraphs, everything after its first paragraph is added as `last_paragraph` (official behaviour).
    CRLF and CR line ends are read as LF first, as the official parser's text-mode ``open`` does (reports reach us
    as bytes, so nothing else would: a CR-only report would have no header at all).
    """
    text = _LINE_ENDS.sub("\n", text)
    matches = _header_matches(text)
    if not matches:
        sections = [("full report", text)]
    else:
        sections = [("preamble", text[: matches[0].start()])]
        ends = [m.start() for m in matches[1:]] + [len(text)]
        sections += [(normalize_section_name(m.group(1)), text[m.end(): end]) for m, end in zip(matches, ends)]
    sections = [(n, t) for n, t in sections if t.strip() or n not in ("findings", "impression")]
    if not any(n in ("findings", "impression") for n, _ in sections) and _PARAGRAPH in sections[-1][1]:
        sections.append(("last_paragraph", sections[-1][1].split(_PARAGRAPH, 1)[1]))
    return [(name, body.strip()) for name, body in sections]


def clean_section_text(text: str) -> str:
    """Remove wet-read stamps, banners, upper-case template labels and sentence-initial list enumerators.

    Line breaks are kept (one per line, spaces collapsed) so the sentence splitter can still see list items
    that start a line without a period before them.
    """
    text = _BANNER.sub(" ", _WET_READ.sub(" ", text))
    text = _SENTENCE_ENUMERATOR.sub(r"\1", _LABELS.sub(r"\1", text))
    lines = (_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def findings_and_impression(text: str) -> list[str]:
    """Cleaned texts of the LAST `findings` then the LAST `impression` section (each if present).

    Fallback (our choice, the reference drops such studies): with neither section, use `last_paragraph`, so
    header-less reports still yield text. Sections that are empty after cleaning are left out.
    """
    last = dict(split_sections(text))  # later duplicates overwrite earlier ones
    names = [n for n in ("findings", "impression") if n in last] or ["last_paragraph"]
    cleaned = (clean_section_text(last[n]) for n in names if n in last)
    return [section for section in cleaned if section]
