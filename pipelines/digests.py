"""Every digest the pipeline records, in one place: files, raw-input fingerprints, tables, and stage keys.

Raw inputs get two fingerprints: a cheap one from (path, size, mtime) that decides whether a re-run is a no-op,
and a sha256 content digest that later stages log as lineage (recomputed only when the cheap one changes).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.ingest.manifest import RawFile


def key_of(*parts: Any) -> str:
    """A stage's cache key: sha256 of its JSON-serialised inputs."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def stat_fingerprint(files: list[RawFile], root: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.path.relative_to(root).as_posix()}\0{f.size}\0{f.mtime_ns}\n".encode())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def content_digest(files: list[RawFile], root: Path) -> str:
    """sha256 over (relative path, file sha256) pairs; hashing runs in threads (hashlib releases the GIL)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        digests = list(pool.map(file_sha256, [f.path for f in files]))
    h = hashlib.sha256()
    for f, d in zip(files, digests, strict=True):
        h.update(f"{f.path.relative_to(root).as_posix()}\0{d}\n".encode())
    return h.hexdigest()


def dataset_digest(row_digests: dict[str, str]) -> str:
    """Order-independent digest of a table: sha256 over its rows' digests sorted by sample_id."""
    h = hashlib.sha256()
    for sample_id in sorted(row_digests):
        h.update(f"{sample_id}\0{row_digests[sample_id]}\n".encode())
    return h.hexdigest()
