"""MIMIC-CXR-JPG tables + MIMIC-CXR report paths -> one RawRecord per image (all views kept, view recorded)."""
from __future__ import annotations

import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import polars as pl

from preprocessing.archive import location
from preprocessing.classes import CHEXPERT_14, MIMIC_SPLIT_MAP
from preprocessing.records import RawRecord, Reject, relative
from preprocessing.tables import find_table, parse_float, read_csv_strings

SOURCE = "mimic_cxr"
METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT = "mimic-cxr-2.0.0-split.csv.gz"
CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv.gz"
REPORT_MEMBER = re.compile(r"files/p\d\d/p\d+/s\d+\.txt")


def study_relpath(subject_id: int, study_id: int) -> str:
    s = str(subject_id)
    return f"files/p{s[:2]}/p{s}/s{study_id}"


CHEXPERT_VALUES = {1.0: 1, 0.0: 0, -1.0: -1}


def read_chexpert(path: Path | None, raw_root: Path, rejects: list[Reject]) -> dict[tuple[int, int], dict[str, int]]:
    """(subject_id, study_id) -> {label: 1 | 0 | -1}; blank cells (not mentioned) are left out, bad cells rejected."""
    if path is None:
        return {}
    out = {}
    for i, row in enumerate(read_csv_strings(path, ("subject_id", "study_id")).iter_rows(named=True)):
        try:
            key = (int(row["subject_id"]), int(row["study_id"]))
            out[key] = {name: CHEXPERT_VALUES[v] for name in CHEXPERT_14
                        if name in row and (v := parse_float(row[name])) is not None}
        except (TypeError, ValueError, KeyError) as exc:
            rejects.append(Reject(SOURCE, f"{relative(path, raw_root)}#row{i + 2}", "table",
                                  f"unreadable label row ({type(exc).__name__}: {exc}); study kept without labels",
                                  str(row.get("study_id"))))
    return out


def index_reports(root: Path) -> tuple[str, set[str]]:
    """(container, members) of the reports: the extracted `files/` tree, else `mimic-cxr-reports.zip` as shipped."""
    if (root / "files").is_dir():
        return str(root), {p.relative_to(root).as_posix() for p in root.glob("files/p*/p*/s*.txt")}
    for zpath in sorted(root.glob("*.zip")):
        with zipfile.ZipFile(zpath) as zf:
            members = {n for n in zf.namelist() if REPORT_MEMBER.fullmatch(n)}
        if members:
            return str(zpath), members
    return str(root), set()


def _under(base: str, rel: str) -> str:
    """`rel` below a folder given relative to the raw root ("." for the root itself)."""
    return rel if base == "." else f"{base}/{rel}"


def member_locator(container: str, raw_root: Path) -> Callable[[str], str]:
    """`archive.location` for the members of one container, resolving the container's path once (resolving each of
    377k member paths took most of the time to plan MIMIC-CXR)."""
    if container.endswith(".zip"):
        prefix = location(container, "", raw_root)
        return lambda member: prefix + member
    base = relative(Path(container), raw_root)
    return lambda member: _under(base, member)


def _attach(record: RawRecord, study_path: str, reports: tuple[str, set[str]] | None, graphs: dict[str, tuple[str, str]],
            locate: Callable[[str, str], str], rejects: list[Reject], missing_reports: set[str]) -> None:
    """Point the record at its study's report and its scene graph; one reject per study without a report."""
    if reports is not None:
        member = f"{study_path}.txt"
        if member in reports[1]:
            record.report, record.report_source_path = (reports[0], member), locate(reports[0], member)
        elif record.study_id not in missing_reports:
            missing_reports.add(record.study_id)
            rejects.append(Reject(SOURCE, locate(reports[0], member), "report", f"study s{record.study_id} has no "
                                  "report file; its images are kept without sentences", record.study_id))
    if record.image_id in graphs:
        record.scene_graph = graphs[record.image_id]
        record.scene_graph_source_path = locate(*record.scene_graph)


