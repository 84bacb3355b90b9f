"""Do multi-region prompts ("Bilateral", "Lung bases", ...) find both of their member regions? On the MIMIC-CXR
frontal images of one split with both members' Chest ImaGenome boxes, each multi-region prompt is asked through
`ChEX.query`, and its M boxes are compared with the members' boxes:
- member IoU: per member region, the best IoU of any of the prompt's boxes (mean over images);
- both found: the share of images where each member has a box with IoU >= 0.5;
- on a member: the share of the prompt's boxes with IoU >= 0.5 to some member.
Beside it, the single-region prompts of the members ("Right lung" ...), scored by their best box, as the ceiling.

``--probe 1,3,10`` instead trains a fresh tiny model per value of `loss.multi_region_weight` on the train split's
anatomy boxes only (the demo's stage-1 anatomy weights and learning rate, batch 8, ``--steps`` steps, augmented) and
scores the lungs and lung bases prompts: how much weight a short training needs for the boxes to split.
Usage: ``python bench/multi_region.py --tables INGEST_DIR (--model MODEL_DIR | --probe W,...) [--split test]
[--max-images N] [--steps 400]``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def box_iou(a: list[list[float]], b: list[list[float]]) -> np.ndarray:
    from chex_model import box_ops

    return box_ops.box_iou(box_ops.cxcywh_to_xyxy(torch.tensor(a)), box_ops.cxcywh_to_xyxy(torch.tensor(b))).numpy()


def score_prompt(model, rows: list[dict], prompt: str, members: tuple[str, ...]) -> dict[str, float]:
    """Mean best IoU per member, share of images with every member found, share of boxes on a member."""
    best, both, on = [], [], []
    for r in rows:
        boxes = {b["name"]: [b["cx"], b["cy"], b["w"], b["h"]] for b in r["region_boxes"]}
        result = model.query(r["image"], prompts=[prompt], max_new_tokens=1)[0]
        iou = box_iou(result.boxes, [boxes[m] for m in members])  # (M, members)
        best.append(iou.max(0))
        both.append(bool((iou.max(0) >= 0.5).all()))
        on.append(float((iou.max(1) >= 0.5).mean()))
    return {"member_iou": float(np.mean(best)), "both": float(np.mean(both)), "on_member": float(np.mean(on))}


PROBE_WEIGHTS = {"anat_box_l1": 50.0, "anat_box_giou": 20.0, "anat_box_score": 30.0, "anat_ground": 5.0}  # demo stage 1


def mimic_rows(tables: Path, split: str, limit: int = 0) -> list[dict]:
    from evaluation.data import load_rows
    from preprocessing.image_io import decode_png

    rows = [r for r in load_rows(tables, "mimic_cxr", split, limit, frontal_only=True) if r.get("region_boxes")]
    for r in rows:
        r["image"], r["source"], r["copy"] = decode_png(r["image_png"]), "mimic_cxr", 0
    return rows


def probe(rows: list[dict], weight: float, steps: int):
    """A tiny model trained from scratch on the rows' anatomy boxes, single and multi-region prompts."""
    from chex_model.chex import ChEX
    from chex_model.config import preset
    from chex_model.multitask import multitask_losses
    from pipelines.training.augment import AugmentConfig
    from pipelines.training.config import DataConfig, StageConfig
    from pipelines.training.data import encode_row
    from pipelines.training.trainer import stage_batch

    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.loss.multi_region_weight = weight
    model = ChEX.build(cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + np.cos(np.pi * s / steps)))
    rng, stage, data = np.random.default_rng(0), StageConfig(loss_weights=PROBE_WEIGHTS), DataConfig()
    model.train()
    for _ in range(steps):
        encoded = [encode_row(rows[i], cfg.clip.image_size, AugmentConfig(), None) for i in rng.choice(len(rows), 8, replace=False)]
        batch = stage_batch({k: np.stack([e[k] for e in encoded]) for k in encoded[0]}, rng, data, stage, train=True)
        batch.sentences, batch.findings = None, None
        out = multitask_losses(model, batch, generate=False, post_decoder=False)
        opt.zero_grad()
        sum(w * out[k] for k, w in PROBE_WEIGHTS.items() if k in out).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval()


def print_model(model, rows: list[dict]) -> None:
    from chex_model.prompts import anatomy_prompts, multi_regions

    print("| prompt | members | images | member IoU | both found | boxes on a member |\n| --- | --- | --- | --- | --- | --- |")
    names = anatomy_prompts()
    for group in multi_regions():
        have = [r for r in rows if set(group.members) <= {b["name"] for b in r["region_boxes"]}]
        extra = {"lungs": ("Bilateral",), "lower lung zones": ("Lung bases",)}.get(group.name, ())
        for prompt in dict.fromkeys((group.prompts[0], *extra)):
            s = score_prompt(model, have, prompt, group.members)
            print(f"| {prompt} | {' + '.join(group.members)} | {len(have)} | {s['member_iou']:.2f} | {100 * s['both']:.0f}% "
                  f"| {100 * s['on_member']:.0f}% |")
        for member in group.members:
            s = score_prompt(model, have, names[member], (member,))
            print(f"| {names[member]} (single) | {member} | {len(have)} | {s['member_iou']:.2f} | {100 * s['both']:.0f}% "
                  f"| {100 * s['on_member']:.0f}% |")


def main() -> None:
    from bench.machine import describe_cpu
    from chex_model.chex import ChEX

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=Path, required=True, help="ingest output folder")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--probe", default="", help="comma-separated multi_region_weight values to train and score")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-images", type=int, default=0)
    args = parser.parse_args()
    if (args.model is None) == (not args.probe):
        parser.error("give --model or --probe")
    torch.set_num_threads(2)
    rows = mimic_rows(args.tables, args.split, args.max_images)
    if not rows:
        parser.error(f"no MIMIC-CXR {args.split} frontal rows with Chest ImaGenome boxes under {args.tables}")
    print(f"{describe_cpu()}; MIMIC-CXR {args.split} frontal images with Chest ImaGenome boxes")
    if args.model is not None:
        print(f"model {args.model}")
        print_model(ChEX.from_pretrained(args.model).eval(), rows)
        return
    train = mimic_rows(args.tables, "train")
    if len(train) < 8:
        parser.error(f"--probe needs at least 8 MIMIC-CXR train rows with Chest ImaGenome boxes under {args.tables}")
    print("| multi_region_weight | prompt | images | member IoU | both found | boxes on a member |\n| --- | --- | --- | --- | --- | --- |")
    for weight in (float(w) for w in args.probe.split(",")):
        model = probe(train, weight, args.steps)
        for prompt, members in (("Left and right lungs", ("right lung", "left lung")),
                                ("Lung bases", ("right lower lung zone", "left lower lung zone")), ("Right lung", ("right lung",))):
            have = [r for r in rows if set(members) <= {b["name"] for b in r["region_boxes"]}]
            s = score_prompt(model, have, prompt, members)
            print(f"| {weight:g} | {prompt} | {len(have)} | {s['member_iou']:.2f} | {100 * s['both']:.0f}% | {100 * s['on_member']:.0f}% |")


if __name__ == "__main__":
    main()
