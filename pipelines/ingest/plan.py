"""Planning an ingest on the driver: which roots, which raw files, which records, and which records cannot be
processed before a worker touches a pixel (a path outside its dataset root, an image file the mirror lacks).

Readers parse tables only; the per-record work is planned here and done by Ray Data tasks (`job.py`).
"""
from __future__ import annotations

import logging
import os
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from pipelines.digests import stat_fingerprint
from pipelines.ingest import manifest as mf
from pipelines.ingest.checks import MISSING, IngestError, top_reasons
from pipelines.ingest.config import IngestConfig
from preprocessing.chest_imagenome import index_scene_graphs
from preprocessing.mimic_cxr import image_lookup, read_mimic_cxr
from preprocessing.ms_cxr import read_ms_cxr
from preprocessing.nih_cxr import read_nih
from preprocessing.records import RawRecord, Reject, relative
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
    "vindr_cxr": ("annotations/*.csv", "annotations/*.csv.gz", "train.csv", "train.csv.gz", "train/*.dicom",
                  "test/*.dicom"),
    "nih_cxr": ("*.csv", "*.csv.gz", "*.txt", "images*/**/*.png"),
}
# the roots whose reader produces records, and the record source it produces
RECORD_SOURCES = {"mimic_cxr_jpg": "mimic_cxr", "ms_cxr": "ms_cxr", "vindr_cxr": "vindr_cxr", "nih_cxr": "nih_cxr"}
# the roots a source's records may read from (MS-CXR boxes point at MIMIC-CXR-JPG images)
READ_ROOTS = {"mimic_cxr": ("mimic_cxr_jpg", "mimic_cxr_reports", "chest_imagenome"),
              "ms_cxr": ("mimic_cxr_jpg", "mimic_cxr_reports", "chest_imagenome"),
              "vindr_cxr": ("vindr_cxr",), "nih_cxr": ("nih_cxr",)}
# what a reader raises on bad data (an unreadable or malformed table or archive); anything else is a bug
DATA_ERRORS = (TableError, OSError, zipfile.BadZipFile)


@dataclass
class IngestPlan:
    """Everything decided before the Ray job: roots, the raw files they hold, the records to process, the rejects
    found so far."""

    raw: Path
    roots: dict[str, Path]
    files: dict[str, list[mf.RawFile]]
    records: list[RawRecord] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    read: Counter = field(default_factory=Counter)   # records per source as the readers listed them


def source_roots(raw: Path, cfg: IngestConfig) -> dict[str, Path]:
    """The configured roots. One that does not exist fails the job (a typo must not look like a smaller dataset);
    ``null`` in the config skips a source."""
    roots, absent = {}, []
    for name, rel in asdict(cfg.sources).items():
        if rel is None:
            continue
        path = Path(rel) if Path(rel).is_absolute() else raw / rel
        (roots.__setitem__(name, path) if path.is_dir() else absent.append(f"{name}: {path}"))
    if absent:
        raise IngestError("configured source folder(s) not found: " + "; ".join(absent)
                          + " (fix the path, or set the source to null in the ingest config to skip it)")
    if not roots:
        raise IngestError("every source is set to null in the ingest config: nothing to ingest")
    return roots


def _guarded(source: str, root: Path, raw: Path, rejects: list[Reject], read: Callable[[], T], empty: T) -> T:
    """Run one reader. Bad data in a table or archive becomes one reject and the source is skipped (the yield check
    then fails the job with that reason); any other exception is a bug and fails the job, naming the source."""
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


def _inside(path: str, roots: list[str]) -> bool:
    """Lexically inside one of the roots: ``..`` segments and absolute paths from a table cannot leave them (a
    symlink the user placed inside a root is theirs to follow)."""
    norm = os.path.normpath(path)
    return any(norm == r or norm.startswith(r + os.sep) for r in roots)


