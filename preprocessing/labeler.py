"""CheXpert-14 labels of report text: the interface behind the clinical-efficacy (CE) metrics.

The reference labels texts with CheXbert; its weights cannot be downloaded here, so the default `RuleLabeler` is a
rule-based approximation of it (`CheXbertLabeler` in evaluation/chexbert.py loads the real checkpoint when a user
has it; `evaluation.chexbert.load_labeler` picks one). The rules follow the CheXpert labeler's design: mention phrases per condition, then negation and
uncertainty cues, then aggregation. It has no dependency parser, so cue scope is a clause: NegEx-style windows
that stop at "but", "however", "although", ";", "which", ", there", "and a", ... (`_Sentence.blocks_forward`).

Agreement on the hand-labelled set (tests/data/labeler_sentences.yaml: 161 texts labelled as a radiologist reads
them): mention accuracy 0.985 (197 of 200 labelled mentions), micro F1 of positive 0.986 over the 13 findings. The
three misses are hedged findings the rules read as positive ("blunting ... likely reflects a small effusion",
"nodular opacity ... could represent a nipple shadow"). All 214 filled sentence templates of
preprocessing/synth/catalog.py and its normal sentences are labelled right.

Conventions (CheXpert labeler where known, else a radiologist's reading):
- Consolidation is also a Lung Opacity mention with the same polarity (as our synthetic reports label it).
- "Nodular opacity/density" is a Lung Lesion, not a Lung Opacity; "pleural(-parenchymal) scarring" is Pleural Other;
  other scarring, haziness and interstitial opacities are Lung Opacity (so the synthetic "perihilar haziness
  consistent with pulmonary edema" is Edema and Lung Opacity); "increased interstitial markings", vascular
  congestion / engorgement, Kerley lines and fluid overload are Edema mentions.
- "The lungs are clear" and "no acute cardiopulmonary process" mention nothing (blank), as in the CheXpert labeler.
- "Heart size is normal" / "normal heart size" / "cardiac silhouette within normal limits" negate Cardiomegaly;
  "cardiomediastinal silhouette is normal" negates Enlarged Cardiomediastinum only; "sharp costophrenic angles"
  negate Pleural Effusion; "borderline cardiomegaly" is uncertain.
- A removed or resolved finding is negative ("chest tube has been removed", "effusion has resolved"); a partly
  resolved one and "no change in X" stay positive. "X is unlikely" is negative.
- Negation beats uncertainty for the same mention ("no suspicious nodules", "no findings to suggest pneumonia").
- A text's label per condition is the strongest over its sentences and mentions: positive > uncertain > negative >
  blank. No Finding is positive iff no finding other than Support Devices is positive or uncertain, else blank; an
  empty text therefore gets only No Finding positive, as CheXbert's reference use does.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

CONDITIONS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
    "No Finding",
)
BLANK, POSITIVE, NEGATIVE, UNCERTAIN = 0, 1, 2, 3

_INDEX = {name: i for i, name in enumerate(CONDITIONS)}
_RANK = np.array([0, 3, 1, 2])  # code -> strength: blank < negative < uncertain < positive
_FINDINGS = [i for i, c in enumerate(CONDITIONS) if c not in ("Support Devices", "No Finding")]


class Labeler(Protocol):
    """Anything that turns texts (a sentence or a whole report each) into CheXbert-coded labels."""

    name: str

    def label(self, texts: Sequence[str]) -> np.ndarray:
        """int8 codes of shape (len(texts), 14) in CONDITIONS order."""
        ...


def strongest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise aggregation of two code arrays: positive > uncertain > negative > blank."""
    return np.where(_RANK[a] >= _RANK[b], a, b).astype(np.int8)


def with_no_finding(codes: np.ndarray) -> np.ndarray:
    """Set No Finding from the other columns (positive iff no finding is positive or uncertain, else blank)."""
    out = codes.copy()
    found = np.isin(out[:, _FINDINGS], (POSITIVE, UNCERTAIN)).any(axis=1)
    out[:, _INDEX["No Finding"]] = np.where(found, BLANK, POSITIVE)
    return out


