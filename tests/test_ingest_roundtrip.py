"""Generator -> ingest -> polars: everything the generator wrote comes back, checked by independent arithmetic."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.ingest.job import run_ingest
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.schema import FILE_SCHEMA
from preprocessing.synth.catalog import CATALOG
from preprocessing.synth.generate import sample_truth

from conftest import INGEST_SIZE as SIZE

TOL = 1.5 / SIZE   # boxes are compared in the stored frame; one and a half stored pixels


def stored(x1: float, y1: float, x2: float, y2: float, w: int, h: int) -> tuple[float, float, float, float]:
    """Expected (cx, cy, w, h) after short-side resize + centre crop, computed here from first principles."""
    side = min(w, h)
    ox, oy = (w - side) / 2, (h - side) / 2
    a = [min(max(v, 0.0), 1.0) for v in ((x1 - ox) / side, (y1 - oy) / side, (x2 - ox) / side, (y2 - oy) / side)]
    return ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2, a[2] - a[0], a[3] - a[1])


def as_tuple(box: dict) -> tuple[float, float, float, float]:
    return (box["cx"], box["cy"], box["w"], box["h"])


@pytest.fixture(scope="module")
def table(ingested) -> pl.DataFrame:
    out, _ = ingested
    return pl.scan_parquet(out / "tables" / "**" / "*.parquet", hive_partitioning=True).collect()


@pytest.fixture(scope="module")
def truth(synth_config):
    return sample_truth(synth_config)


def rows_by(table: pl.DataFrame, source: str, key: str = "image_id") -> dict[str, dict]:
    return {r[key]: r for r in table.filter(pl.col("source") == source).iter_rows(named=True)}


def test_files_have_the_documented_schema(ingested):
    out, _ = ingested
    files = sorted((out / "tables").rglob("*.parquet"))
    assert files
    for f in files:
        assert pq.read_schema(f).remove_metadata().equals(FILE_SCHEMA), f


def test_clean_data_has_no_rejects_and_manifest_counts_match(synth_raw, ingested, table, truth):
    out, manifest = ingested
    assert pl.read_parquet(out / "rejects" / "rejects.parquet").height == 0
    n_mimic = sum(len(s.images) for s in truth.studies)
    counts = table.group_by("source").len()
    assert dict(counts.iter_rows()) == {
        "mimic_cxr": n_mimic, "vindr_cxr": len(truth.vindr), "nih_cxr": len(truth.nih),
        "ms_cxr": len({r["dicom_id"] for r in _ms_cxr_rows(synth_raw)}),
    }
    assert sum(d["rows"] for d in manifest["datasets"].values()) == table.height
    for key, d in manifest["datasets"].items():
        source, split = key.split("/")
        assert table.filter((pl.col("source") == source) & (pl.col("split") == split)).height == d["rows"]
        assert len(d["digest"]) == 64


def _ms_cxr_rows(raw: Path) -> list[dict]:
    with open(next(raw.rglob("MS_CXR_Local_Alignment_v*.csv")), newline="") as f:
        return list(csv.DictReader(f))


def test_mimic_labels_sentences_and_splits(table, truth):
    rows = rows_by(table, "mimic_cxr")
    split_map = {"train": "train", "validate": "val", "test": "test"}
    for study in truth.studies:
        expected_labels = {k: int(v) for k, v in study.chexpert().items()} if study.has_chexpert_row else {}
        expected_sentences = list(dict.fromkeys(s.text for s in study.sentences))
        for im in study.images:
            row = rows[im.dicom_id]
            assert row["sample_id"] == f"{study.subject_id}/{study.study_id}/{im.dicom_id}"
            assert row["split"] == split_map[study.split]
            assert (row["orig_width"], row["orig_height"]) == (im.width, im.height)
            assert {d["name"]: d["value"] for d in row["labels"]} == expected_labels
            assert row["report_sentences"] == expected_sentences, study.report_style


def test_mimic_scene_graph_boxes_and_labels(synth_raw, table, truth):
    rows = rows_by(table, "mimic_cxr")
    zpath = next(synth_raw.rglob("scene_graph.zip"))
    with zipfile.ZipFile(zpath) as zf:
        graphs = {n.split("/")[-1].split("_")[0]: json.loads(zf.read(n)) for n in zf.namelist()}
    for study in truth.studies:
        for im in study.images:
            row = rows[im.dicom_id]
            if not im.frontal:
                assert row["region_boxes"] == [] and row["region_labels"] == []
                continue
            got = {b["name"]: as_tuple(b) for b in row["region_boxes"]}
            objects = graphs[im.dicom_id]["objects"]
            assert len(got) == len(objects) == 36
            for obj in objects:
                want = stored(obj["original_x1"], obj["original_y1"], obj["original_x2"], obj["original_y2"], im.width, im.height)
                np.testing.assert_allclose(got[obj["bbox_name"]], want, atol=1e-4)
            expected: dict[tuple[str, str], int] = {}
            for s in study.sentences:
                if s.kind is None:
                    continue
                names = [*CATALOG[s.kind].cig_findings, "abnormal"]
                for region in s.regions:
                    for name in names:
                        value = 0 if s.polarity == "no" else 1
                        expected[(region, name)] = max(expected.get((region, name), 0), value)
            assert {(d["region"], d["finding"]): d["value"] for d in row["region_labels"]} == expected
            phrases = {d["region"]: d["phrases"] for d in row["region_phrases"]}
            for s in study.sentences:
                for region in s.regions:
                    assert s.text in phrases[region]


def test_ms_cxr_grounded_phrases(synth_raw, table):
    rows = rows_by(table, "ms_cxr")
    expected: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in _ms_cxr_rows(synth_raw):
        x, y, w, h = (float(r[k]) for k in "xywh")
        expected[r["dicom_id"]][r["label_text"]].append(
            stored(x, y, x + w, y + h, int(r["image_width"]), int(r["image_height"])))
    assert set(rows) == set(expected)
    for dicom_id, phrases in expected.items():
        got = {g["phrase"]: sorted(as_tuple(b) for b in g["boxes"]) for g in rows[dicom_id]["grounded_phrases"]}
        assert set(got) == set(phrases)
        for phrase, boxes in phrases.items():
            np.testing.assert_allclose(got[phrase], sorted(boxes), atol=TOL)


def test_nih_boxes_and_labels(synth_raw, table, truth):
    rows = rows_by(table, "nih_cxr")
    root = next(synth_raw.glob("nih-chest-xrays"))
    with open(root / "BBox_List_2017.csv", newline="") as f:
        bbox = list(csv.reader(f))[1:]
    boxes = defaultdict(list)
    for name, label, x, y, w, h in bbox:
        size = rows[name]["orig_width"]
        boxes[name].append(("Infiltration" if label == "Infiltrate" else label,
                            stored(float(x), float(y), float(x) + float(w), float(y) + float(h), size, size)))
    assert bbox, "the generator should have written NIH boxes"
    for im in truth.nih:
        row = rows[im.index]
        present = {CATALOG[les.kind].nih for les in im.lesions} or {"No Finding"}
        assert {d["name"] for d in row["labels"] if d["value"] == 1} == present
        got = sorted((b["name"], as_tuple(b)) for b in row["boxes"])
        want = sorted(boxes.get(im.index, []))
        assert [n for n, _ in got] == [n for n, _ in want]
        for (_, g), (_, w) in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, atol=TOL)
    eval_patients = {r["patient_id"]: r["split"] for r in rows.values() if r["split"] != "train"}
    assert all(rows[i]["split"] == eval_patients.get(rows[i]["patient_id"], "train") for i in rows)


def test_vindr_test_boxes_and_train_votes(synth_raw, table):
    rows = rows_by(table, "vindr_cxr")
    ann = next(synth_raw.glob("vindr-cxr/1.0.0")) / "annotations"
    test_boxes = pl.read_csv(ann / "annotations_test.csv").filter(pl.col("x_min").is_not_null())
    for image_id, group in test_boxes.group_by("image_id"):
        row = rows[image_id[0]]
        want = sorted((r["class_name"], stored(r["x_min"], r["y_min"], r["x_max"], r["y_max"], row["orig_width"], row["orig_height"]))
                      for r in group.iter_rows(named=True))
        got = sorted((b["name"], as_tuple(b)) for b in row["boxes"])
        assert [n for n, _ in got] == [n for n, _ in want]
        np.testing.assert_allclose([g for _, g in got], [w for _, w in want], atol=TOL)
    assert {r["split"] for r in rows.values()} <= {"train", "val", "test"}
    votes = pl.read_csv(ann / "image_labels_train.csv").drop("rad_id").group_by("image_id").mean()
    for vote in votes.iter_rows(named=True):
        labels = {d["name"]: d["value"] for d in rows[vote["image_id"]]["labels"]}
        for name, mean in vote.items():
            if name != "image_id":
                assert labels[{"Other diseases": "Other disease"}.get(name, name)] == int(mean > 0.5), name
    train_boxes = pl.read_csv(ann / "annotations_train.csv").filter(pl.col("x_min").is_not_null())
    for (image_id, name), group in train_boxes.group_by("image_id", "class_name"):
        row = rows[image_id]
        fused = [as_tuple(b) for b in row["boxes"] if b["name"] == name]
        assert 1 <= len(fused) <= group.height
        readers = [stored(r["x_min"], r["y_min"], r["x_max"], r["y_max"], row["orig_width"], row["orig_height"])
                   for r in group.iter_rows(named=True)]
        for f in fused:   # a fused box lies inside the envelope of the readers' boxes it came from
            assert min(r[0] for r in readers) - TOL <= f[0] <= max(r[0] for r in readers) + TOL


def test_stored_pixels_match_an_independent_resize(synth_raw, table):
    row = table.filter(pl.col("source") == "mimic_cxr").row(0, named=True)
    img = Image.open(synth_raw / row["source_path"]).convert("L")
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    want = np.asarray(img.resize((SIZE, SIZE), Image.Resampling.BOX, box=box), dtype=np.float32)
    got = np.asarray(Image.open(io.BytesIO(row["image_png"])), dtype=np.float32)
    assert got.shape == (SIZE, SIZE)
    assert np.abs(got - want).mean() < 4.0            # JPEG draft decoding differs by a few gray levels
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.95


def test_rerun_is_a_noop_and_force_rebuilds_identically(synth_raw, ingested, ray_local):
    out, manifest = ingested
    again = run_ingest(synth_raw, out, IngestConfig(image_size=SIZE))
    assert again["skipped"] is True and again["created_at"] == manifest["created_at"]
    rebuilt = run_ingest(synth_raw, out, IngestConfig(image_size=SIZE), force=True)
    assert "skipped" not in rebuilt
    assert {k: v["digest"] for k, v in rebuilt["datasets"].items()} == {k: v["digest"] for k, v in manifest["datasets"].items()}
    assert rebuilt["raw_inputs"] == manifest["raw_inputs"]


def test_raw_digest_is_the_sha256_of_the_files(synth_raw, ingested):
    _, manifest = ingested
    entry = manifest["raw_inputs"]["ms_cxr"]
    root = Path(entry["root"])
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        h.update(f"{p.relative_to(root).as_posix()}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    assert entry["digest"] == h.hexdigest() and entry["files"] == len(files) == 1
