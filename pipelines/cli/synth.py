"""`chex synth`: the synthetic raw datasets, written in their real on-disk layouts."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.cli.args import UsageError, image_scale, positive

SCALES = {"demo": None, "full": 1.0}


def release_scale(text: str) -> float | None:
    """`demo` (sizes follow --studies), `full` (the releases' row counts) or a fraction of full such as 0.01."""
    if text in SCALES:
        return SCALES[text]
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be demo, full or a fraction of full within (0, 1], got {text}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write synthetic raw datasets in their real on-disk layouts")
    p.add_argument("--out", type=Path, required=True, help="folder to write the raw datasets into")
    p.add_argument("--studies", type=positive, default=40,
                   help="MIMIC-CXR studies (other sources scale with it); with --metadata-only, the studies rendered")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-scale", type=image_scale, default=1.0, help="1.0 = realistic sizes (~2500x3000)")
    p.add_argument("--workers", type=int, default=0, help="render processes (0 = all cores)")
    p.add_argument("--scale", type=release_scale, default=None, metavar="{demo,full,FRACTION}",
                   help="demo: sizes follow --studies (default); full: the releases' row counts (377,110 MIMIC-CXR "
                        "images, ...), or a fraction of them; needs --metadata-only")
    p.add_argument("--metadata-only", action="store_true",
                   help="every table at --scale, images and full scene graphs only for the --studies sample")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    if args.metadata_only and args.scale is None:
        raise UsageError("--metadata-only needs --scale full (or a fraction of it): at demo scale every image is rendered")
    if args.scale is not None and not args.metadata_only:
        from preprocessing.synth.scale import FULL

        images = sum(FULL[k] for k in ("mimic_images", "vindr_train", "vindr_test", "nih_images"))
        raise UsageError(f"--scale would render up to {images:,} full-size images (days, about a terabyte): add "
                         "--metadata-only to write every table at that scale and render only the --studies sample")
    synth(args.out, args.studies, args.seed, args.image_scale, args.workers, args.scale, args.metadata_only)


def synth(out: Path, studies: int, seed: int, scale: float, workers: int = 0, release: float | None = None,
          metadata_only: bool = False) -> None:
    """Write the tree; `scale` is the image scale, `release` the fraction of the releases' sizes (None = demo)."""
    from preprocessing.synth.generate import SynthConfig, synthesize
    from preprocessing.synth.metadata_only import synthesize_metadata_only

    cfg = SynthConfig(studies=studies, seed=seed, image_scale=scale, workers=workers, scale=release,
                      metadata_only=metadata_only)
    counts = (synthesize_metadata_only if metadata_only else synthesize)(out, cfg)
    print(f"synthetic raw data in {out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


def synth_matches(raw: Path, studies: int, seed: int, scale: float) -> bool:
    """True when `raw` holds a complete tree generated with these settings (so the demo can reuse it)."""
    from preprocessing.synth.generate import MARKER, SynthConfig, marker

    try:
        return json.loads((raw / MARKER).read_text()) == marker(SynthConfig(studies=studies, seed=seed, image_scale=scale))
    except (OSError, ValueError):
        return False