# ---- phrase tables ---------------------------------------------------------------------------------------------
# Patterns run on a sentence's lower-cased spaCy token norms joined by single spaces (intra-word hyphens dropped, so
# "plate-like" reads "plate like"); a match must start and end on token boundaries.
_ADV = r"(?:(?:\w+ly|not|still|again|now|also|somewhat|borderline|at least|perhaps|overall) )*"
_COP = r"(?: (?:is|are|was|were|appears?|remains?|looks?|seems?|has been|have been|has become))? "  # may be absent
_NORMAL = (r"(?:normal(?: in (?:size|contour|configuration|appearance))?|within normal limits|unremarkable|"
           r"(?:at )?(?:the )?(?:upper|top) (?:limits? of )?normal(?: in size)?|normal sized?|of normal size)")
_HEART = (r"(?:heart|cardiac (?:silhouette|shadow|contours?|size)|size of the (?:heart|cardiac silhouette))"
          r"(?: (?:size|shadow))?")
_MEDIASTINUM = (r"(?:(?:cardio)?mediastinal (?:silhouette|contours?|shadow|structures|width)|cardiomediastinum|"
                r"(?:superior )?mediastinum)")
_AND_HILA = r"(?: and (?:the )?(?:hilar (?:contours?|structures|silhouettes?)|hila))?"

_POSITIVE_MENTIONS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        r"(?:mediastinal|mediastinum) widening",
        r"widen\w* (?:of )?(?:the )?" + _MEDIASTINUM,
        r"(?:enlarge(?:d|ment of)|widened|wide) (?:the )?" + _MEDIASTINUM,
        _MEDIASTINUM + _AND_HILA + _COP + _ADV + r"(?:widened|wide|enlarged)",
    ),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"cardiac enlargement",
        r"enlargement of the (?:heart|cardiac (?:silhouette|shadow|contours?))",
        r"(?:enlarged|large|increased) (?:heart|cardiac (?:silhouette|shadow|size|contours?))(?: size)?",
        _HEART + _COP + _ADV + r"(?:enlarged|large|increased|big)",
    ),
    "Lung Opacity": (
        r"opaci\w*", r"hazy", r"haziness", r"infiltrat\w*",
        r"(?:airspace|air space|alveolar) (?:disease|process|filling)",
        r"densit(?:y|ies)", r"ground glass", r"reticula\w*", r"reticulonodular",
        r"interstitial (?:abnormalit\w*|pattern|disease|lung disease|prominence|thickening|fibrosis)",
        r"(?:parenchymal )?scar(?:s|ring)?", r"peribronchial (?:thickening|cuffing)",
    ),
    "Lung Lesion": (
        r"nodul\w*", r"mass(?:es)?", r"mass ?like", r"lesions?", r"tumou?rs?", r"neoplas\w*", r"carcinoma\w*",
        r"malignan\w*", r"cancers?", r"metasta\w*", r"cavit(?:ary|ation|ating)", r"lumps?",
    ),
    "Edema": (
        r"o?edema\w*",
        r"(?:vascular|venous|pulmonary) (?:congestion|engorgement|redistribution)",
        r"engorged (?:pulmonary )?(?:vessels|vasculature)",
        r"(?:increased|prominent|prominence of(?: the)?) interstitial markings",
        r"interstitial markings" + _COP + _ADV + r"(?:increased|prominent)",
        r"(?:vascular )?indistinctness", r"indistinct (?:pulmonary )?vascul\w*",
        r"kerley(?: b)? lines?", r"cephalization", r"(?:fluid|volume) overload",
        r"congestive heart failure", r"chf",
    ),
    "Consolidation": (r"consolidat\w*",),
    "Pneumonia": (r"(?:broncho)?pneumoni\w*", r"infect\w*"),
    "Atelectasis": (r"atelecta\w*", r"collapsed?", r"volume loss"),
    "Pneumothorax": (r"(?:hydro)?pneumothora\w*", r"ptx"),
    "Pleural Effusion": (
        r"effusions?", r"pleural fluid", r"layering fluid", r"hydro(?:pneumo)?thora\w*", r"hemothorax", r"empyema",
        r"fluid (?:in|within) the (?:\w+ )?(?:pleural (?:spaces?|cavity)|fissures?)",
        r"blunt\w* (?:of )?(?:the )?(?:\w+ )?(?:costophrenic|cp) (?:angles?|sulc\w*)",
        r"(?:costophrenic|cp) (?:angles?|sulc\w*)(?: blunting|" + _COP + _ADV + r"blunted)",
    ),
    "Pleural Other": (
        r"pleural (?:thickening|scar\w*|plaques?|calcifications?)",
        r"thickening of the (?:\w+ )?pleura", r"pleuro ?parenchymal scar\w*", r"pleural parenchymal scar\w*",
        r"fibrothora\w*", r"(?:bi)?apical (?:pleural )?(?:cap|capping|thickening)",
    ),
    "Fracture": (r"fractur\w*", r"fx"),
    "Support Devices": (
        r"tubes?", r"tubing", r"ett", r"intubat\w*", r"trach(?:eostomy|eotomy|s)?", r"dob+h?off", r"picc", r"cvc",
        r"cvl", r"catheters?", r"cath",
        r"(?:picc|ij|jugular|subclavian|central|venous|arterial|midline|hickman|dialysis|femoral|lumen|ganz|"
        r"access|pa|swan|power|port) lines?",
        r"lines? (?:tip|terminat\w*|ends?|projects?|courses?|extends?)", r"tips? of the (?:\w+ ){0,2}lines?",
        r"pacemakers?", r"pacers?", r"pacing (?:wires?|leads?|device)", r"aicd", r"icd", r"defibrillators?",
        r"(?:pacemaker|pacer|icd|aicd|transvenous|epicardial|pacing|ecg|ekg|monitoring|atrial|ventricular|"
        r"device) leads?",
        r"leads? (?:terminat\w*|in the right|project\w*|overlie|extend\w*)",
        r"wires?", r"clips?", r"stents?", r"devices?", r"ports?", r"portacath", r"mediport", r"powerport",
        r"valve (?:replacement|prosthes[ie]s)", r"(?:prosthetic|mechanical|bioprosthetic|replaced) (?:\w+ )?valves?",
        r"tavr", r"tavi", r"avr", r"mvr", r"annuloplasty", r"coils?", r"(?:ivc )?filter", r"drains?",
        r"(?:intra aortic )?balloon pump", r"iabp", r"lvad", r"impella", r"ecmo", r"cannula\w*", r"electrodes?",
        r"hardware", r"screws?", r"prosthes[ie]s", r"(?:neuro)?stimulator", r"loop recorder",
    ),
}