def _paths_read(rec: RawRecord) -> list[str]:
    """The filesystem paths processing this record opens (zip members are names inside an archive, not paths)."""
    paths = [rec.image_path]
    for loc in (rec.report, rec.scene_graph):
        if loc is not None:
            paths += [loc[0]] if loc[0].endswith(".zip") else [os.path.join(loc[0], loc[1])]
    return paths


def confine(records: list[RawRecord], roots: dict[str, Path]) -> tuple[list[RawRecord], list[Reject]]:
    """Records whose every path lies inside their source's roots; the others become rejects and are never read."""
    allowed = {s: [os.path.normpath(str(roots[n].absolute())) for n in names if n in roots] for s, names in READ_ROOTS.items()}
    kept, rejects = [], []
    for rec in records:
        outside = [p for p in _paths_read(rec) if not _inside(p, allowed[rec.source])]
        if outside:
            rejects.append(Reject(rec.source, rec.source_path, "table", f"path {outside[0]} lies outside the "
                                  f"{rec.source} dataset root(s); the record is not read", rec.sample_id))
        else:
            kept.append(rec)
    return kept, rejects


def present_only(records: list[RawRecord], files: dict[str, list[mf.RawFile]]) -> tuple[list[RawRecord], list[Reject]]:
    """Records whose image file the scan found; the rest are 'missing' rejects, decided here from the listing
    instead of by a worker per file (a partial mirror of 377k images would otherwise ship every absent one)."""
    present = {str(f.path) for fs in files.values() for f in fs}
    kept, rejects = [], []
    for rec in records:
        if rec.image_path in present:
            kept.append(rec)
        else:
            rejects.append(Reject(rec.source, rec.source_path, MISSING, "image file not found", rec.sample_id))
    return kept, rejects


def check_yield(roots: dict[str, Path], records: list[RawRecord], rejects: list[Reject]) -> None:
    """A configured record source whose reader produced no record fails the job, with the readers' reasons."""
    found = {r.source for r in records}
    for root_name, source in RECORD_SOURCES.items():
        if root_name in roots and source not in found:
            raise IngestError(f"source {source} under {roots[root_name]} yielded no records: "
                              f"{top_reasons([asdict(r) for r in rejects], source)}")


def scan_sources(roots: dict[str, Path]) -> dict[str, list[mf.RawFile]]:
    """The raw files each root holds that its reader consumes, stat'ed once."""
    return {name: mf.scan_files(root, SOURCE_FILES[name]) for name, root in roots.items()}


def file_fingerprints(roots: dict[str, Path], files: dict[str, list[mf.RawFile]]) -> dict[str, str]:
    """Per source: a fingerprint of the raw files its reader consumes (relative paths, sizes, mtimes; no reads)."""
    return {name: stat_fingerprint(fs, roots[name]) for name, fs in files.items()}


def raw_fingerprints(raw: Path, cfg: IngestConfig) -> dict[str, str]:
    """:func:`file_fingerprints` of the configured roots under ``raw``: what a new, changed or removed raw file
    changes (the pipeline's ingest stage key)."""
    roots = source_roots(raw.resolve(), cfg)
    return file_fingerprints(roots, scan_sources(roots))


def plan_ingest(raw: Path, cfg: IngestConfig) -> IngestPlan:
    """Roots, raw files, records and early rejects; fails when a configured source is absent or yields nothing."""
    roots = source_roots(raw.resolve(), cfg)
    return plan_records(raw.resolve(), roots, scan_sources(roots), cfg)


def plan_records(raw: Path, roots: dict[str, Path], files: dict[str, list[mf.RawFile]], cfg: IngestConfig) -> IngestPlan:
    """The readers' records, less those that read outside their roots or whose image file is absent."""
    records, rejects = read_sources(raw, roots, cfg)
    check_yield(roots, records, rejects)
    read = Counter(r.source for r in records)
    records, outside = confine(records, roots)
    records, missing = present_only(records, files)
    return IngestPlan(raw, roots, files, records, rejects + outside + missing, read)
