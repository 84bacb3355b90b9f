"""The results as a markdown table laid out like the paper's Table 2 (one column: this model; one more per baseline), in %."""
from __future__ import annotations

from typing import Any

from evaluation.skips import group_skips

HEADLINE: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "sg_mscxr": ("Sentence grounding", "MS-CXR", ("mIoU", "mAP")),
    "od_vindr": ("Pathology detection", "VinDr-CXR", ("mAP", "AP@0.1", "AP@0.3", "AP@0.5")),
    "od_nih": ("Pathology detection", "NIH ChestX-ray8", ("mAP", "AP@0.1", "AP@0.3", "AP@0.5")),
    "od_mscxr": ("Pathology detection", "MS-CXR", ("mAP", "AP@0.1", "AP@0.3", "AP@0.5")),
    "rc_mscxr": ("Region classification", "MS-CXR", ("auroc", "accuracy")),
    "rc_cig": ("Region classification", "Chest ImaGenome", ("auroc_weighted", "auroc_macro")),
    "re_mscxr": ("Region explanation", "MS-CXR", ("METEOR", "mic_f1_14", "mac_f1_14")),
    "re_cig": ("Region explanation", "Chest ImaGenome", ("METEOR", "mic_f1_14", "mac_f1_14")),
    "rg_mimic": ("Full report generation", "MIMIC-CXR", ("METEOR", "mic_f1_14", "mac_f1_14", "ex_f1_14", "mic_f1_5plus",
                                                         "mac_f1_5plus", "sentences_without_false_claim", "sentences_per_report")),
}
NAMES = {"mic_f1_14": "Mic-F1-14", "mac_f1_14": "Mac-F1-14", "ex_f1_14": "Ex-F1-14", "mic_f1_5plus": "Mic-F1-5+",
         "mac_f1_5plus": "Mac-F1-5+", "auroc": "AUROC", "auroc_weighted": "AUROC (weighted)", "auroc_macro": "AUROC (macro)",
         "accuracy": "accuracy (macro)", "sentences_without_false_claim": "sentences w/o false claim",
         "sentences_per_report": "sentences / report"}
COUNTS = frozenset({"sentences_per_report"})  # shown as they are, not in %


def cell(stat: dict[str, float] | None, scale: float = 100.0) -> str:
    """``mean ± std`` (the full-set value where no resample gave a mean), times ``scale`` (100: in %)."""
    if not stat or stat.get("value") != stat.get("value"):
        return "n/a"
    mean = stat["mean"] if stat["mean"] == stat["mean"] else stat["value"]
    std = stat["std"]
    return f"{scale * mean:.1f} ± {scale * std:.1f}" if std == std else f"{scale * mean:.1f}"


def markdown(results: dict[str, Any], column: str = "ChEX (ours)", baselines: dict[str, dict[str, Any]] | None = None,
             protocol: str | None = None) -> str:
    """Rows in the paper's task order; ``n`` = evaluated samples (images, phrases, boxes or regions). ``baselines``
    (predictor -> its results, shaped like ``results``) adds a column per baseline beside the model's; ``protocol``
    (its name) is said under the table, with what the means left out."""
    baselines = baselines or {}
    extra = "".join(f" {name} |" for name in baselines)
    lines = [f"| Task | Dataset | Metric | n | {column} |{extra}", "| --- | --- | --- | --- | --- |" + " --- |" * len(baselines)]
    for task, (title, dataset, keys) in HEADLINE.items():
        if task not in results:
            continue
        r = results[task]
        for key in keys:
            scale = 1.0 if key in COUNTS else 100.0
            others = "".join(f" {cell(b.get(task, {}).get('metrics', {}).get(key), scale)} |" for b in baselines.values())
            lines.append(f"| {title} | {dataset} | {NAMES.get(key, key)} | {r['n']} | {cell(r['metrics'].get(key), scale)} |{others}")
    note = ("\n\nValues in % (sentences / report: a count), bootstrap mean ± std over resamples (250 for boxes and "
            "classes, 10 for text).\n")
    if protocol:
        said = {"paper": " (every item as the paper's code computes it)",
                "ours": " (grounding selection, ground-truth boxes and MS-CXR split are ours, not the paper's)"}
        note += f"Protocol: {protocol}{said.get(protocol, '')}; docs/metrics.md defines each metric.\n"
    left_out = [f"{t} {', '.join(ms)}: {len(names)}" for t, r in results.items()
                for names, ms in group_skips(r.get("skipped") or {}).items()]
    if left_out:
        note += f"Left out of a mean (no ground truth or no negatives; named in results.json): {'; '.join(left_out)}.\n"
    if baselines:
        note += ("Baselines: random = chance-level predictions, oracle = the ground truth (the ceiling on this data), "
                 "shuffled = this model shown another image of the split (another patient's where possible).\n")
    return "\n".join(lines) + note


def headline_rows(results: dict[str, Any], baselines: dict[str, dict[str, Any]] | None = None) -> str:
    """Each task's first headline metric on one aligned plain-text line (the console's closing summary; the full
    table is ``markdown``): task, dataset, metric, n, this model, then each baseline."""
    baselines = baselines or {}
    rows = [["Task", "Dataset", "Metric", "n", "ChEX", *baselines]]
    for task, (title, dataset, keys) in HEADLINE.items():
        if task in results:
            key, scale = keys[0], 1.0 if keys[0] in COUNTS else 100.0
            rows.append([title, dataset, NAMES.get(key, key), str(results[task]["n"]),
                         cell(results[task]["metrics"].get(key), scale),
                         *(cell(b.get(task, {}).get("metrics", {}).get(key), scale) for b in baselines.values())])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     .rstrip() for r in rows)