_NEGATIVE_MENTIONS: dict[str, tuple[str, ...]] = {  # mentions that say "normal": always negative
    "Enlarged Cardiomediastinum": (
        _MEDIASTINUM + _AND_HILA + _COP + _ADV + _NORMAL,
        r"(?:cardio)?mediastinal and hilar (?:contours?|silhouettes?|structures)" + _COP + _ADV + _NORMAL,
        r"normal (?:cardio)?mediastinal (?:silhouette|contours?|width)",
    ),
    "Cardiomegaly": (
        _HEART + r"(?: and (?:the )?\w+(?: \w+)?)?" + _COP + _ADV + _NORMAL,
        r"cardiac and mediastinal (?:contours?|silhouettes?)" + _COP + _ADV + _NORMAL,
        r"normal(?: sized?)? (?:heart|cardiac (?:size|silhouette|contours?|shadow))(?: size)?",
    ),
    "Pleural Effusion": (
        r"(?:costophrenic|cp) (?:angles?|sulc\w*)" + _COP + _ADV + r"(?:sharp\w*|clear|preserved|normal)",
        r"sharp (?:costophrenic|cp) (?:angles?|sulc\w*)",
    ),
}

_EXCLUDED: dict[str, tuple[str, ...]] = {  # look-alike phrases that are not a mention of the condition
    "Lung Opacity": (
        r"nodular (?:opaci\w*|densit\w*)", r"mass ?like opaci\w*",
        r"(?:pleural|pleuro ?parenchymal|pleural parenchymal) (?:\w+ )?(?:opaci\w*|scar\w*|densit\w*)",
        r"(?:bone|osseous|bony|soft tissue|metallic|calcific|calcified|breast|surgical|skin) "
        r"(?:densit\w*|opaci\w*|scar\w*)",
    ),
    "Lung Lesion": (
        r"mass effect",
        r"(?:osseous|bone|bony|lytic|sclerotic|blastic|osteolytic|osteoblastic|skin|cutaneous|soft tissue|chest wall|"
        r"breast|nipple|mediastinal|adrenal|liver|hepatic|renal|thyroid|spinal|vertebral) (?:lesions?|mass(?:es)?|"
        r"nodules?|metasta\w*)",
    ),
    "Edema": (r"(?:soft tissue|subcutaneous|chest wall|extremity|scalp|facial|arm|leg) o?edema",),
    "Pneumonia": (r"(?:urinary tract|urinary|line|wound|skin) infect\w*",),
    "Atelectasis": (r"(?:vertebral|vertebra|compression|vertebral body) collapse",
                    r"collapse of (?:a |the )?(?:\w+ )?vertebra\w*"),
    "Pleural Effusion": (r"(?:pericardial|joint|knee|shoulder) effusions?",),
}

