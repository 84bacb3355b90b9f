"""Box + text queries: what should a box's ROI feature be fused with? On the Chest ImaGenome regions of the MIMIC-CXR
frontal images of one split, every region box is asked (a) alone (a box query), (b) with its region's name fused as
the raw prompt embedding (`detector.box_text_fusion: prompt`), (c) with the name's decoded query token, the one of
the prompt's boxes that overlaps the given box most (`decoded`, the default). Scores per variant:
- RC CIG: weighted AUROC of the 53 findings per region (the evaluation's `rc_cig` metric, no bootstrap);
- RE CIG: corpus METEOR of the generated region text against the region's phrases (regions with phrases).

No stage trains box + text queries; this measures which fusion a trained model tolerates.
Usage: ``python bench/box_text_fusion.py --model MODEL_DIR --tables INGEST_DIR [--split test] [--max-images N]``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("box only", "box + prompt embedding", "box + decoded query token")


@torch.inference_mode()
def region_tokens(model, rows: list[dict], truth, variant: str, batch_size: int = 16) -> list[torch.Tensor]:
    """ROI tokens (R_i, d) of each row's present regions under one fusion variant."""
    from chex_model import box_ops
    from chex_model.image_encoder import encoder_input
    from chex_model.prompts import anatomy_prompts
    from preprocessing.classes import CIG_ANATOMY_29
    from preprocessing.image_io import decode_png

    names = [anatomy_prompts()[r] for r in CIG_ANATOMY_29]
    model.cfg.detector.box_text_fusion = "decoded" if variant == VARIANTS[2] else "prompt"
    out = []
    for s in range(0, len(rows), batch_size):
        idx = list(range(s, min(s + batch_size, len(rows))))
        pixels = encoder_input([decode_png(rows[i]["image_png"]) for i in idx], model.image_encoder.image_size,
                               model.cfg.image, model.device)
        feats = model.encode_image(pixels)
        k = max(1, max(int(truth.present[i].sum()) for i in idx))
        boxes = torch.full((len(idx), k, 4), 0.5)
        mask = torch.zeros(len(idx), k, dtype=torch.bool)
        prompts = torch.zeros(len(idx), k, model.cfg.d_model)
        for j, i in enumerate(idx):
            regions = np.flatnonzero(truth.present[i])
            if len(regions):
                boxes[j, : len(regions)] = box_ops.xyxy_to_cxcywh(torch.as_tensor(truth.boxes[i][regions], dtype=torch.float32))
                mask[j, : len(regions)] = True
                prompts[j, : len(regions)] = model.encode_prompts([names[r] for r in regions])
        fused = None if variant == VARIANTS[0] else mask
        tokens = model.encode_boxes(feats, boxes, mask, prompts=prompts, has_prompt=fused)
        out += [tokens[j, : int(truth.present[i].sum())] for j, i in enumerate(idx)]
    return out


def scores(model, rows: list[dict], variant: str, meteor) -> tuple[float, float]:
    import torch.nn.functional as F

    from chex_model.prompts import cig_finding_prompts
    from evaluation.auroc import region_auroc
    from evaluation.task_region_cls import CIG_FINDINGS, cig_truth
    from preprocessing.classes import CIG_ANATOMY_29

    truth = cig_truth(rows)
    tokens = region_tokens(model, rows, truth, variant)
    table = cig_finding_prompts()
    pos = F.normalize(model.encode_prompts([table[c][0] for c in CIG_FINDINGS]), dim=-1)
    neg = F.normalize(model.encode_prompts([table[c][1] for c in CIG_FINDINGS]), dim=-1)
    probs = np.full(truth.targets.shape, 0.5)
    hypotheses, references = [], []
    for i, t in enumerate(tokens):
        if len(t):
            f = F.normalize(t, dim=-1)
            probs[i, truth.present[i]] = torch.sigmoid(f @ pos.T - f @ neg.T).numpy()
            regions = [CIG_ANATOMY_29[r] for r in np.flatnonzero(truth.present[i])]
            phrases = {p["region"]: " ".join(x.strip() for x in p["phrases"] if x.strip()) for p in rows[i].get("region_phrases") or []}
            keep = [k for k, r in enumerate(regions) if phrases.get(r)]
            if keep:
                hypotheses += model.generate(t[keep])
                references += [phrases[regions[k]] for k in keep]
    auroc = region_auroc(probs, truth.targets, truth.present)["weighted"]
    return auroc, meteor.score(hypotheses, references) if hypotheses else float("nan")


def main() -> None:
    from bench.machine import describe_cpu
    from chex_model.chex import ChEX
    from evaluation.data import load_rows
    from evaluation.meteor import MeteorScorer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--tables", type=Path, required=True, help="ingest output folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-images", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = ChEX.from_pretrained(args.model).eval()
    rows = [r for r in load_rows(args.tables, "mimic_cxr", args.split, args.max_images, frontal_only=True) if r.get("region_boxes")]
    meteor = MeteorScorer.shared()
    print(f"{describe_cpu()}; {len(rows)} images with Chest ImaGenome regions ({args.split}); model {args.model}")
    print("| query | RC CIG weighted AUROC | RE CIG METEOR |\n| --- | --- | --- |")
    for variant in VARIANTS:
        auroc, met = scores(model, rows, variant, meteor)
        print(f"| {variant} | {100 * auroc:.1f} | {100 * met:.1f} |")


if __name__ == "__main__":
    main()
