"""Fuzzed raw input (issue 22): each damage is one reject naming its file and why, and nothing else is lost.

Each damaged tree is a copy of the shared synthetic tree with several independent damages in different records
(different studies, images and table rows). It is ingested once and compared with the clean ingest of the same
tree: every row the damage does not touch must come back byte-identical (the content digest of the row), the
touched rows must equal the clean row with exactly the damaged part taken out, and the rejects table must hold
exactly one reject per damage.
"""
from __future__ import annotations

import csv
import gzip
import io
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from pipelines.ingest.config import IngestConfig
from pipelines.ingest.job import run_ingest
from pipelines.ingest.process import row_digest
from pipelines.ingest.summary import load_tables
from preprocessing.archive import ArchiveError, read_member
from preprocessing.image_io import ImageDecodeError, load_gray

Key = tuple[str, str]   # (source, sample_id)
MIMIC, VINDR, NIH, MS = "mimic_cxr", "vindr_cxr", "nih_cxr", "ms_cxr"
REPORTS = "mimic-cxr/2.0.0"
GRAPHS = "chest-imagenome/1.0.0/silver_dataset/scene_graph.zip"
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"


@dataclass
class Tables:
    """An ingest output read back: rows by (source, sample_id) and the rejects."""

    rows: dict[Key, dict]
    rejects: list[dict]

    def digest(self, key: Key) -> str:
        return row_digest(self.rows[key])


@dataclass
class Damaged:
    """A damaged tree's ingest and what was done to it: per damage, the rows it may touch and the one reject it
    must cause (stage, source_path)."""

    tables: Tables
    raw: Path
    facts: dict = field(default_factory=dict)            # damage -> what the per-damage test needs
    touched: dict[str, set[Key]] = field(default_factory=dict)
    expected_rejects: dict[str, tuple[str, str]] = field(default_factory=dict)


def _read_output(out: Path) -> Tables:
    rows = {(r["source"], r["sample_id"]): r for r in load_tables(out).iter_rows(named=True)}
    return Tables(rows, pl.read_parquet(out / "rejects" / "rejects.parquet").to_dicts())


def _ingest(raw: Path, size: int) -> Tables:
    """One ingest; the reject ceiling is raised because a small tree loses several of its 10 VinDr images here."""
    out = raw.parent / "out"
    run_ingest(raw, out, IngestConfig(image_size=size, max_reject_fraction=0.5))
    return _read_output(out)


@pytest.fixture(scope="module")
def clean(ingested) -> tuple[Tables, int]:
    out, manifest = ingested
    tables = _read_output(out)
    assert tables.rejects == [], "the clean tree must ingest without rejects for the comparison to mean anything"
    return tables, manifest["config"]["image_size"]


def _copy(synth_raw: Path, tmp_path_factory, name: str) -> Path:
    raw = tmp_path_factory.mktemp(name) / "raw"
    shutil.copytree(synth_raw, raw)
    return raw


def _rel(path: Path, raw: Path) -> str:
    return path.relative_to(raw).as_posix()


def _jpg(raw: Path, row: dict) -> Path:
    return next(raw.glob(f"mimic-cxr-jpg/2.0.0/files/p*/p{row['patient_id']}/s{row['study_id']}/{row['image_id']}.jpg"))


def _report(raw: Path, row: dict) -> Path:
    return next(raw.glob(f"{REPORTS}/files/p*/p{row['patient_id']}/s{row['study_id']}.txt"))


def _study_keys(clean: Tables, study_id: str) -> set[Key]:
    return {k for k, r in clean.rows.items() if k[0] == MIMIC and r["study_id"] == study_id}


def _with(row: dict, **changes) -> dict:
    return {**row, **changes}


# --- the damages ---------------------------------------------------------------------------------------------------


