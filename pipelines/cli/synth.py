"""`chex synth`: the synthetic raw datasets, written in their real on-disk layouts."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.cli.args import image_scale, positive


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write synthetic raw datasets in their real on-disk layouts")
    p.add_argument("--out", type=Path, required=True, help="folder to write the raw datasets into")
    p.add_argument("--studies", type=positive, default=40, help="MIMIC-CXR studies (other sources scale with it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-scale", type=image_scale, default=1.0, help="1.0 = realistic sizes (~2500x3000)")
    p.add_argument("--workers", type=int, default=0, help="render processes (0 = all cores)")
    p.set_defaults(run=lambda args: synth(args.out, args.studies, args.seed, args.image_scale, args.workers))


def synth(out: Path, studies: int, seed: int, scale: float, workers: int = 0) -> None:
    from preprocessing.synth.generate import SynthConfig, synthesize

    counts = synthesize(out, SynthConfig(studies=studies, seed=seed, image_scale=scale, workers=workers))
    print(f"synthetic raw data in {out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


def synth_matches(raw: Path, studies: int, seed: int, scale: float) -> bool:
    """True when `raw` holds a complete tree generated with these settings (so the demo can reuse it)."""
    from preprocessing.synth.generate import MARKER, SynthConfig, marker

    try:
        return json.loads((raw / MARKER).read_text()) == marker(SynthConfig(studies=studies, seed=seed, image_scale=scale))
    except (OSError, ValueError):
        return False