# ---- cues --------------------------------------------------------------------------------------------------------
_AUX = r"(?:(?:is|are|was|were|has|have|had|be)(?: been)? )?"
# scope of a cue: pre = forward; post = backward; both = forward, and backward when no mention is in its forward
# scope ("opacity, likely atelectasis" vs "atelectasis is likely"); sym = both ways ("atelectasis vs pneumonia")
_PRE, _POST, _BOTH, _SYM = "pre", "post", "both", "sym"
_NEG, _UNC, _PSEUDO = "neg", "unc", "pseudo"

_CUES: tuple[tuple[str, str, str], ...] = (  # (pattern, kind, direction); earlier ones claim their tokens first
    (r"(?:(?:can|could|would|may) not|difficult to|impossible to|unable to) (?:be )?(?:\w+ly )?"
     r"(?:exclude[ds]?|rule out|ruled out)", _UNC, _BOTH),
    (_AUX + r"(?:\w+ly )?not (?:\w+ly )?(?:excluded|ruled out)", _UNC, _BOTH),
    (r"no (?:(?:significant|appreciable|substantial|interval|definite|major|gross|further|apparent|obvious|notable|"
     r"relevant|marked|measurable) )*(?:interval )?(?:change|changes|increase|decrease|progression|worsening|"
     r"improvement|difference)", _PSEUDO, _PRE),
    (r"without (?:(?:significant|appreciable|substantial|interval) )*(?:change|changes)", _PSEUDO, _PRE),
    (r"not (?:\w+ly )?(?:changed|improved|worsened|progressed)", _PSEUDO, _PRE),
    (r"not only", _PSEUDO, _PRE),
    (r"(?:nearly|almost|partially|partly|mostly|largely|incompletely|slowly|gradually|not completely|not fully|"
     r"not entirely) (?:resolved|resolving|cleared|clearing|removed)", _PSEUDO, _PRE),
    (r"(?:partial|incomplete|near|nearly|almost)(?: complete)? (?:interval )?(?:resolution|clearing|removal)",
     _PSEUDO, _PRE),
    (_AUX + r"(?:\w+ly )?not (?:\w+ly |well )?(?:seen|identified|visualized|visualised|present|appreciated|evident|"
     r"demonstrated|detected|noted|apparent|visible|shown|observed|identifiable|detectable|elicited)", _NEG, _POST),
    (_AUX + r"(?:not likely|unlikely)", _NEG, _BOTH),
    (_AUX + r"no longer", _NEG, _BOTH),
    (_AUX + r"(?:\w+ly )?(?:resolved|cleared|removed|absent|gone|disappeared)", _NEG, _BOTH),
    (r"(?:versus|vs\.?|or possibly)", _UNC, _SYM),
    (r"(?:may|might|could) (?:also )?(?:be )?(?:present|seen|developing|evolving|forming|superimposed|"
     r"contributing|coexistent|noted)", _UNC, _POST),
    (_AUX + r"(?:also |more |most |less |quite |very )?(?:possible|possibly|likely|probable|probably|suspected|"
     r"questioned|questionable|presumed|considered|suggested|uncertain|unclear|equivocal|a possibility|"
     r"a consideration|favored)", _UNC, _BOTH),
    (r"(?:may|might|could|possibility(?: of)?|perhaps|maybe|potential(?:ly)?|presumabl[ey]|presumptive|"
     r"question of|suspicio(?:n|us)(?: of| for)?|suspect|concern(?:ing)? (?:for|of)|worrisome(?: for)?|"
     r"suggest\w*(?: of)?|differential(?: diagnosis)?(?: includes?| would include)?|consider|borderline|"
     r"indeterminate|(?:raises?|raising) (?:the )?(?:possibility|question|concern)(?: of)?|can not be distinguished)",
     _UNC, _PRE),
    (r"(?:no|not|without|free of|negative for|absence of|resolution of|clear of|rather than|removal of|nor|"
     r"neither|never)", _NEG, _PRE),
)

