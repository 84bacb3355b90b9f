"""Do a model's pathology boxes come from the image? For every VinDr-CXR image and each class it shows, the IoU of the
class prompt's top-scoring box with that class's nearest ground-truth box, beside two controls:
- shuffled: the same model's box for that class on the next image: equal to "model" when boxes ignore the image;
- prior: the class's mean training box, the best a detector can do without looking.

Prints one row per class and a total with the share of hits (IoU > 0.3).
Usage: ``python bench/localization.py --model MODEL_DIR --tables INGEST_DIR [--splits val test]``.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def vindr_rows(tables: Path, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    from pipelines.training.data import table_paths

    return [r for p in table_paths(tables, "vindr_cxr", split) for r in pq.read_table(p).to_pylist() if r["boxes"]]


def xyxy(rows_boxes: list[dict]) -> torch.Tensor:
    from chex_model.box_ops import cxcywh_to_xyxy

    return cxcywh_to_xyxy(torch.tensor([[b["cx"], b["cy"], b["w"], b["h"]] for b in rows_boxes], dtype=torch.float64))


def class_priors(rows: list[dict]) -> dict[str, torch.Tensor]:
    by_class: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        for b in r["boxes"]:
            by_class[b["name"]].append(b)
    return {name: xyxy(boxes).mean(0) for name, boxes in by_class.items()}


def score(model_dir: Path, tables: Path, split: str, priors: dict[str, torch.Tensor]) -> dict[str, dict[str, list[float]]]:
    """Per class: the IoUs of the model's, the shuffled and the prior box with each (image, class) pair's targets."""
    from chex_model.box_ops import box_iou
    from chex_model.chex import ChEX
    from chex_model.prompts import vindr_prompts
    from evaluation.runner import ModelRunner

    rows = vindr_rows(tables, split)
    prompts = vindr_prompts()
    names = sorted({b["name"] for r in rows for b in r["boxes"]} & set(prompts) & set(priors))
    runner = ModelRunner(ChEX.from_pretrained(model_dir), show_progress=False)
    detections = runner.detect(rows, [[prompts[c][0] for c in names]] * len(rows))
    top = [torch.from_numpy(b[np.arange(len(names)), w.argmax(-1)]).double() for b, w, _ in detections]  # (C, 4) each
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i, row in enumerate(rows):
        for k, name in enumerate(names):
            targets = [b for b in row["boxes"] if b["name"] == name]
            if not targets:
                continue
            gt = xyxy(targets)
            for kind, box in (("model", top[i][k]), ("shuffled", top[(i + 1) % len(rows)][k]), ("prior", priors[name])):
                out[name][kind].append(float(box_iou(box[None], gt).max()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a ChEX checkpoint folder (save_pretrained)")
    parser.add_argument("--tables", type=Path, required=True, help="ingest output with VinDr-CXR tables")
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    priors = class_priors(vindr_rows(args.tables, "train"))
    kinds = ("model", "shuffled", "prior")
    for split in args.splits:
        result = score(args.model, args.tables, split, priors)
        print(f"\n{split}: mean IoU of the top box per (image, class)")
        print(f"{'class':<20} | {'n':>4} | " + " | ".join(f"{k:>8}" for k in kinds))
        print("-" * 56)
        total: dict[str, list[float]] = defaultdict(list)
        for name in sorted(result, key=lambda c: -len(result[c]["model"])):
            print(f"{name:<20} | {len(result[name]['model']):>4} | "
                  + " | ".join(f"{np.mean(result[name][k]):>8.3f}" for k in kinds))
            for k in kinds:
                total[k] += result[name][k]
        print(f"{'all':<20} | {len(total['model']):>4} | " + " | ".join(f"{np.mean(total[k]):>8.3f}" for k in kinds))
        print(f"{'hits (IoU > 0.3)':<20} | {'':>4} | " + " | ".join(f"{np.mean(np.array(total[k]) > 0.3):>8.2f}" for k in kinds))


if __name__ == "__main__":
    main()
