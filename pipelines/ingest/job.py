"""`chex ingest`: raw datasets -> Parquet tables, a rejects table and manifest.json, as one Ray Data job.

Readers parse the tables on the driver into RawRecords; a Ray Data pipeline decodes, resizes and annotates the
images in parallel tasks and writes hive-partitioned Parquet (source=/split=). Rejects and per-row content
digests flow to a small ledger actor, so the tables keep their exact schema and the manifest can digest them
without reading the images back.
"""
from __future__ import annotations

import logging
import shutil
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray

from pipelines.digests import content_digest, dataset_digest, key_of, stat_fingerprint
from pipelines.ingest import manifest as mf
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.process import process_or_fail, read_reports, row_digest
from pipelines.ingest.schema import PARTITION_COLUMNS, REJECT_SCHEMA, SCHEMA, SCHEMA_VERSION
from pipelines.ray_runtime import init_ray
from preprocessing.chest_imagenome import index_scene_graphs
from preprocessing.mimic_cxr import image_lookup, read_mimic_cxr
from preprocessing.ms_cxr import read_ms_cxr
from preprocessing.nih_cxr import read_nih
from preprocessing.records import TABLES, RawRecord, Reject, partition, relative
from preprocessing.tables import TableError
from preprocessing.vindr_cxr import read_vindr

log = logging.getLogger(__name__)
T = TypeVar("T")
# What each reader consumes under its root: only these files are fingerprinted and hashed (a MIMIC-CXR mirror's
# reports folder also holds terabytes of DICOMs that ingest never opens).
SOURCE_FILES: dict[str, tuple[str, ...]] = {
    "mimic_cxr_jpg": ("*.csv", "*.csv.gz", "files/p*/p*/s*/*.jpg"),
    "mimic_cxr_reports": ("files/p*/p*/s*.txt", "*.zip"),
    "chest_imagenome": ("**/scene_graph*.zip", "**/*_SceneGraph.json"),
    "ms_cxr": ("**/MS_CXR_Local_Alignment_v*.csv", "**/MS_CXR_Local_Alignment_v*.csv.gz"),
    "vindr_cxr": ("annotations/*.csv", "annotations/*.csv.gz", "train/*.dicom", "test/*.dicom"),
    "nih_cxr": ("*.csv", "*.csv.gz", "images*/**/*.png"),
}
REJECTS = "rejects"


