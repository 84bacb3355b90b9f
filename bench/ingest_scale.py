"""Ingest planning at full scale: the driver's wall time and peak RSS to read every table and plan the job, per source.

Run from the repo root: ``.venv/bin/python bench/ingest_scale.py --raw DIR [--scale full]``. Without a tree in DIR,
``chex synth --metadata-only`` writes one first (about two minutes at full scale, under 1 GB): every table at the
releases' size, images only for a small sample, so most records are planned as missing-image rejects. Each
configuration is planned in a fresh interpreter, so the peak RSS is that configuration's own.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time
import zipfile
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe_cpu  # noqa: E402
from pipelines.ingest.config import SourcePaths  # noqa: E402

# each configuration's SourcePaths fields; MS-CXR rows resolve against MIMIC-CXR-JPG, scene graphs are read with it
RUNS: dict[str, tuple[str, ...]] = {
    "mimic_cxr (jpg + reports)": ("mimic_cxr_jpg", "mimic_cxr_reports"),
    "chest_imagenome (+ jpg)": ("mimic_cxr_jpg", "chest_imagenome"),
    "ms_cxr (+ jpg)": ("mimic_cxr_jpg", "ms_cxr"),
    "vindr_cxr": ("vindr_cxr",),
    "nih_cxr": ("nih_cxr",),
    "all sources": tuple(f.name for f in fields(SourcePaths)),
}
# the tables (and archive indexes) each root's reader reads, for the "table rows" column
TABLES: dict[str, tuple[str, ...]] = {
    "mimic_cxr_jpg": ("mimic-cxr-2.0.0-metadata.csv*", "mimic-cxr-2.0.0-split.csv*", "mimic-cxr-2.0.0-chexpert.csv*"),
    "mimic_cxr_reports": ("*.zip",),
    "chest_imagenome": ("**/scene_graph*.zip",),
    "ms_cxr": ("**/MS_CXR_Local_Alignment_v*.csv*",),
    "vindr_cxr": ("annotations/*.csv*",),
    "nih_cxr": ("Data_Entry_2017*.csv*", "BBox_List_2017.csv*"),
}
TARGET_S, TARGET_GB = 120, 4


def table_rows(path: Path) -> int:
    """Data rows of a CSV (.gz or not; one per line after the header), or members of a zip."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            return len(zf.namelist())
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.count(b"\n") - 1


def rows_read(raw: Path, roots: tuple[str, ...]) -> int:
    defaults = {f.name: f.default for f in fields(SourcePaths)}
    return sum(table_rows(p) for name in roots for pattern in TABLES[name]
               for p in sorted((raw / defaults[name]).glob(pattern)) if p.is_file())


def plan_one(raw: Path, run: str) -> dict[str, float]:
    """In this (fresh) process: plan an ingest of the run's sources only; counts, seconds and peak RSS."""
    from pipelines.ingest.config import IngestConfig
    from pipelines.ingest.plan import plan_ingest

    keep = RUNS[run]
    cfg = IngestConfig(sources=SourcePaths(**{f.name: f.default if f.name in keep else None for f in fields(SourcePaths)}))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    plan = plan_ingest(raw, cfg)
    seconds = time.perf_counter() - t0
    return {"read": sum(plan.read.values()), "planned": len(plan.records), "rejects": len(plan.rejects),
            "seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "import_rss_mb": rss_before / 1024}


def measure(raw: Path, run: str) -> dict[str, float]:
    """Plan one configuration in a child interpreter; its last stdout line is the result."""
    out = subprocess.run([sys.executable, __file__, "--raw", str(raw), "--child", run], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        raise SystemExit(f"planning {run} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ensure_tree(raw: Path, scale: float, studies: int, image_scale: float, seed: int) -> str:
    """Reuse the metadata-only tree at `raw` when its marker matches these settings, else write it with `chex synth`
    in a child process (so this one stays small: a child's ru_maxrss starts from its parent's RSS at fork)."""
    from preprocessing.synth.generate import MARKER, SynthConfig, marker

    cfg = SynthConfig(studies=studies, seed=seed, image_scale=image_scale, scale=scale, metadata_only=True)
    if (raw / MARKER).is_file():
        if json.loads((raw / MARKER).read_text()) != marker(cfg):
            raise SystemExit(f"{raw} holds a tree made with other settings ({raw / MARKER}); pick another --raw")
        return "reused"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main())", "synth",
                    "--out", str(raw), "--metadata-only", "--scale", str(scale), "--studies", str(studies),
                    "--image-scale", str(image_scale), "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL,
                   cwd=Path(__file__).resolve().parents[1])
    return f"written in {time.perf_counter() - t0:.0f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, required=True, help="the metadata-only tree (written there if absent)")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the releases' sizes (1.0 = full)")
    ap.add_argument("--studies", type=int, default=8, help="MIMIC studies rendered in the sample")
    ap.add_argument("--image-scale", type=float, default=0.25, help="size of the sample's images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=list(RUNS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(plan_one(args.raw, args.child)))
        return
    sys.stdout.reconfigure(line_buffering=True)
    how = ensure_tree(args.raw, args.scale, args.studies, args.image_scale, args.seed)
    print(f"machine: {describe_cpu()}; load average {os.getloadavg()[0]:.1f} (other processes share these cores)")
    scale = "full" if args.scale == 1 else f"{args.scale:g}"
    print(f"tree: chex synth --metadata-only --scale {scale} --studies {args.studies} --seed {args.seed} "
          f"({how}); planner: pipelines.ingest.plan.plan_ingest, one fresh process per row")
    row = "{:<26} {:>11} {:>12} {:>8} {:>9} {:>8} {:>10}"
    print(row.format("sources", "table rows", "records read", "planned", "rejects", "seconds", "peak RSS"))
    results = {}
    for run, roots in RUNS.items():
        r = results[run] = measure(args.raw, run)
        print(row.format(run, f"{rows_read(args.raw, roots):,}", f"{r['read']:,}", f"{r['planned']:,}",
                         f"{r['rejects']:,}", f"{r['seconds']:.2f}", f"{r['rss_mb']:,.0f} MB"))
    every = results["all sources"]
    met = every["seconds"] < TARGET_S and every["rss_mb"] < TARGET_GB * 1024
    print(f"target (all sources < {TARGET_S} s and < {TARGET_GB} GB driver RSS): {'met' if met else 'MISSED'}; "
          f"RSS after imports, before planning: {every['import_rss_mb']:,.0f} MB")


if __name__ == "__main__":
    main()
