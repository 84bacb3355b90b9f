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


def file_digests(files: list[RawFile], known: dict[str, tuple[int, int, str]], content: bool) -> dict[str, str]:
    """Digest per file path: its sha256, reused from ``known`` (path -> size, mtime_ns, digest) while size and mtime
    are unchanged, so a re-ingest hashes only new or changed files. Without ``content``, ``stat:<size>:<mtime>``.
    Hashing runs in threads (hashlib releases the GIL)."""
    if not content:
        return {str(f.path): f"stat:{f.size}:{f.mtime_ns}" for f in files}
    out, todo = {}, []
    for f in files:
        old = known.get(str(f.path))
        if old and old[:2] == (f.size, f.mtime_ns) and not old[2].startswith("stat:"):
            out[str(f.path)] = old[2]
        else:
            todo.append(f.path)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        out.update(zip(map(str, todo), pool.map(file_sha256, todo)))
    return out


def content_digest(files: list[RawFile], root: Path, digests: dict[str, str]) -> str:
    """A root's digest: sha256 over its files' (relative path, digest) pairs."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.path.relative_to(root).as_posix()}\0{digests[str(f.path)]}\n".encode())
    return h.hexdigest()


def dataset_digest(row_digests: dict[str, str]) -> str:
    """Order-independent digest of a table: sha256 over its rows' digests sorted by sample_id."""
    h = hashlib.sha256()
    for sample_id in sorted(row_digests):
        h.update(f"{sample_id}\0{row_digests[sample_id]}\n".encode())
    return h.hexdigest()