@ray.remote(num_cpus=0)
class IngestLedger:
    """Collects row digests and rejects from the tasks; keyed, so a retried task cannot double-count."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], str] = {}
        self.rejects: dict[tuple, dict] = {}

    def add(self, digests: list[tuple[str, str, str, str]], rejects: list[dict]) -> None:
        for source, split, sample_id, digest in digests:
            self.rows[(source, split, sample_id)] = digest
        for r in rejects:
            self.rejects[tuple(r.values())] = r

    def snapshot(self) -> tuple[dict, list[dict]]:
        return self.rows, list(self.rejects.values())


def _process_batch(batch: dict[str, np.ndarray], cfg: IngestConfig, ledger: Any) -> pa.Table:
    records = [RawRecord.from_json(s) for s in batch["spec"]]
    sentences, rejects = read_reports(records)
    rows, digests = [], []
    for rec, sent in zip(records, sentences, strict=True):
        row, found = process_or_fail(rec, cfg.image_size, cfg.equalize_dicom, sent, cfg.allow_truncated_images,
                                     cfg.allowed_modalities)
        rejects += found
        if row is not None:
            rows.append(row)
            digests.append((rec.source, rec.split, rec.sample_id, row_digest(row)))
    ray.get(ledger.add.remote(digests, [asdict(r) for r in rejects]))
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def source_roots(raw: Path, cfg: IngestConfig) -> dict[str, Path]:
    """Configured roots that exist; a missing root is logged and skipped, never fatal."""
    roots = {}
    for name, rel in asdict(cfg.sources).items():
        if rel is None:
            continue
        path = Path(rel) if Path(rel).is_absolute() else raw / rel
        if path.exists():
            roots[name] = path
        else:
            log.warning("source %s: %s not found, skipped", name, path)
    return roots


class IngestError(RuntimeError):
    """The job cannot produce trustworthy tables: a reader failed unexpectedly (a bug: the cause is chained), a
    source yielded nothing, or too much of a source was rejected."""


# what a reader raises on bad data (an unreadable or malformed table or archive); anything else is a bug
DATA_ERRORS = (TableError, OSError, zipfile.BadZipFile)


def _guarded(source: str, root: Path, raw: Path, rejects: list[Reject], read: Callable[[], T], empty: T) -> T:
    """Run one reader. Bad data in a table or archive becomes one reject and the source is skipped (the empty-source
    check then says so); any other exception is a bug and fails the job, naming the source."""
    try:
        return read()
    except DATA_ERRORS as exc:
        rejects.append(Reject(source, relative(root, raw), "table", f"cannot read {source}: {type(exc).__name__}: {exc}"))
        return empty
    except Exception as exc:
        raise IngestError(f"the {source} reader failed on {root}: {type(exc).__name__}: {exc}") from exc


def read_sources(raw: Path, roots: dict[str, Path], cfg: IngestConfig) -> tuple[list[RawRecord], list[Reject]]:
    """All readers, then one reject per duplicate sample_id (a repeated CSV row must not yield two rows)."""
    records: list[RawRecord] = []
    rejects: list[Reject] = []
    none: tuple[list[RawRecord], list[Reject]] = ([], [])
    if "mimic_cxr_jpg" in roots:
        graphs = (_guarded("chest_imagenome", roots["chest_imagenome"], raw, rejects,
                           lambda: index_scene_graphs(roots["chest_imagenome"]), None)
                  if "chest_imagenome" in roots else None)
        mimic, rej = _guarded("mimic_cxr", roots["mimic_cxr_jpg"], raw, rejects, lambda: read_mimic_cxr(
            roots["mimic_cxr_jpg"], raw, roots.get("mimic_cxr_reports"), graphs), none)
        records += mimic
        rejects += rej
        if "ms_cxr" in roots and mimic:
            ms, rej = _guarded("ms_cxr", roots["ms_cxr"], raw, rejects,
                               lambda: read_ms_cxr(roots["ms_cxr"], raw, image_lookup(mimic)), none)
            records += ms
            rejects += rej
    for name, reader in (("vindr_cxr", read_vindr), ("nih_cxr", read_nih)):
        if name in roots:
            found, rej = _guarded(name, roots[name], raw, rejects, lambda r=reader, n=name: r(roots[n], raw, cfg.split_seed), none)
            records += found
            rejects += rej
    unique: dict[tuple[str, str], RawRecord] = {}
    for rec in records:
        if (rec.source, rec.sample_id) in unique:
            rejects.append(Reject(rec.source, rec.source_path, "table",
                                  f"duplicate {rec.sample_id}: listed more than once; the first entry is kept", rec.sample_id))
        else:
            unique[(rec.source, rec.sample_id)] = rec
    return list(unique.values()), rejects


# the roots whose reader produces records, and the record source it produces
RECORD_SOURCES = {"mimic_cxr_jpg": "mimic_cxr", "ms_cxr": "ms_cxr", "vindr_cxr": "vindr_cxr", "nih_cxr": "nih_cxr"}


def _top_reasons(rejects: list[dict], source: str, n: int = 3) -> str:
    counts = Counter(r["reason"] for r in rejects if r["source"] == source)
    return "; ".join(f"{k} (x{v})" for k, v in counts.most_common(n)) or "no reject says why"


def check_sources_yield(roots: dict[str, Path], records: list[RawRecord], rejects: list[Reject]) -> None:
    """A configured source whose folder exists but whose reader found no record because of rejects (a missing or
    unreadable table, every row bad) fails the job: writing nothing for it would look like a finished ingest. Tables
    that are readable but hold no data rows (a tiny synthetic tree) add a note to the rejects table instead."""
    found = Counter(r.source for r in records)
    for root_name, source in RECORD_SOURCES.items():
        if root_name not in roots or found[source]:
            continue
        if any(r.source == source for r in rejects):
            raise IngestError(f"source {source} under {roots[root_name]} yielded no records: "
                              f"{_top_reasons([asdict(r) for r in rejects], source)}")
        log.warning("source %s: its tables under %s hold no data rows", source, roots[root_name])
        rejects.append(Reject(source, str(roots[root_name]), "table", "the tables hold no data rows: nothing ingested"))


def check_reject_ceiling(records: list[RawRecord], rows: dict[tuple[str, str, str], str], rejects: list[dict],
                         max_fraction: float) -> None:
    """Fail when more than ``max_fraction`` of a source's records were dropped (an unreadable mirror, a wrong
    layout): the tables would be silently small. Names the source, the fraction and the commonest reasons."""
    read = Counter(r.source for r in records)
    kept = Counter(source for source, _, _ in rows)
    for source, n in sorted(read.items()):
        dropped = n - kept[source]
        if dropped > max_fraction * n:
            raise IngestError(f"source {source}: {dropped} of {n} records rejected ({dropped / n:.0%} > "
                              f"max_reject_fraction {max_fraction:.0%}); commonest reasons: {_top_reasons(rejects, source)}")


def _input_fingerprint(roots: dict[str, Path], cfg: IngestConfig, code: dict[str, Any]
                       ) -> tuple[str, dict[str, list[mf.RawFile]], dict[str, str]]:
    """One fingerprint over the consumed raw files (path, size, mtime), the config, schema and code version."""
    files = {name: mf.scan_files(root, SOURCE_FILES[name]) for name, root in roots.items()}
    parts = {name: stat_fingerprint(fs, roots[name]) for name, fs in files.items()}
    payload = {"schema": SCHEMA_VERSION, "config": asdict(cfg), "roots": {k: str(v) for k, v in roots.items()},
               "files": parts, "code": code}
    return key_of(payload), files, parts


def run_ingest(raw: Path, out: Path, cfg: IngestConfig, address: str | None = None, force: bool = False) -> dict[str, Any]:
    """Run the job; returns the manifest. A second run on unchanged input and config is a no-op unless force."""
    t0 = time.perf_counter()
    raw, out = raw.resolve(), out.resolve()
    roots = source_roots(raw, cfg)
    if not roots:
        raise FileNotFoundError(f"no configured dataset root exists under {raw}")
    code = mf.code_version(Path(__file__).resolve().parents[1])
    fingerprint, files, stats = _input_fingerprint(roots, cfg, code)
    previous = mf.read_manifest(out)
    if previous and previous.get("input_fingerprint") == fingerprint and (out / TABLES).is_dir() and not force:
        log.info("inputs and config unchanged since %s: nothing to do (use --force to rebuild)", previous["created_at"])
        return {**previous, "skipped": True}

    records, rejects = read_sources(raw, roots, cfg)
    check_sources_yield(roots, records, rejects)
    init_ray(address)
    ledger = IngestLedger.remote()
    staging = out / f".{TABLES}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    if records:
        n_blocks = max(1, min(len(records), int(ray.cluster_resources().get("CPU", 1)) * 4, len(records) // cfg.batch_size + 1))
        (ray.data.from_items([{"spec": r.to_json()} for r in records], override_num_blocks=n_blocks)
         .map_batches(_process_batch, batch_size=cfg.batch_size, batch_format="numpy",
                      fn_kwargs={"cfg": cfg, "ledger": ledger})
         .write_parquet(str(staging), partition_cols=list(PARTITION_COLUMNS)))
    rows, worker_rejects = ray.get(ledger.snapshot.remote())
    ray.kill(ledger)

    all_rejects = [asdict(r) for r in rejects] + worker_rejects
    check_reject_ceiling(records, rows, all_rejects, cfg.max_reject_fraction)
    datasets = _summarize(staging, rows)
    (out / mf.MANIFEST).unlink(missing_ok=True)   # no manifest may describe tables it did not see written
    shutil.rmtree(out / TABLES, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    if staging.exists():
        staging.replace(out / TABLES)
    else:
        (out / TABLES).mkdir()
    (out / REJECTS).mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(sorted(all_rejects, key=lambda r: tuple(r.values())), schema=REJECT_SCHEMA),
                   out / REJECTS / "rejects.parquet")
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input_fingerprint": fingerprint,
        "config": asdict(cfg),
        "code": code,
        "raw_inputs": _raw_digests(roots, files, stats, previous, cfg.hash_raw_content),
        "datasets": datasets,
        "records_read": len(records),
        "rejects": {"path": f"{REJECTS}/rejects.parquet", "rows": len(all_rejects),
                    "by_stage": dict(Counter(r["stage"] for r in all_rejects))},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    mf.write_manifest(out, manifest)
    return manifest


def _summarize(staging: Path, rows: dict[tuple[str, str, str], str]) -> dict[str, Any]:
    """Rows and digest per source/split, cross-checked against what Parquet actually holds."""
    groups: dict[str, dict[str, str]] = {}
    for (source, split, sample_id), digest in rows.items():
        groups.setdefault(f"{source}/{split}", {})[sample_id] = digest
    out = {}
    for key, digests in sorted(groups.items()):
        source, split = key.split("/")
        rel = f"{TABLES}/{partition(source, split)}"
        on_disk = pads.dataset(staging / partition(source, split), format="parquet").count_rows()
        if on_disk != len(digests):
            raise RuntimeError(f"{rel}: wrote {on_disk} rows but processed {len(digests)}")
        out[key] = {"path": rel, "rows": on_disk, "digest": dataset_digest(digests)}
    return out


def _raw_digests(roots: dict[str, Path], files: dict[str, list[mf.RawFile]], stats: dict[str, str],
                 previous: dict | None, content: bool) -> dict:
    """Digest per source root (sha256 of contents, or the stat fingerprint when content hashing is off);
    a content digest is reused from the previous manifest while that root's files are unchanged."""
    before = (previous or {}).get("raw_inputs", {})
    out = {}
    for name, root in roots.items():
        old = before.get(name, {})
        if not content:
            digest = f"stat:{stats[name]}"
        elif old.get("stat_fingerprint") == stats[name] and not str(old.get("digest", "stat:")).startswith("stat:"):
            digest = old["digest"]
        else:
            digest = content_digest(files[name], root)
        out[name] = {"root": str(root), "files": len(files[name]), "bytes": sum(f.size for f in files[name]),
                     "stat_fingerprint": stats[name], "digest": digest}
    return out