def _dicom(path: Path, pixels: np.ndarray, photometric: str, bits: int, *, pixel_data: bool = True) -> None:
    """A DX DICOM built with pydicom's API, valid apart from the defect the caller asks for."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = DX_SOP_CLASS, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.Modality, ds.ViewPosition = "DX", "PA"
    ds.set_pixel_data(pixels, photometric, bits, generate_instance_uid=False)
    if not pixel_data:
        del ds.PixelData
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _damage_vindr_images(d: Damaged) -> None:
    """Train DICOMs: empty, cut inside the pixel data, without pixel data, two frames (rejects) and one saved as
    RGB with three equal channels (kept: the same gray picture)."""
    files = sorted((d.raw / "vindr-cxr/1.0.0/train").glob("*.dicom"))
    meta = {p: pydicom.dcmread(p) for p in files}
    # the RGB copy must decode like its original: no inversion or window (grayscale only), no reduced J2K decode
    rgb = next(p for p in files if meta[p].PhotometricInterpretation == "MONOCHROME2" and "WindowCenter" not in meta[p]
               and meta[p].file_meta.TransferSyntaxUID != JPEG2000Lossless)
    cut = next(p for p in files if p != rgb and not meta[p].file_meta.TransferSyntaxUID.is_compressed)
    empty, no_pixels, frames = [p for p in files if p not in (rgb, cut)][:3]
    gray = meta[rgb].pixel_array
    _dicom(rgb, np.repeat(gray[..., None], 3, axis=-1), "RGB", int(meta[rgb].BitsStored))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 2 // 3])
    empty.write_bytes(b"")
    source = meta[no_pixels]
    _dicom(no_pixels, source.pixel_array, "MONOCHROME2", int(source.BitsStored), pixel_data=False)
    source = meta[frames]
    _dicom(frames, np.stack([source.pixel_array, source.pixel_array[::-1]]), "MONOCHROME2", int(source.BitsStored))
    d.facts["dicom_rgb"] = rgb
    for name, path in (("dicom_empty", empty), ("dicom_cut", cut), ("dicom_no_pixels", no_pixels),
                       ("dicom_frames", frames), ("dicom_rgb", rgb)):
        d.touched[name] = {(VINDR, path.stem)}
        if name != "dicom_rgb":
            d.expected_rejects[name] = ("image", _rel(path, d.raw))


def _damage_nih(d: Damaged, clean: Tables) -> None:
    """The first box row of the image with the fewest boxes gets a non-numeric x (with one box, the image has no
    readable box left); two images of other patients: an empty and a cut PNG."""
    bbox = d.raw / "nih-chest-xrays/BBox_List_2017.csv"
    lines = bbox.read_text().splitlines(keepends=True)
    by_image: dict[str, list[int]] = {}
    for n, line in enumerate(lines[1:], start=1):
        by_image.setdefault(line.split(",")[0], []).append(n)
    boxed, numbers = min(by_image.items(), key=lambda item: (len(item[1]), item[0]))
    cells = lines[numbers[0]].split(",")
    cells[2] = "12px"
    lines[numbers[0]] = ",".join(cells)
    bbox.write_text("".join(lines))
    patient = clean.rows[(NIH, boxed)]["patient_id"]
    assert len(clean.rows[(NIH, boxed)]["boxes"]) == len(numbers)   # every box of it is stored when clean
    d.facts["nih_box"] = boxed
    d.touched["nih_box"] = {(NIH, boxed)}
    d.expected_rejects["nih_box"] = ("box", f"{_rel(bbox, d.raw)}#row{numbers[0] + 1}")
    others = sorted(k[1] for k, r in clean.rows.items() if k[0] == NIH and r["patient_id"] != patient)
    assert len(others) >= 2
    for name, image in (("png_empty", others[0]), ("png_cut", others[-1])):
        path = next(d.raw.glob(f"nih-chest-xrays/images*/images/{image}"))
        path.write_bytes(b"" if name == "png_empty" else path.read_bytes()[: path.stat().st_size // 2])
        d.touched[name] = {(NIH, image)}
        d.expected_rejects[name] = ("image", _rel(path, d.raw))


def _damage_vindr_box(d: Damaged, clean: Tables) -> None:
    """One row of the (unfused) test annotations gets a non-numeric x_min: that box goes, the image stays."""
    table = d.raw / "vindr-cxr/1.0.0/annotations/annotations_test.csv"
    lines = table.read_text().splitlines(keepends=True)
    by_image: dict[str, list[int]] = {}
    for n, line in enumerate(lines[1:], start=1):
        by_image.setdefault(line.split(",")[0], []).append(n)
    image, numbers = max(by_image.items(), key=lambda item: (len(item[1]), item[0]))   # one box goes, others stay
    assert len(clean.rows[(VINDR, image)]["boxes"]) == len(numbers)   # every box of it is stored when clean
    cells = lines[numbers[-1]].split(",")
    cells[2] = "1O2.5"   # letter O for a zero, as typed by hand
    lines[numbers[-1]] = ",".join(cells)
    table.write_text("".join(lines))
    d.facts["vindr_box"] = (image, len(numbers) - 1)
    d.touched["vindr_box"] = {(VINDR, image)}
    d.expected_rejects["vindr_box"] = ("box", f"{_rel(table, d.raw)}#row{numbers[-1] + 1}")


def _damage_ms_cxr(d: Damaged, clean: Tables) -> None:
    """The first MS-CXR row whose phrase is unique on its image gets x = "n/a": that phrase goes, the image stays."""
    table = next(d.raw.glob("ms-cxr/*/MS_CXR_Local_Alignment_v*.csv"))
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    col = {name: header.index(name) for name in ("dicom_id", "label_text", "x")}
    pairs = [(r[col["dicom_id"]], r[col["label_text"]]) for r in rows[1:]]
    n = next(i for i, p in enumerate(pairs, start=1) if pairs.count(p) == 1)
    rows[n][col["x"]] = "n/a"
    with open(table, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    dicom_id = rows[n][col["dicom_id"]]
    key = next(k for k, r in clean.rows.items() if k[0] == MS and r["image_id"] == dicom_id)
    d.facts["ms_box"] = (key, rows[n][col["label_text"]])
    d.touched["ms_box"] = {key}
    d.expected_rejects["ms_box"] = ("box", f"{_rel(table, d.raw)}#row{n + 1}")


def _rewrite_zip(path: Path, change: Callable[[dict[str, bytes]], None]) -> None:
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    change(members)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _latin1_letter(text: bytes) -> bytes:
    """The report with a Latin-1 e-acute (0xE9, never valid UTF-8 there) for a letter in its second half."""
    at = len(text) // 2 + re.search(rb"[a-z]", text[len(text) // 2:]).start()
    return text[:at] + b"\xe9" + text[at + 1:]


def _damage_graphs(d: Damaged, clean: Tables, keys: list[Key]) -> None:
    """An empty and a cut-short scene graph in the Chest ImaGenome zip: the images stay, without anatomy."""
    def change(members: dict[str, bytes]) -> None:
        for name, key in zip(("graph_empty", "graph_broken"), keys, strict=True):
            member = next(m for m in members if m.endswith(f"/{clean.rows[key]['image_id']}_SceneGraph.json"))
            members[member] = b"" if name == "graph_empty" else members[member][: len(members[member]) // 2]
            d.facts[name] = key
            d.touched[name] = {key}
            d.expected_rejects[name] = ("scene_graph", f"{GRAPHS}::{member}")

    _rewrite_zip(d.raw / GRAPHS, change)


def _damage_mimic(d: Damaged, clean: Tables) -> None:
    """Five studies without MS-CXR images, one damage each: two scene graphs, a report with a byte that is not
    UTF-8 (the study's images stay, without sentences), an empty and a cut JPEG."""
    mimic = {k: r for k, r in sorted(clean.rows.items()) if k[0] == MIMIC}
    ms_images = {r["image_id"] for k, r in clean.rows.items() if k[0] == MS}   # their damage would touch two rows
    studies = sorted({r["study_id"] for r in mimic.values()} - {r["study_id"] for r in mimic.values()
                                                               if r["image_id"] in ms_images})
    graph_studies = [s for s in studies if any(r["region_boxes"] for r in mimic.values() if r["study_id"] == s)][:2]
    _damage_graphs(d, clean, [next(k for k, r in mimic.items() if r["study_id"] == s and r["region_boxes"])
                              for s in graph_studies])
    rest = [s for s in studies if s not in graph_studies]
    report = _report(d.raw, mimic[min(_study_keys(clean, rest[0]))])
    report.write_bytes(_latin1_letter(report.read_bytes()))
    d.facts["report_utf8"] = rest[0]
    d.touched["report_utf8"] = _study_keys(clean, rest[0])
    d.expected_rejects["report_utf8"] = ("report", _rel(report, d.raw))
    for name, study in (("jpg_empty", rest[1]), ("jpg_cut", rest[2])):
        key = min(_study_keys(clean, study))
        path = _jpg(d.raw, mimic[key])
        path.write_bytes(b"" if name == "jpg_empty" else path.read_bytes()[: path.stat().st_size // 2])
        d.touched[name] = {key}
        d.expected_rejects[name] = ("image", _rel(path, d.raw))


@pytest.fixture(scope="module")
def damaged(clean, synth_raw: Path, ray_local, tmp_path_factory) -> Damaged:
    """Every per-record damage in one copy of the tree (their records are disjoint), ingested once."""
    tables, size = clean
    d = Damaged(Tables({}, []), _copy(synth_raw, tmp_path_factory, "fuzz_records"))
    _damage_vindr_images(d)
    _damage_vindr_box(d, tables)
    _damage_nih(d, tables)
    _damage_ms_cxr(d, tables)
    _damage_mimic(d, tables)
    d.tables = _ingest(d.raw, size)
    return d


# --- per-record damages: one reject each, nothing else lost --------------------------------------------------------

REASONS = {   # damage -> what its reject must say
    "dicom_empty": "empty file (0 bytes)", "dicom_cut": "truncated file", "dicom_no_pixels": "no pixel data",
    "dicom_frames": "multi-frame DICOM (2 frames)", "png_empty": "empty file (0 bytes)", "png_cut": "truncated",
    "jpg_empty": "empty file (0 bytes)", "jpg_cut": "truncated", "nih_box": "unreadable box row",
    "vindr_box": "1O2.5", "ms_box": "non-numeric x/y/w/h", "graph_empty": "invalid JSON",
    "graph_broken": "invalid JSON", "report_utf8": "utf-8",
}
IMAGE_DAMAGES = ("dicom_empty", "dicom_cut", "dicom_no_pixels", "dicom_frames", "png_empty", "png_cut", "jpg_empty",
                 "jpg_cut")


@pytest.mark.parametrize("damage", sorted(REASONS))
def test_each_damage_is_one_reject_with_its_path_and_reason(damaged, damage):
    stage, path = damaged.expected_rejects[damage]
    hits = [r for r in damaged.tables.rejects if (r["stage"], r["source_path"]) == (stage, path)]
    assert len(hits) == 1, f"{damage}: expected one {stage} reject for {path}, got {hits}"
    assert REASONS[damage].lower() in hits[0]["reason"].lower(), hits[0]["reason"]


def test_there_is_no_other_reject(damaged):
    got = sorted((r["stage"], r["source_path"]) for r in damaged.tables.rejects)
    assert got == sorted(damaged.expected_rejects.values())


def test_every_untouched_row_is_byte_identical(damaged, clean):
    tables = clean[0]
    touched = set().union(*damaged.touched.values())
    assert set(damaged.tables.rows) <= set(tables.rows)
    untouched = set(tables.rows) - touched
    assert untouched <= set(damaged.tables.rows), sorted(untouched - set(damaged.tables.rows))
    changed = sorted(k for k in untouched if damaged.tables.digest(k) != tables.digest(k))
    assert not changed, f"rows changed by damage elsewhere: {changed}"
    assert {source for source, _ in untouched} == {MIMIC, MS, VINDR, NIH}   # every source keeps rows to compare


@pytest.mark.parametrize("damage", IMAGE_DAMAGES)
def test_an_unreadable_image_loses_exactly_its_row(damaged, damage):
    (key,) = damaged.touched[damage]
    assert key not in damaged.tables.rows


def test_an_rgb_dicom_of_a_gray_picture_stores_the_same_row(damaged, clean):
    (key,) = damaged.touched["dicom_rgb"]
    assert pydicom.dcmread(damaged.facts["dicom_rgb"]).PhotometricInterpretation == "RGB"
    assert damaged.tables.digest(key) == clean[0].digest(key)


def test_an_unreadable_report_keeps_its_images_without_sentences(damaged, clean):
    keys = damaged.touched["report_utf8"]
    assert keys and all(clean[0].rows[k]["report_sentences"] for k in keys)
    for key in keys:
        assert damaged.tables.digest(key) == row_digest(_with(clean[0].rows[key], report_sentences=[]))


@pytest.mark.parametrize("damage", ["graph_empty", "graph_broken"])
def test_a_bad_scene_graph_keeps_the_image_without_anatomy(damaged, clean, damage):
    key = damaged.facts[damage]
    expected = _with(clean[0].rows[key], region_boxes=[], region_labels=[], region_phrases=[])
    assert clean[0].rows[key]["region_boxes"] and damaged.tables.digest(key) == row_digest(expected)


def test_a_bad_vindr_box_row_loses_only_that_box(damaged, clean):
    image, k = damaged.facts["vindr_box"]
    row = clean[0].rows[(VINDR, image)]
    expected = _with(row, boxes=row["boxes"][:k] + row["boxes"][k + 1:])
    assert damaged.tables.digest((VINDR, image)) == row_digest(expected)


def test_a_bad_nih_box_row_loses_the_box_but_no_image_changes_split(damaged, clean):
    """The image is still a box image of the evaluation split: an unreadable number must not move its patient
    (and so re-shuffle every other evaluation patient) into train."""
    image = damaged.facts["nih_box"]
    row = clean[0].rows[(NIH, image)]
    assert row["split"] != "train"
    assert damaged.tables.digest((NIH, image)) == row_digest(_with(row, boxes=row["boxes"][1:]))
    assert {k: r["split"] for k, r in damaged.tables.rows.items() if k[0] == NIH} == {
        k: r["split"] for k, r in clean[0].rows.items() if k[0] == NIH and k in damaged.tables.rows}


def test_a_bad_ms_cxr_row_loses_only_its_phrase(damaged, clean):
    key, phrase = damaged.facts["ms_box"]
    row = clean[0].rows[key]
    assert row["boxes"] == [b for g in row["grounded_phrases"] for b in g["boxes"]]   # MS-CXR boxes = phrase boxes
    kept = [g for g in row["grounded_phrases"] if g["phrase"] != phrase]
    assert len(kept) == len(row["grounded_phrases"]) - 1
    expected = _with(row, grounded_phrases=kept, boxes=[b for g in kept for b in g["boxes"]],
                     labels=[{"name": c, "value": 1} for c in sorted({g["category"] for g in kept})])
    assert damaged.tables.digest(key) == row_digest(expected)


# --- reports shipped as mimic-cxr-reports.zip -----------------------------------------------------------------------


def _patch_headers(data: bytes, member: str, flags: int = 0, method: int | None = None) -> bytes:
    """Set flag bits and/or the compression method of one member, in its local header and its central directory
    entry: zipfile cannot write what a password-protected (flag 0x1) or a Windows Deflate64 (method 9) zip holds."""
    out = bytearray(data)
    name = member.encode()
    for signature, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        at = next(m.start() for m in re.finditer(re.escape(signature), out)
                  if out[m.start() + name_at: m.start() + name_at + len(name)] == name)
        out[at + flag_at] |= flags
        if method is not None:   # the method field follows the flags in both headers
            out[at + flag_at + 2: at + flag_at + 4] = method.to_bytes(2, "little")
    return bytes(out)


@pytest.fixture(scope="module")
def zipped_reports(clean, synth_raw: Path, ray_local, tmp_path_factory) -> Damaged:
    """The reports as mimic-cxr-reports.zip (no files/ tree): one member is not UTF-8, one is flagged encrypted."""
    tables, size = clean
    d = Damaged(Tables({}, []), _copy(synth_raw, tmp_path_factory, "fuzz_zip"))
    root = d.raw / REPORTS
    members = {_rel(p, root): p.read_bytes() for p in sorted(root.glob("files/p*/p*/s*.txt"))}
    studies = sorted({r["study_id"] for k, r in tables.rows.items() if k[0] == MIMIC})
    bad, locked = (next(m for m in members if m.endswith(f"/s{s}.txt")) for s in studies[:2])
    members[bad] = _latin1_letter(members[bad])
    shutil.rmtree(root / "files")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    (root / "mimic-cxr-reports.zip").write_bytes(_patch_headers(buf.getvalue(), locked, flags=0x01))
    for name, study, member in (("zip_utf8", studies[0], bad), ("zip_encrypted", studies[1], locked)):
        d.touched[name] = _study_keys(tables, study)
        d.expected_rejects[name] = ("report", f"{REPORTS}/mimic-cxr-reports.zip::{member}")
    d.tables = _ingest(d.raw, size)
    return d


@pytest.mark.parametrize(("damage", "reason"), [("zip_utf8", "utf-8"), ("zip_encrypted", "encrypted")])
def test_an_unreadable_zipped_report_is_a_reject_and_its_images_stay(zipped_reports, clean, damage, reason):
    stage, path = zipped_reports.expected_rejects[damage]
    hits = [r for r in zipped_reports.tables.rejects if (r["stage"], r["source_path"]) == (stage, path)]
    assert len(hits) == 1 and reason in hits[0]["reason"].lower(), hits
    for key in zipped_reports.touched[damage]:
        expected = _with(clean[0].rows[key], report_sentences=[])
        assert clean[0].rows[key]["report_sentences"] and zipped_reports.tables.digest(key) == row_digest(expected)


def test_zipped_reports_lose_nothing_else(zipped_reports, clean):
    """Every other row, sentences included, is what the extracted files/ tree gave."""
    assert sorted((r["stage"], r["source_path"]) for r in zipped_reports.tables.rejects) == sorted(
        zipped_reports.expected_rejects.values())
    touched = set().union(*zipped_reports.touched.values())
    assert set(zipped_reports.tables.rows) == set(clean[0].rows)
    changed = [k for k in set(clean[0].rows) - touched if zipped_reports.tables.digest(k) != clean[0].digest(k)]
    assert not changed


# --- tables re-saved with extra or reordered columns ----------------------------------------------------------------

TABLE_GLOBS = ("mimic-cxr-jpg/2.0.0/*.csv.gz", "vindr-cxr/1.0.0/annotations/*.csv", "ms-cxr/*/*.csv",
               "nih-chest-xrays/*.csv")


def _header_groups(line: str) -> list[tuple[str, int]]:
    """Header names with the number of cells each covers: NIH's ``OriginalImage[Width,Height]`` covers two."""
    names, depth, name = [], 0, ""
    for ch in line:
        if ch == "," and depth == 0:
            names.append(name)
            name = ""
        else:
            name += ch
            depth += (ch == "[") - (ch == "]")
    return [(n, n.count(",") + 1) for n in [*names, name]]


Group = tuple[str, list[list[str]]]   # a header name and its cells in every row


def _rewrite_table(path: Path, change: Callable[[list[Group]], list[Group]]) -> None:
    """Apply ``change`` to the table's columns (bracketed groups kept whole), keeping gzip if it was gzipped."""
    gz = path.suffix == ".gz"
    text = (gzip.decompress(path.read_bytes()) if gz else path.read_bytes()).decode()
    header, _, body = text.partition("\n")
    widths = _header_groups(header)
    width = sum(w for _, w in widths)
    rows = [r + [""] * (width - len(r)) for r in csv.reader(io.StringIO(body)) if r]
    groups, at = [], 0
    for name, w in widths:
        groups.append((name, [r[at:at + w] for r in rows]))
        at += w
    groups = change(groups)
    out = io.StringIO()
    out.write(",".join(name for name, _ in groups) + "\n")
    csv.writer(out, lineterminator="\n").writerows([sum((g[1][i] for g in groups), []) for i in range(len(rows))])
    data = out.getvalue().encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)


def _named(groups: list[Group]) -> tuple[list[Group], list[Group]]:
    """Named columns, then the trailing unnamed ones (NIH's trailing commas), which stay last."""
    return [g for g in groups if g[0]], [g for g in groups if not g[0]]


def _add_columns(groups: list[Group]) -> list[Group]:
    """A free-text column second (with commas and quotes in its cells) and a numeric one last."""
    named, unnamed = _named(groups)
    n = len(groups[0][1])
    note = ("Note", [[f'checked, "ok" {i}'] for i in range(n)])
    return [named[0], note, *named[1:], ("Extra Score", [[str(i * 0.5)] for i in range(n)]), *unnamed]


def _reverse_columns(groups: list[Group]) -> list[Group]:
    named, unnamed = _named(groups)
    return [*named[::-1], *unnamed]


@pytest.fixture(scope="module", params=["extra", "reordered"])
def relaid(request, clean, synth_raw: Path, ray_local, tmp_path_factory) -> tuple[str, Tables, list[str]]:
    """Every table a reader uses, re-saved with extra columns or with its columns reversed, then ingested."""
    raw = _copy(synth_raw, tmp_path_factory, f"fuzz_{request.param}")
    tables = sorted(p for pattern in TABLE_GLOBS for p in raw.glob(pattern))
    for path in tables:
        _rewrite_table(path, _add_columns if request.param == "extra" else _reverse_columns)
    return request.param, _ingest(raw, clean[1]), [_rel(p, raw) for p in tables]


@pytest.mark.parametrize("source", [MIMIC, MS, VINDR, NIH])
def test_extra_or_reordered_columns_change_nothing(relaid, clean, source):
    layout, tables, rewritten = relaid
    assert len(rewritten) == 11   # MIMIC metadata/split/chexpert/negbio, 4 VinDr, MS-CXR, NIH entry and boxes
    assert [r for r in tables.rejects if r["source"] == source] == []
    keys = {k for k in clean[0].rows if k[0] == source}
    assert {k for k in tables.rows if k[0] == source} == keys
    assert [k for k in sorted(keys) if tables.digest(k) != clean[0].digest(k)] == [], f"{layout} columns in {source}"


# --- the readers' pieces, on their own ------------------------------------------------------------------------------


@pytest.mark.parametrize(("photometric", "bits"), [("RGB", 8), ("RGB", 12), ("YBR_FULL", 8)])
def test_a_colour_dicom_is_read_as_its_bt601_luminance(tmp_path, photometric, bits):
    """Expected gray from the picture itself: ITU-R BT.601 luma, then the min-max every DICOM gets."""
    y, x = np.mgrid[0:40, 0:56]
    rgb = np.stack([(x * 4) % 256, (y * 6) % 256, ((x + y) * 3) % 256], axis=-1).astype(np.uint8)  # channels differ
    stored = convert_color_space(rgb, "RGB", "YBR_FULL") if photometric == "YBR_FULL" else rgb
    _dicom(tmp_path / "c.dcm", stored.astype(np.uint16) << (bits - 8) if bits > 8 else stored, photometric, bits)
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    expected = (luma - luma.min()) * 255 / (luma.max() - luma.min())
    got = load_gray(tmp_path / "c.dcm")[0].astype(np.float64)
    assert got.shape == (40, 56)
    assert np.abs(got - expected).max() <= (0.5 + 1e-9 if photometric == "RGB" else 2.0)   # YBR rounds per channel


def test_a_multi_frame_dicom_is_refused_with_the_frame_count(tmp_path):
    frame = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
    _dicom(tmp_path / "m.dcm", np.stack([frame, frame[::-1], frame[:, ::-1]]), "MONOCHROME2", 12)
    with pytest.raises(ImageDecodeError, match=r"m\.dcm: multi-frame DICOM \(3 frames\)"):
        load_gray(tmp_path / "m.dcm")


def test_an_unreadable_zip_member_is_an_archive_error_that_names_it(tmp_path):
    """Encrypted, Deflate64 and corrupt members are bad data (an OSError the readers reject), never a crash."""
    text = b"No acute cardiopulmonary process. " * 20
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("ok.txt", "locked.txt", "deflate64.txt", "corrupt.txt"):
            zf.writestr(name, text)
    data = _patch_headers(_patch_headers(buf.getvalue(), "locked.txt", flags=0x01), "deflate64.txt", method=9)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo("corrupt.txt")
    body = info.header_offset + 30 + len("corrupt.txt") + 5
    data = data[:body] + bytes([data[body] ^ 0xFF]) + data[body + 1:]
    (tmp_path / "r.zip").write_bytes(data)
    assert read_member(str(tmp_path / "r.zip"), "ok.txt") == text
    for member, why in (("locked.txt", "encrypted"), ("deflate64.txt", "compression method"), ("corrupt.txt", "")):
        with pytest.raises(ArchiveError, match=rf"{re.escape(member)}.*{why}"):
            read_member(str(tmp_path / "r.zip"), member)
    assert issubclass(ArchiveError, OSError)
    with pytest.raises(KeyError):
        read_member(str(tmp_path / "r.zip"), "absent.txt")


def test_report_line_ends_do_not_change_its_sentences(synth_raw):
    """CRLF (Windows), CR (classic Mac) and a UTF-8 byte-order mark: the same sentences as the LF original."""
    from preprocessing.sentences import report_sentences_batch

    texts = [p.read_text() for p in sorted(synth_raw.glob(f"{REPORTS}/files/p*/p*/s*.txt"))]
    variants = [t.replace("\n", "\r\n") for t in texts] + [t.replace("\n", "\r") for t in texts] + [
        "\ufeff" + t for t in texts]
    original = report_sentences_batch(texts)
    assert all(original) and report_sentences_batch(variants) == original * 3
