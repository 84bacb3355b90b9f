"""The `chex` command: one entry point, one subcommand per pipeline stage."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn


class _Parser(argparse.ArgumentParser):
    """Bad arguments end in one clear line (no usage dump, no traceback)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _scale(text: str) -> float:
    value = float(text)
    if not 0.02 <= value <= 2.0:
        raise argparse.ArgumentTypeError(f"must be within [0.02, 2], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="chex", description="ChEX pipeline: synthetic data, ingestion (training and evaluation follow).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    synth = sub.add_parser("synth", help="write synthetic raw datasets in their real on-disk layouts")
    synth.add_argument("--out", type=Path, required=True, help="folder to write the raw datasets into")
    synth.add_argument("--studies", type=_positive, default=40, help="MIMIC-CXR studies (other sources scale with it)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-scale", type=_scale, default=1.0, help="1.0 = realistic sizes (~2500x3000)")
    synth.add_argument("--workers", type=int, default=0, help="render processes (0 = all cores)")

    ingest = sub.add_parser("ingest", help="raw datasets -> Parquet tables + rejects + manifest (Ray Data)")
    _ingest_args(ingest)
    ingest.add_argument("--raw", type=Path, required=True, help="folder holding the dataset roots (see configs/ingest.yaml)")
    ingest.add_argument("--out", type=Path, required=True, help="output folder for tables/, rejects/, manifest.json")

    demo = sub.add_parser("demo", help="synthesize the embedded default data and ingest it")
    _ingest_args(demo)
    demo.add_argument("--workdir", type=Path, default=Path("demo_run"))
    demo.add_argument("--studies", type=_positive, default=24)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--image-scale", type=_scale, default=1.0)
    return parser


def _ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="ingest YAML (default: built-in = configs/ingest.yaml)")
    p.add_argument("--image-size", type=_positive, default=None, help="override the stored image side")
    p.add_argument("--address", default=None, help="Ray cluster address ('auto' or host:port); default local")
    p.add_argument("--force", action="store_true", help="rebuild even if inputs and config are unchanged")


def _synth(out: Path, studies: int, seed: int, image_scale: float, workers: int = 0) -> None:
    from preprocessing.synth.generate import SynthConfig, synthesize

    counts = synthesize(out, SynthConfig(studies=studies, seed=seed, image_scale=image_scale, workers=workers))
    print(f"synthetic raw data in {out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


def _synth_matches(raw: Path, studies: int, seed: int, image_scale: float) -> bool:
    """True when `raw` holds a complete tree generated with these settings (so the demo can reuse it)."""
    from preprocessing.synth.generate import MARKER, SynthConfig, marker

    try:
        return json.loads((raw / MARKER).read_text()) == marker(SynthConfig(studies=studies, seed=seed, image_scale=image_scale))
    except (OSError, ValueError):
        return False


def _ingest(args: argparse.Namespace, raw: Path, out: Path) -> None:
    from infra.config import load_config
    from pipelines.ingest import run_ingest
    from pipelines.ingest_config import IngestConfig
    from pipelines.summary import summary_table

    cfg = load_config(IngestConfig, args.config)
    if args.image_size:
        cfg.image_size = args.image_size
    if not raw.is_dir():
        raise FileNotFoundError(f"--raw {raw} is not a folder")
    manifest = run_ingest(raw, out, cfg, address=args.address, force=args.force)
    state = "unchanged, nothing to do (use --force to rebuild)" if manifest.get("skipped") else f"done in {manifest['seconds']} s"
    print(f"ingest {state}: {out}/manifest.json")
    print(summary_table(out))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("openjpeg").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from infra.config import ConfigError

    try:
        if args.command == "synth":
            _synth(args.out, args.studies, args.seed, args.image_scale, args.workers)
        elif args.command == "ingest":
            _ingest(args, args.raw, args.out)
        elif args.command == "demo":
            raw = args.workdir / "raw"
            if not _synth_matches(raw, args.studies, args.seed, args.image_scale):
                shutil.rmtree(raw, ignore_errors=True)
                _synth(raw, args.studies, args.seed, args.image_scale)
            _ingest(args, raw, args.workdir / "ingested")
    except (ConfigError, FileNotFoundError) as exc:
        print(f"chex {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
