"""Incremental ingest: after studies are added or a file changes, only those records are processed, and the tables
equal a full rebuild's (same dataset digests); lineage names every row's source file and its digest."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from pipelines.ingest import incremental as inc
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.job import run_ingest
from preprocessing.records import RawRecord

from conftest import INGEST_SIZE


def _earlier_tree(synth_raw: Path, raw: Path) -> list[str]:
    """The raw tree as it was before 2 NIH images (without boxes) and 1 VinDr train image were added; returns
    the sample ids that are new in the full tree."""
    shutil.copytree(synth_raw, raw)
    nih = raw / "nih-chest-xrays"
    boxed = {line.split(",")[0] for line in (nih / "BBox_List_2017.csv").read_text().splitlines()}
    entry = (nih / "Data_Entry_2017.csv").read_text().splitlines()
    added = [line.split(",")[0] for line in entry[1:] if line.split(",")[0] not in boxed][-2:]
    (nih / "Data_Entry_2017.csv").write_text("\n".join(line for line in entry if line.split(",")[0] not in added) + "\n")
    for name in added:
        next(nih.rglob(name)).unlink()
    ann = raw / "vindr-cxr" / "1.0.0" / "annotations"
    image_id = (ann / "image_labels_train.csv").read_text().splitlines()[-1].split(",")[0]
    for table in ("image_labels_train.csv", "annotations_train.csv"):
        lines = (ann / table).read_text().splitlines()
        (ann / table).write_text("\n".join(line for line in lines if not line.startswith(image_id)) + "\n")
    (raw / "vindr-cxr" / "1.0.0" / "train" / f"{image_id}.dicom").unlink()
    return [*added, image_id]


@pytest.mark.slow
def test_added_and_changed_files_are_the_only_work_and_match_a_full_rebuild(synth_raw, ingested, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    added = _earlier_tree(synth_raw, raw)
    cfg = IngestConfig(image_size=INGEST_SIZE)
    before = run_ingest(raw, out, cfg)
    assert before["incremental"] == {"rows_reused": 0, "rows_processed": before["records_read"]}
    shutil.rmtree(raw)
    shutil.copytree(synth_raw, raw)   # the studies arrive (every file rewritten: new mtimes, same bytes)
    changed = sorted((raw / "nih-chest-xrays").rglob("*.png"))[0]
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed)   # one image re-exported
    after = run_ingest(raw, out, cfg)
    full = run_ingest(raw, tmp_path / "full", cfg)
    assert after["incremental"]["rows_processed"] == len(added) + 1
    assert after["incremental"]["rows_reused"] == full["incremental"]["rows_processed"] - len(added) - 1
    assert {k: (v["rows"], v["digest"]) for k, v in after["datasets"].items()} == \
        {k: (v["rows"], v["digest"]) for k, v in full["datasets"].items()}
    # the unchanged rows equal the shared fixture's full ingest of the original tree, partition by partition
    same = {k for k in ingested[1]["datasets"] if k not in {"nih_cxr/train", "nih_cxr/val", "nih_cxr/test"}}
    assert {k: after["datasets"][k]["digest"] for k in same} == {k: ingested[1]["datasets"][k]["digest"] for k in same}
    lineage = pl.read_parquet(out / "lineage" / "rows.parquet")
    assert lineage.height == sum(v["rows"] for v in after["datasets"].values())
    for row in lineage.sample(n=min(12, lineage.height), seed=0).iter_rows(named=True):
        assert row["source_digest"] == hashlib.sha256((raw / row["source_path"]).read_bytes()).hexdigest()
    files = pl.read_parquet(out / "lineage" / "raw_files.parquet")
    assert files.filter(pl.col("path").str.ends_with(changed.name))["digest"].to_list() == [
        hashlib.sha256(changed.read_bytes()).hexdigest()]


def test_input_key_follows_the_settings_the_files_and_the_record(tmp_path):
    """A row is redone when its record, its image's digest, its report member or a row-shaping setting changes."""
    image, report = tmp_path / "a.png", tmp_path / "files" / "r.txt"
    report.parent.mkdir()
    image.write_bytes(b"png"), report.write_text("FINDINGS: clear.")
    rec = RawRecord("nih_cxr", "train", "a", "a", str(image), "a.png", report=(str(tmp_path), "files/r.txt"))
    digests = {str(image): "d1", str(report): "r1"}
    key = inc.input_key(rec.to_json(), rec, "base", digests)
    assert key == inc.input_key(rec.to_json(), rec, "base", dict(digests))
    assert key != inc.input_key(rec.to_json(), rec, "base2", digests)
    assert key != inc.input_key(rec.to_json(), rec, "base", {**digests, str(image): "d2"})
    assert key != inc.input_key(rec.to_json(), rec, "base", {**digests, str(report): "r2"})
    moved = RawRecord(**{**rec.__dict__, "split": "val"})
    assert key != inc.input_key(moved.to_json(), moved, "base", digests)
