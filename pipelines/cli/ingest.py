"""`chex ingest` (raw datasets -> Parquet) and `chex demo` (synthesize the embedded default, then ingest it)."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pipelines.cli.args import add_ray_address, image_scale, positive
from pipelines.cli.synth import synth, synth_matches


def _ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="ingest YAML (default: built-in = configs/ingest.yaml)")
    p.add_argument("--image-size", type=positive, default=None, help="override the stored image side")
    add_ray_address(p)
    p.add_argument("--force", action="store_true", help="rebuild even if inputs and config are unchanged")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="raw datasets -> Parquet tables + rejects + manifest (Ray Data)")
    _ingest_args(p)
    p.add_argument("--raw", type=Path, required=True, help="folder holding the dataset roots (see configs/ingest.yaml)")
    p.add_argument("--out", type=Path, required=True, help="output folder for tables/, rejects/, manifest.json")
    p.set_defaults(run=lambda args: ingest(args, args.raw, args.out))

    demo = sub.add_parser("demo", help="synthesize the embedded default data and ingest it")
    _ingest_args(demo)
    demo.add_argument("--workdir", type=Path, default=Path("demo_run"))
    demo.add_argument("--studies", type=positive, default=24)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--image-scale", type=image_scale, default=1.0)
    demo.set_defaults(run=run_demo)


def ingest(args: argparse.Namespace, raw: Path, out: Path) -> None:
    from chex_model.typed_config import load_config
    from pipelines.ingest.config import IngestConfig
    from pipelines.ingest.job import run_ingest
    from pipelines.ingest.summary import summary_table

    cfg = load_config(IngestConfig, args.config)
    if args.image_size:
        cfg.image_size = args.image_size
    if not raw.is_dir():
        raise FileNotFoundError(f"--raw {raw} is not a folder")
    manifest = run_ingest(raw, out, cfg, address=args.address, force=args.force)
    state = "unchanged, nothing to do (use --force to rebuild)" if manifest.get("skipped") else f"done in {manifest['seconds']} s"
    print(f"ingest {state}: {out}/manifest.json")
    print(summary_table(out))


def run_demo(args: argparse.Namespace) -> None:
    raw = args.workdir / "raw"
    if not synth_matches(raw, args.studies, args.seed, args.image_scale):
        shutil.rmtree(raw, ignore_errors=True)
        synth(raw, args.studies, args.seed, args.image_scale)
    ingest(args, raw, args.workdir / "ingested")
