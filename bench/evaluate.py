"""Evaluation cost of the tiny preset on the CPU: seconds per task per 100 images, and where the time goes
(validation search, model predictions, scoring with the bootstrap, figures).

Usage: ``python bench/evaluate.py [--tables demo_run/ingested] [--model DIR] [--split test]``; without ``--model`` a
randomly initialized tiny model is used (the cost does not depend on the weights, except that generation runs to
``--max-new-tokens``). The paper reports no evaluation timings, so there is no reference column.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=Path, default=ROOT / "demo_run/ingested")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from chex_model.chex import ChEX
    from chex_model.config import preset
    from evaluation.config import EvalConfig
    from evaluation.evaluate import Evaluation
    from evaluation.meteor import MeteorScorer
    from evaluation.runner import ModelRunner

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = ChEX.from_pretrained(args.model) if args.model else ChEX.build(preset("tiny"))
    start = time.perf_counter()
    MeteorScorer.shared().score(["no pleural effusion ."], ["no effusion ."])  # the jar loads its tables on first use
    meteor_start = time.perf_counter() - start
    cfg = EvalConfig(split=args.split, max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        ev = Evaluation(args.tables, cfg, ModelRunner(model, cfg.batch_size, cfg.max_new_tokens, show_progress=False), Path(tmp))
        results = ev.run()
    phases = ("search", "predict", "score", "figures")
    print(f"\n{'tiny (random)' if args.model is None else args.model} on {args.tables} ({args.split}), {os.cpu_count()} CPU cores, "
          f"max {args.max_new_tokens} new tokens; METEOR jar start {meteor_start:.1f} s (once per process, not in the table)")
    print(f"{'task':<10} | {'images':>6} | {'samples':>7} | {'total s':>7} | {'s / 100 img':>11} | " + " | ".join(f"{p:>7}" for p in phases))
    print("-" * (60 + 10 * len(phases)))
    for name, r in results.items():
        per100 = 100 * r.seconds / r.images if r.images else float("nan")
        cells = " | ".join(f"{r.timings.get(p, 0.0):>7.2f}" for p in phases)
        print(f"{name:<10} | {r.images:>6} | {r.n:>7} | {r.seconds:>7.2f} | {per100:>11.1f} | {cells}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