def read_mimic_cxr(jpg_root: Path, raw_root: Path, reports_root: Path | None = None,
                   scene_graphs: dict[str, tuple[str, str]] | None = None) -> tuple[list[RawRecord], list[Reject]]:
    """Join metadata and split on dicom_id, labels on (subject, study); attach report and scene-graph locations."""
    records: list[RawRecord] = []
    rejects: list[Reject] = []
    meta_path, split_path = find_table(jpg_root, METADATA), find_table(jpg_root, SPLIT)
    if meta_path is None or split_path is None:
        return [], [Reject(SOURCE, relative(jpg_root, raw_root), "table", f"missing {METADATA} or {SPLIT}")]
    meta = read_csv_strings(meta_path, ("dicom_id", "subject_id", "study_id", "Rows", "Columns", "ViewPosition"))
    splits = read_csv_strings(split_path, ("dicom_id", "split")).select("dicom_id", "split")
    labels = read_chexpert(find_table(jpg_root, CHEXPERT), raw_root, rejects)
    columns = ("dicom_id", "subject_id", "study_id", "Rows", "Columns", "ViewPosition", "split")
    joined = meta.join(splits, on="dicom_id", how="left").select(columns)
    reports = index_reports(reports_root) if reports_root is not None else None
    locators: dict[str, Callable[[str], str]] = {}

    def locate(container: str, member: str) -> str:
        if container not in locators:
            locators[container] = member_locator(container, raw_root)
        return locators[container](member)

    jpg_base, jpg_dir, missing_reports = relative(jpg_root, raw_root), str(jpg_root), set()
    for dicom_id, subject_id, study_id, rows, cols, view, split_name in zip(*(joined[c].to_list() for c in columns)):
        try:
            subject, study = int(subject_id), int(study_id)
            width, height = int(cols), int(rows)
            if width <= 0 or height <= 0:
                raise ValueError("non-positive size")
        except (TypeError, ValueError):
            row = dict(zip(columns, (dicom_id, subject_id, study_id, rows, cols, view, split_name)))
            rejects.append(Reject(SOURCE, relative(meta_path, raw_root), "table",
                                  f"unparseable ids or size in metadata row {row}", str(dicom_id)))
            continue
        study_path = study_relpath(subject, study)
        rel = f"{study_path}/{dicom_id}.jpg"
        split = MIMIC_SPLIT_MAP.get(split_name or "")
        if split is None:
            rejects.append(Reject(SOURCE, _under(jpg_base, rel), "table", f"no official split for dicom_id {dicom_id}",
                                  dicom_id))
            continue
        record = RawRecord(
            source=SOURCE, split=split, sample_id=f"{subject}/{study}/{dicom_id}", image_id=dicom_id,
            image_path=f"{jpg_dir}/{rel}", source_path=_under(jpg_base, rel), patient_id=str(subject),
            study_id=str(study), view_position=view or "", expected_size=(width, height),
            labels=labels.get((subject, study), {}),
        )
        _attach(record, study_path, reports, scene_graphs or {}, locate, rejects, missing_reports)
        records.append(record)
    unmatched = splits.join(meta.select("dicom_id"), on="dicom_id", how="anti")
    rejects += [Reject(SOURCE, relative(split_path, raw_root), "table", f"dicom_id {d} is in the split file but not in the metadata", d)
                for d in unmatched["dicom_id"].to_list()]
    return records, rejects


def image_lookup(records: list[RawRecord]) -> pl.DataFrame:
    """dicom_id -> split, paths, ids, view and metadata size: what MS-CXR rows are resolved against."""
    return pl.DataFrame({
        "dicom_id": [r.image_id for r in records], "split": [r.split for r in records],
        "image_path": [r.image_path for r in records], "source_path": [r.source_path for r in records],
        "patient_id": [r.patient_id for r in records], "study_id": [r.study_id for r in records],
        "view_position": [r.view_position for r in records],
        "width": [r.expected_size[0] if r.expected_size else None for r in records],
        "height": [r.expected_size[1] if r.expected_size else None for r in records],
    })