_CLAUSE_BREAKS = frozenset({
    "but", "however", "although", "though", "yet", "except", "whereas", "while", "which", "aside", "apart",
    "besides", "since", "because", "who", "where", ";", ":", ".",
})
_COPULAS = frozenset({"is", "are", "was", "were", "has", "have", "had", "remains", "remain", "appears", "appear"})
_SPLICE_STARTS = frozenset({  # after "," or "and", these start a new statement that a cue does not reach
    "a", "an", "the", "there", "this", "these", "it", "stable", "unchanged", "persistent", "persisting", "mild",
    "mildly", "moderate", "moderately", "severe", "small", "large", "minimal", "trace", "increased", "increasing",
    "decreased", "decreasing", "worsening", "worsened", "improving", "improved", "residual", "again", "interval",
    "right", "left", "bilateral",
})
_GUARDED = r"(?<!\S)(?:{})(?!\S)"


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(_GUARDED.format("|".join(f"(?:{p})" for p in patterns)))


_POS_RE = {c: _compile(p) for c, p in _POSITIVE_MENTIONS.items()}
_NEG_RE = {c: _compile(p) for c, p in _NEGATIVE_MENTIONS.items()}
_EXC_RE = {c: _compile(p) for c, p in _EXCLUDED.items()}
_CUE_RE = tuple((_compile((p,)), kind, direction) for p, kind, direction in _CUES)


@dataclass(frozen=True)
class _Span:
    start: int  # first token
    end: int  # one past the last token
    kind: str = ""  # mention: condition name; cue: neg | unc | pseudo
    direction: str = ""
    fixed_negative: bool = False


