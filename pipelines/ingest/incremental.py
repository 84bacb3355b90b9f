"""Incremental ingest: a row is processed again only when something that produced it changed.

Each record gets an input key: sha256 over the record as planned (ids, split, labels, boxes, paths), the digests of
the files it reads (image; report and scene graph, as a zip member's CRC or an extracted file's digest), and what
shapes the row (schema, processing settings, code version). A row whose key matches the previous run's is copied
from the previous tables; the dataset digests then equal those of a full rebuild. Lineage lives beside the tables:
``lineage/raw_files.parquet`` (every raw file consumed, with its digest) and ``lineage/rows.parquet`` (every row,
its source file's digest and its input key).
"""
from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines.ingest import manifest as mf
from preprocessing.records import TABLES, RawRecord, partition

LINEAGE, RAW_FILES, ROWS = "lineage", "raw_files.parquet", "rows.parquet"
RAW_FILE_SCHEMA = pa.schema([("root", pa.string()), ("path", pa.string()), ("size", pa.int64()),
                             ("mtime_ns", pa.int64()), ("digest", pa.string())])
ROW_SCHEMA = pa.schema([("source", pa.string()), ("split", pa.string()), ("sample_id", pa.string()),
                        ("source_path", pa.string()), ("source_digest", pa.string()), ("input_key", pa.string()),
                        ("row_digest", pa.string())])
# settings that change a row's content (the others only decide whether the job passes)
ROW_SETTINGS = ("image_size", "equalize_dicom", "allow_truncated_images", "allowed_modalities")


@dataclass(frozen=True)
class RowLineage:
    split: str
    source_path: str
    source_digest: str
    input_key: str
    row_digest: str


def known_files(out: Path, roots: dict[str, Path]) -> dict[str, tuple[int, int, str]]:
    """Path -> (size, mtime_ns, digest) of the raw files the previous run consumed, under today's roots (a moved
    raw folder keeps its digests)."""
    try:
        table = pq.read_table(out / LINEAGE / RAW_FILES)
    except (OSError, pa.ArrowInvalid):
        return {}
    return {str(roots[r] / p): (s, m, d) for r, p, s, m, d in zip(*(table[c].to_pylist() for c in RAW_FILE_SCHEMA.names),
                                                                     strict=True) if r in roots}


def raw_files_table(roots: dict[str, Path], files: dict[str, list[mf.RawFile]], digests: dict[str, str]) -> pa.Table:
    rows = [(name, f.path.relative_to(roots[name]).as_posix(), f.size, f.mtime_ns, digests[str(f.path)])
            for name, fs in files.items() for f in fs]
    return pa.Table.from_pylist([dict(zip(RAW_FILE_SCHEMA.names, r, strict=True)) for r in rows], schema=RAW_FILE_SCHEMA)


@lru_cache(maxsize=16)
def _zip_members(path: str, mtime_ns: int, size: int) -> dict[str, str]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: f"zip:{i.CRC:08x}:{i.file_size}" for i in zf.infolist()}


def member_digest(location: tuple[str, str] | None, digests: dict[str, str]) -> str | None:
    """Digest of a report or scene graph: a zip member's CRC and size (no decompression), or the file's digest."""
    if location is None:
        return None
    container, member = location
    if container.endswith(".zip"):
        st = Path(container).stat()
        return _zip_members(container, st.st_mtime_ns, st.st_size).get(member, "absent")
    return digests.get(str(Path(container) / member), "absent")


def input_key(spec: str, rec: RawRecord, base: str, digests: dict[str, str]) -> str:
    h = hashlib.sha256(base.encode())
    for part in (spec, digests[rec.image_path], member_digest(rec.report, digests),
                 member_digest(rec.scene_graph, digests)):
        h.update(b"\0" + str(part).encode())
    return h.hexdigest()


def previous_rows(out: Path) -> dict[tuple[str, str], RowLineage]:
    """(source, sample_id) -> lineage of the previous run's rows; empty when its tables or lineage are gone."""
    if not (out / TABLES).is_dir():
        return {}
    try:
        t = pq.read_table(out / LINEAGE / ROWS).to_pydict()
    except (OSError, pa.ArrowInvalid):
        return {}
    return {(src, sid): RowLineage(*rest) for src, sid, *rest in zip(
        t["source"], t["sample_id"], t["split"], t["source_path"], t["source_digest"], t["input_key"], t["row_digest"],
        strict=True)}


def copy_rows(tables: Path, staging: Path, keep: dict[tuple[str, str], set[str]]) -> int:
    """Copy the kept rows of each previous (source, split) partition into the staging tables, streaming record
    batches (the images are the bulk); returns the rows copied."""
    copied = 0
    for (source, split), ids in sorted(keep.items()):
        src = pads.dataset(tables / partition(source, split), format="parquet")
        dest = staging / partition(source, split)
        dest.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(dest / "reused-0.parquet", src.schema) as writer:
            for batch in src.to_batches(filter=pc.field("sample_id").isin(sorted(ids)), batch_size=256):
                writer.write_batch(batch)
                copied += batch.num_rows
    return copied


def rows_table(rows: Iterable[tuple[tuple[str, str, str], str]], keyed: dict[tuple[str, str], tuple[str, str, str]]
               ) -> pa.Table:
    """Lineage of every written row: ((source, split, sample_id), row digest) joined with the plan's
    (source, sample_id) -> (source_path, source file digest, input key)."""
    out = []
    for (source, split, sample_id), digest in rows:
        path, src_digest, key = keyed[(source, sample_id)]
        out.append({"source": source, "split": split, "sample_id": sample_id, "source_path": path,
                    "source_digest": src_digest, "input_key": key, "row_digest": digest})
    return pa.Table.from_pylist(sorted(out, key=lambda r: (r["source"], r["sample_id"])), schema=ROW_SCHEMA)
