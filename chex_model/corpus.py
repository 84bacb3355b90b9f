"""Text the offline tokenizers are trained on when no pretrained tokenizer is given: every prompt string plus
report sentences of the synthetic generator (the vocabulary the demo model will read and write)."""
from __future__ import annotations

import numpy as np

from chex_model import prompts
from preprocessing.synth.truth import sample_studies


def prompt_strings() -> list[str]:
    out: list[str] = []
    for table in (prompts.chexpert_prompts(), prompts.cig_finding_prompts(), prompts.vindr_prompts(),
                  prompts.ms_cxr_prompts(), prompts.nih_prompts()):
        for pos, neg in table.values():
            out += [pos, neg]
    out += list(prompts.anatomy_prompts().values())
    report = prompts.load_prompt_set("report")
    return out + report.pathology + report.anatomy


def default_corpus(studies: int = 400, seed: int = 0) -> list[str]:
    """Deterministic: the same list on every call with the same arguments."""
    lines = prompt_strings()
    for study in sample_studies(np.random.default_rng(seed), studies, 0.1):
        lines += [s.text for s in study.findings + study.impression]
    return lines