class _Sentence:
    """One sentence as token norms, with the regex view over them and the scope rules of its cues."""

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.text = " ".join(words)
        self._tok_at = np.zeros(len(self.text) + 1, int)
        pos = 0
        for i, w in enumerate(words):
            self._tok_at[pos:pos + len(w) + 1] = i
            pos += len(w) + 1
        self._tok_at[-1] = len(words)

    def spans(self, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
        return [(int(self._tok_at[m.start()]), int(self._tok_at[m.end() - 1]) + 1) for m in pattern.finditer(self.text)]

    def _has_or_after(self, i: int) -> bool:
        for w in self.words[i:]:
            if w in _CLAUSE_BREAKS:
                return False
            if w in ("or", "nor"):
                return True
        return False

    def blocks_forward(self, i: int, cue_starts: set[int]) -> bool:
        """Whether token i ends the forward scope of a cue before it."""
        w = self.words[i]
        if w in _CLAUSE_BREAKS:
            return True
        if w == "with" and (i == 0 or self.words[i - 1] not in ("consistent", "compatible")):
            return True
        nxt = self.words[i + 1] if i + 1 < len(self.words) else ""
        starts_new = nxt in _SPLICE_STARTS or (i + 1) in cue_starts
        if w == "and":
            return starts_new
        if w == ",":  # a list "no A, B, or C" keeps its scope; a comma splice "no A, small B" ends it
            return starts_new and not self._has_or_after(i + 1)
        return False

    def blocks_backward(self, i: int) -> bool:
        return self.words[i] in _CLAUSE_BREAKS or self.words[i] in _COPULAS or self.words[i] == ","


def _find_cues(sent: _Sentence) -> list[_Span]:
    taken = np.zeros(len(sent.words), bool)
    cues = []
    for pattern, kind, direction in _CUE_RE:
        for s, e in sent.spans(pattern):
            if not taken[s:e].any():
                taken[s:e] = True
                cues.append(_Span(s, e, kind, direction))
    return [c for c in cues if c.kind != _PSEUDO]


def _find_mentions(sent: _Sentence) -> list[_Span]:
    mentions = []
    for cond, pattern in _POS_RE.items():
        excluded = [range(s, e) for s, e in sent.spans(_EXC_RE[cond])] if cond in _EXC_RE else []
        fixed = sent.spans(_NEG_RE[cond]) if cond in _NEG_RE else []
        for s, e in fixed:
            mentions.append(_Span(s, e, cond, fixed_negative=True))
        for s, e in sent.spans(pattern):
            if not any(s in r or e - 1 in r for r in excluded) and not any(fs <= s < fe for fs, fe in fixed):
                mentions.append(_Span(s, e, cond))
    return mentions


def _code(m: _Span, cues: list[_Span], mentions: list[_Span], sent: _Sentence) -> int:
    if m.fixed_negative:
        return NEGATIVE
    cue_starts = {c.start for c in cues}

    def forward_clear(a: int, b: int) -> bool:
        return not any(sent.blocks_forward(i, cue_starts) for i in range(a, b))

    def reaches_forward(c: _Span) -> bool:
        return c.end <= m.start and forward_clear(c.end, m.start)

    def reaches_backward(c: _Span) -> bool:
        if c.start < m.end or any(sent.blocks_backward(i) for i in range(m.start, c.start)):
            return False
        if c.direction == _BOTH:  # "opacity, likely atelectasis": the cue belongs to what follows it
            return not any(o.start >= c.end and forward_clear(c.end, o.start) for o in mentions)
        return True

    hits = set()
    for c in cues:
        inside = c.start >= m.start and c.end <= m.end
        forward = c.direction in (_PRE, _BOTH, _SYM) and reaches_forward(c)
        backward = c.direction in (_POST, _BOTH, _SYM) and reaches_backward(c)
        if inside or forward or backward:
            hits.add(c.kind)
    if _NEG in hits:
        return NEGATIVE
    return UNCERTAIN if _UNC in hits else POSITIVE


class RuleLabeler:
    """Rule-based CheXpert-14 labeler (an approximation of CheXbert; conventions in the module docstring)."""

    name = "rules"

    def __init__(self, batch_size: int = 256) -> None:
        from preprocessing.sentences import get_nlp  # spaCy loads only when labelling, not for the constants

        self._nlp = get_nlp()
        self.batch_size = batch_size

    def _sentences(self, doc) -> list[_Sentence]:
        out = []
        for sent in doc.sents:
            words = [t.norm_ for t in sent if not t.is_space
                     and not (t.text == "-" and not t.whitespace_ and t.i > 0 and not doc[t.i - 1].whitespace_)]
            if words:
                out.append(_Sentence(words))
        return out

    def _label_sentence(self, sent: _Sentence) -> np.ndarray:
        codes = np.zeros(len(CONDITIONS), np.int8)
        cues = _find_cues(sent)
        mentions = _find_mentions(sent)
        for m in mentions:
            j = _INDEX[m.kind]
            codes[j] = max(codes[j], _code(m, cues, mentions, sent), key=_RANK.__getitem__)
        lo, cons = _INDEX["Lung Opacity"], _INDEX["Consolidation"]
        codes[lo] = max(codes[lo], codes[cons], key=_RANK.__getitem__)
        return codes

    def mentions(self, texts: Sequence[str]) -> np.ndarray:
        """Codes (len(texts), 14) of what each text mentions, aggregated over its sentences (positive > uncertain >
        negative), before the No Finding rule: a text that mentions nothing stays all blank."""
        out = np.zeros((len(texts), len(CONDITIONS)), np.int8)
        for row, doc in enumerate(self._nlp.pipe((t or "" for t in texts), batch_size=self.batch_size)):
            for sent in self._sentences(doc):
                out[row] = strongest(out[row], self._label_sentence(sent))
        return out

    def label(self, texts: Sequence[str]) -> np.ndarray:
        """Codes (len(texts), 14): :meth:`mentions` with No Finding set from the findings."""
        return with_no_finding(self.mentions(texts))
