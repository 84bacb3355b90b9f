"""`chex ingest`: raw datasets -> Parquet tables, a rejects table, lineage and manifest.json, as one Ray Data job.

The plan (`plan.py`) is made on the driver; a Ray Data pipeline decodes, resizes and annotates the images of the
records whose inputs changed since the last run (`incremental.py`) and writes hive-partitioned Parquet
(source=/split=), beside the unchanged rows copied from the previous tables. Rejects and per-row content digests
flow to a small ledger actor, so the manifest can digest the tables without reading the images back.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipelines.digests import content_digest, dataset_digest, file_digests, key_of
from pipelines.ingest import incremental as inc
from pipelines.ingest import manifest as mf
from pipelines.ingest.checks import IngestError, check_missing, check_outcome, tally
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.plan import IngestPlan, file_fingerprints, plan_records, scan_sources, source_roots
from pipelines.ingest.process import process_or_fail, read_reports, row_digest
from pipelines.ingest.schema import PARTITION_COLUMNS, REJECT_SCHEMA, SCHEMA, SCHEMA_VERSION
from pipelines.ray_runtime import data_bars_off_terminal, init_ray
from preprocessing.progress import Progress, report, shown
from preprocessing.records import TABLES, RawRecord, partition

log = logging.getLogger(__name__)
REJECTS = "rejects"
__all__ = ["IngestError", "run_ingest"]


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

    def counts(self) -> tuple[int, int]:
        """(rows written, rejects) so far: the live progress of the job."""
        return len(self.rows), len(self.rejects)


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


def _input_fingerprint(roots: dict[str, Path], files: dict[str, list[mf.RawFile]], cfg: IngestConfig,
                       code: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """One fingerprint over the consumed raw files (path, size, mtime), the config, schema and code version."""
    parts = file_fingerprints(roots, files)
    payload = {"schema": SCHEMA_VERSION, "config": asdict(cfg), "roots": {k: str(v) for k, v in roots.items()},
               "files": parts, "code": code}
    return key_of(payload), parts


def _key_records(plan: IngestPlan, base: str, digests: dict[str, str], previous: dict[tuple[str, str], inc.RowLineage]
                 ) -> tuple[list[tuple[str, str]], dict[tuple[str, str], set[str]], dict, dict]:
    """Split the plan into records to process ((spec, source) pairs) and previous rows to keep per partition;
    returns them with the kept rows' digests and every record's lineage (source_path, file digest, input key)."""
    todo, keep, kept_rows, keyed = [], defaultdict(set), {}, {}
    for rec in plan.records:
        spec = rec.to_json()
        key = inc.input_key(spec, rec, base, digests)
        keyed[(rec.source, rec.sample_id)] = (rec.source_path, digests[rec.image_path], key)
        old = previous.get((rec.source, rec.sample_id))
        if old is not None and old.input_key == key and old.split == rec.split:
            keep[(rec.source, rec.split)].add(rec.sample_id)
            kept_rows[(rec.source, rec.split, rec.sample_id)] = old.row_digest
        else:
            todo.append((spec, rec.source))
    return todo, keep, kept_rows, keyed


def _process(todo: list[tuple[str, str]], staging: Path, cfg: IngestConfig, rejected: int = 0) -> tuple[dict, list[dict]]:
    """The Ray Data job over the records to process; returns their row digests and the workers' rejects. The ledger
    lives on the driver's node: a lost worker node must not take the job's bookkeeping with it. ``rejected``: the
    plan's own rejects, shown with the workers' in the progress."""
    ledger = IngestLedger.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False)).remote()
    if todo:
        data_bars_off_terminal()
        specs = pa.table({"spec": [spec for spec, _ in todo]})
        n_blocks = max(1, min(len(todo), int(ray.cluster_resources().get("CPU", 1)) * 4, len(todo) // cfg.batch_size + 1))
        size = -(-len(todo) // n_blocks)
        with _progress(ledger, len(todo), rejected):
            (ray.data.from_arrow([specs.slice(i, size) for i in range(0, len(todo), size)])
             .map_batches(_process_batch, batch_size=cfg.batch_size, batch_format="numpy",
                          fn_kwargs={"cfg": cfg, "ledger": ledger})
             .write_parquet(str(staging), partition_cols=list(PARTITION_COLUMNS)))
    rows, rejects = ray.get(ledger.snapshot.remote())
    ray.kill(ledger)
    return rows, rejects


@contextlib.contextmanager
def _progress(ledger: Any, total: int, rejected: int) -> Iterator[None]:
    """Rows done of ``total`` with the reject count, polled from the ledger every second while the job runs."""
    if not shown():  # nobody shows progress
        yield
        return
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(1.0):
            with contextlib.suppress(Exception):
                rows, rejects = ray.get(ledger.counts.remote(), timeout=5)
                report(Progress("ingest", min(rows + rejects, total), total, "rows", {"rejects": rejected + rejects}))

    thread = threading.Thread(target=poll, name="chex-ingest-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        rows, rejects = ray.get(ledger.counts.remote())
        report(Progress("ingest", total, total, "rows", {"rejects": rejected + rejects}, final=True))


def run_ingest(raw: Path, out: Path, cfg: IngestConfig, address: str | None = None, force: bool = False) -> dict[str, Any]:
    """Run the job; returns the manifest. A second run on unchanged input and config is a no-op unless ``force``;
    after a change only the records whose inputs changed are processed (``force`` processes all)."""
    t0 = time.perf_counter()
    raw, out = raw.resolve(), out.resolve()
    roots = source_roots(raw, cfg)
    files = scan_sources(roots)
    code = mf.code_version(Path(__file__).resolve().parents[1])
    fingerprint, stats = _input_fingerprint(roots, files, cfg, code)
    previous = mf.read_manifest(out)
    if previous and previous.get("input_fingerprint") == fingerprint and (out / TABLES).is_dir() and not force:
        log.info("inputs and config unchanged since %s: nothing to do (use --force to rebuild)", previous["created_at"])
        return {**previous, "skipped": True}
    init_ray(address)
    plan = plan_records(raw, roots, files, cfg)
    check_missing(plan.read, [asdict(r) for r in plan.rejects], cfg.max_reject_fraction, cfg.allow_missing_images)
    digests = file_digests([f for fs in files.values() for f in fs], inc.known_files(out, roots), cfg.hash_raw_content)
    base = key_of(SCHEMA_VERSION, {k: getattr(cfg, k) for k in inc.ROW_SETTINGS}, code)
    todo, keep, rows, keyed = _key_records(plan, base, digests, {} if force else inc.previous_rows(out))
    plan.records = []  # the specs carry them from here; at full size the list is the driver's largest object
    staging = out / f".{TABLES}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    new_rows, worker_rejects = _process(todo, staging, cfg, len(plan.rejects))
    reused = inc.copy_rows(out / TABLES, staging, keep)
    rows.update(new_rows)
    all_rejects = [asdict(r) for r in plan.rejects] + worker_rejects
    check_outcome(tally(plan.read, Counter(s for s, _, _ in rows), all_rejects), all_rejects,
                  cfg.max_reject_fraction, cfg.allow_missing_images)
    datasets = _summarize(staging, rows)
    _publish(out, staging, all_rejects, inc.raw_files_table(roots, files, digests), inc.rows_table(rows.items(), keyed))
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input_fingerprint": fingerprint,
        "config": asdict(cfg),
        "code": code,
        "raw_inputs": _raw_digests(roots, files, stats, digests, cfg.hash_raw_content),
        "datasets": datasets,
        "records_read": sum(plan.read.values()),
        "incremental": {"rows_reused": reused, "rows_processed": len(todo)},
        "lineage": {"raw_files": f"{inc.LINEAGE}/{inc.RAW_FILES}", "rows": f"{inc.LINEAGE}/{inc.ROWS}"},
        "rejects": {"path": f"{REJECTS}/rejects.parquet", "rows": len(all_rejects),
                    "by_stage": dict(Counter(r["stage"] for r in all_rejects))},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    mf.write_manifest(out, manifest)
    return manifest


def _publish(out: Path, staging: Path, rejects: list[dict], raw_files: pa.Table, rows: pa.Table) -> None:
    """Swap the new tables in and write rejects and lineage; the manifest goes last (none may describe tables it
    did not see written)."""
    (out / mf.MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(out / TABLES, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    if staging.exists():
        staging.replace(out / TABLES)
    else:
        (out / TABLES).mkdir()
    (out / REJECTS).mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(sorted(rejects, key=lambda r: tuple(r.values())), schema=REJECT_SCHEMA),
                   out / REJECTS / "rejects.parquet")
    (out / inc.LINEAGE).mkdir(exist_ok=True)
    pq.write_table(raw_files, out / inc.LINEAGE / inc.RAW_FILES)
    pq.write_table(rows, out / inc.LINEAGE / inc.ROWS)


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
                 digests: dict[str, str], content: bool) -> dict:
    """Digest per source root: over its files' sha256 digests, or the stat fingerprint when hashing is off."""
    return {name: {"root": str(root), "files": len(files[name]), "bytes": sum(f.size for f in files[name]),
                   "stat_fingerprint": stats[name],
                   "digest": content_digest(files[name], root, digests) if content else f"stat:{stats[name]}"}
            for name, root in roots.items()}
