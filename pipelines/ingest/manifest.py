"""Lineage for the ingest output: digests of raw inputs and output tables, row counts, schema version.

Raw inputs get two fingerprints: a cheap one from (path, size, mtime) that decides whether a re-run is a no-op,
and a sha256 content digest that later stages log as lineage (recomputed only when the cheap one changes).
"""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class RawFile:
    path: Path
    size: int
    mtime_ns: int


def scan_files(root: Path, patterns: tuple[str, ...]) -> list[RawFile]:
    """The files under root that match the patterns (what the readers consume), stat'ed once."""
    paths = sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()})
    return [RawFile(p, (st := p.stat()).st_size, st.st_mtime_ns) for p in paths]


def code_version(repo: Path) -> dict[str, Any]:
    """Package version, git commit and dirty flag of the code that produced the output (git: None outside a checkout)."""
    version = {"package_version": _package_version()}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True,
                                    check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {**version, "git_commit": None, "git_dirty": None}
    return {**version, "git_commit": sha, "git_dirty": dirty}


def _package_version() -> str | None:
    try:
        return importlib.metadata.version("chex-pipeline")
    except importlib.metadata.PackageNotFoundError:
        return None


def read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    tmp = out / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(out / MANIFEST)
