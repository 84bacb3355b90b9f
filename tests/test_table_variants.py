"""Tables as users have them: every CSV the readers consume, re-saved as .csv.gz, with CRLF line ends, with a UTF-8
byte-order mark and with every field quoted, reads to the same cells, and a whole raw tree re-saved that way
ingests to the same tables and digests as the plain copy."""
from __future__ import annotations

import csv
import gzip
import io
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.ingest.job import run_ingest
from pipelines.ingest.config import IngestConfig
from preprocessing.tables import find_table, read_csv_rows, read_csv_strings

from conftest import INGEST_SIZE


def _plain_text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.name.endswith(".gz") else data).decode("utf-8")


def _quoted(text: str) -> str:
    """Every non-empty field in quotes, as spreadsheet programs may write them (empty cells stay empty)."""
    rows = csv.reader(io.StringIO(text))
    return "".join(",".join(f'"{v.replace(chr(34), 2 * chr(34))}"' if v else "" for v in row) + "\n" for row in rows)


VARIANTS = {
    "gzip": lambda text: gzip.compress(text.encode(), mtime=0),
    "crlf": lambda text: text.replace("\n", "\r\n").encode(),
    "bom": lambda text: b"\xef\xbb\xbf" + text.encode(),
    "windows": lambda text: b"\xef\xbb\xbf" + _quoted(text).replace("\n", "\r\n").encode(),
}


def _tables(raw: Path) -> list[Path]:
    return sorted(p for p in raw.rglob("*") if p.name.endswith((".csv", ".csv.gz")))


def _resave(path: Path, variant: str) -> Path:
    """Rewrite one table in place as ``variant``; gzip renames x.csv -> x.csv.gz, the others keep x.csv."""
    text = _plain_text(path)
    target = path.with_name(path.name.removesuffix(".gz") + (".gz" if variant == "gzip" else ""))
    path.unlink()
    target.write_bytes(VARIANTS[variant](text))
    return target


def test_the_synthetic_tree_has_every_table_kind(synth_raw: Path) -> None:
    names = {p.name.removesuffix(".gz") for p in _tables(synth_raw)}
    assert {"Data_Entry_2017.csv", "BBox_List_2017.csv", "annotations_train.csv", "image_labels_test.csv",
            "mimic-cxr-2.0.0-metadata.csv", "MS_CXR_Local_Alignment_v1.1.0.csv"} <= names


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_table_reads_to_the_same_cells(synth_raw: Path, tmp_path: Path, variant: str) -> None:
    for path in _tables(synth_raw):
        copy = tmp_path / path.name
        shutil.copy(path, copy)
        resaved = _resave(copy, variant)
        assert find_table(tmp_path, path.name) == resaved, path.name   # found under its shipped name
        expected = list(csv.reader(io.StringIO(_plain_text(path))))
        assert read_csv_rows(resaved) == [r for r in expected if r][1:], (variant, path.name)
        if path.name.startswith("Data_Entry") or path.name.startswith("BBox_List"):
            continue   # NIH's headers cannot be named (commas inside brackets): read by position only
        frame = read_csv_strings(resaved)
        assert frame.columns == expected[0], (variant, path.name)
        assert [[v or "" for v in row] for row in frame.rows()] == [r for r in expected[1:] if r], (variant, path.name)
        copy.with_name(path.name).unlink(missing_ok=True)
        resaved.unlink(missing_ok=True)


def test_nih_reads_the_shipped_gzip_names(synth_raw: Path, tmp_path: Path) -> None:
    """Data_Entry_2017_v2020.csv.gz alone, and a plain Data_Entry beside BBox_List_2017.csv.gz."""
    from preprocessing.nih_cxr import read_nih

    plain_records, _ = read_nih(synth_raw / "nih-chest-xrays", synth_raw, 1)
    root = tmp_path / "nih-chest-xrays"
    shutil.copytree(synth_raw / "nih-chest-xrays", root)
    _resave(root / "BBox_List_2017.csv", "gzip")
    records, rejects = read_nih(root, tmp_path, 1)
    assert [(r.sample_id, r.split, r.boxes) for r in records] == [(r.sample_id, r.split, r.boxes) for r in plain_records]
    assert any(r.boxes for r in records) and not rejects
    (root / "Data_Entry_2017.csv").rename(root / "Data_Entry_2017_v2020.csv")
    _resave(root / "Data_Entry_2017_v2020.csv", "gzip")
    records, _ = read_nih(root, tmp_path, 1)
    assert [(r.sample_id, r.labels, r.boxes) for r in records] == [(r.sample_id, r.labels, r.boxes) for r in plain_records]


@pytest.mark.slow
def test_a_tree_saved_on_windows_and_gzipped_ingests_to_the_same_tables(synth_raw: Path, ingested, ray_local,
                                                                         tmp_path: Path) -> None:
    """NIH, VinDr and MS-CXR tables gzipped, MIMIC's un-gzipped, all with a BOM, CRLF and quoted fields: the
    same rows, the same per-split digests, the same rejects."""
    plain_dir, plain = ingested
    raw = tmp_path / "raw"
    shutil.copytree(synth_raw, raw)
    for path in _tables(raw):
        gzipped = path.name.endswith(".gz")
        target = path.with_name(path.name.removesuffix(".gz") + ("" if gzipped else ".gz"))
        body = VARIANTS["windows"](_plain_text(path))
        path.unlink()
        target.write_bytes(body if gzipped else gzip.compress(body, mtime=0))
    manifest = run_ingest(raw, tmp_path / "out", IngestConfig(image_size=INGEST_SIZE))
    assert manifest["datasets"] == plain["datasets"]
    assert manifest["records_read"] == plain["records_read"]

    def rejects(folder: Path) -> list[tuple[str, str, str]]:
        rows = pq.read_table(folder / "rejects" / "rejects.parquet").to_pylist()
        return sorted((r["source"], r["stage"], r["reason"]) for r in rows)

    assert rejects(tmp_path / "out") == rejects(plain_dir)
