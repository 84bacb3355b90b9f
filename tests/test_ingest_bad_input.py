"""Bad raw input: the job finishes, each broken thing is a reject with a clear reason, good records all survive."""
from __future__ import annotations

import csv
import shutil
import zipfile
from pathlib import Path

import polars as pl
import pytest

from pipelines.ingest.job import run_ingest
from pipelines.ingest.config import IngestConfig

SIZE = 48


def _first(paths) -> Path:
    return sorted(paths)[0]


@pytest.fixture(scope="module")
def broken(synth_raw: Path, ray_local, tmp_path_factory) -> dict:
    raw = tmp_path_factory.mktemp("broken") / "raw"
    shutil.copytree(synth_raw, raw)
    with open(next(raw.rglob("MS_CXR_Local_Alignment_v*.csv")), newline="") as f:
        ms_ids = {r["dicom_id"] for r in csv.DictReader(f)}
    jpg = _first(p for p in raw.rglob("*.jpg") if p.stem not in ms_ids)
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    dcm = _first(raw.rglob("*.dicom"))
    data = bytearray(dcm.read_bytes())
    data[200:] = b"\xff\x00" * ((len(data) - 200) // 2)
    dcm.write_bytes(bytes(data))
    zpath = next(raw.rglob("scene_graph.zip"))
    with zipfile.ZipFile(zpath) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    bad_graph = sorted(members)[0]
    members[bad_graph] = b'{"image_id": "x", "objects": [ '
    with zipfile.ZipFile(zpath, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    nih = next(raw.rglob("BBox_List_2017.csv"))
    nih_image = sorted(p.name for p in raw.rglob("images_*/images/*.png"))[0]
    with open(nih, "a") as f:
        f.write(f"{nih_image},Nodule,5000.5,6000.25,40.0,40.0\n")
    report = _first(p for p in raw.rglob("mimic-cxr/2.0.0/files/p*/p*/s*.txt") if p.stem != jpg.parent.name)
    report.unlink()
    out = raw.parent / "out"
    manifest = run_ingest(raw, out, IngestConfig(image_size=SIZE, max_reject_fraction=0.5))  # small sources
    table = pl.scan_parquet(out / "tables" / "**" / "*.parquet", hive_partitioning=True).collect()
    return {
        "raw": raw, "jpg": jpg, "dcm": dcm, "graph": bad_graph, "nih_image": nih_image, "report": report,
        "manifest": manifest, "table": table, "rejects": pl.read_parquet(out / "rejects" / "rejects.parquet"),
    }


def _rejects(b: dict, stage: str, path_part: str) -> list[dict]:
    return [r for r in b["rejects"].iter_rows(named=True) if r["stage"] == stage and path_part in r["source_path"]]


def test_truncated_jpeg_is_rejected_with_its_path(broken):
    hits = _rejects(broken, "image", broken["jpg"].name)
    assert len(hits) == 1 and "truncated" in hits[0]["reason"].lower()
    assert broken["jpg"].stem not in broken["table"]["image_id"].to_list()


def test_corrupt_dicom_is_rejected(broken):
    hits = _rejects(broken, "image", broken["dcm"].name)
    assert len(hits) == 1 and broken["dcm"].name in hits[0]["reason"]
    assert broken["dcm"].stem not in broken["table"]["image_id"].to_list()


def test_invalid_scene_graph_is_rejected_but_the_image_kept(broken):
    dicom_id = broken["graph"].split("/")[-1].split("_")[0]
    hits = _rejects(broken, "scene_graph", broken["graph"])
    assert len(hits) == 1 and "invalid JSON" in hits[0]["reason"]
    row = broken["table"].filter((pl.col("image_id") == dicom_id) & (pl.col("source") == "mimic_cxr")).row(0, named=True)
    assert row["region_boxes"] == [] and row["report_sentences"]


def test_box_outside_image_is_rejected_but_other_boxes_kept(broken, synth_raw):
    hits = _rejects(broken, "box", broken["nih_image"])
    assert len(hits) == 1 and "outside" in hits[0]["reason"] and "Nodule" in hits[0]["reason"]
    with open(next(synth_raw.rglob("BBox_List_2017.csv")), newline="") as f:
        original = sum(1 for r in list(csv.reader(f))[1:] if r[0] == broken["nih_image"])
    row = broken["table"].filter(pl.col("image_id") == broken["nih_image"]).row(0, named=True)
    assert len(row["boxes"]) == original


def test_missing_report_is_rejected_and_its_images_kept(broken):
    study = broken["report"].stem[1:]
    hits = _rejects(broken, "report", broken["report"].name)
    assert len(hits) == 1 and "no report" in hits[0]["reason"]
    rows = broken["table"].filter((pl.col("study_id") == study) & (pl.col("source") == "mimic_cxr"))
    assert rows.height >= 1 and all(s == [] for s in rows["report_sentences"].to_list())


def test_every_good_record_is_present(broken, synth_raw, ray_local, tmp_path):
    run_ingest(synth_raw, tmp_path / "clean", IngestConfig(image_size=SIZE))
    clean = pl.scan_parquet(tmp_path / "clean" / "tables" / "**" / "*.parquet", hive_partitioning=True).collect()
    keys = ["source", "split", "sample_id"]
    lost = set(clean.select(keys).iter_rows()) - set(broken["table"].select(keys).iter_rows())
    assert {(source, sample_id.split("/")[-1]) for source, _, sample_id in lost} == {
        ("mimic_cxr", broken["jpg"].stem), ("vindr_cxr", broken["dcm"].stem)}   # exactly the two unreadable images
    assert broken["table"].height == clean.height - 2
    assert broken["manifest"]["rejects"]["rows"] == broken["rejects"].height == 5


def test_too_many_rejects_in_a_source_fail_the_job(broken, ray_local, tmp_path):
    """The broken tree loses 1 of its VinDr images: more than the default 5% of that small source."""
    from pipelines.ingest.job import IngestError

    n_vindr = len(list(broken["raw"].rglob("*.dicom")))
    with pytest.raises(IngestError, match=rf"source vindr_cxr: 1 of {n_vindr} records rejected .*max_reject_fraction 5%"):
        run_ingest(broken["raw"], tmp_path / "out", IngestConfig(image_size=SIZE))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_reader_bug_fails_the_job_with_its_source(synth_raw, monkeypatch, tmp_path):
    from pipelines.ingest import plan
    from pipelines.ingest.job import IngestError

    def bug(*args, **kwargs):
        raise AttributeError("'NoneType' object has no attribute 'split'")

    monkeypatch.setattr(plan, "read_nih", bug)
    with pytest.raises(IngestError, match="the nih_cxr reader failed") as info:
        run_ingest(synth_raw, tmp_path / "out", IngestConfig(image_size=SIZE))
    assert isinstance(info.value.__cause__, AttributeError)


@pytest.mark.parametrize("damage", ["no_entry_table", "missing_column"])
def test_a_source_that_yields_nothing_fails_the_job_with_the_reason(synth_raw, tmp_path, damage):
    from pipelines.ingest.job import IngestError

    raw = tmp_path / "raw"
    shutil.copytree(synth_raw, raw)
    entry = raw / "nih-chest-xrays" / "Data_Entry_2017.csv"
    vindr = raw / "vindr-cxr" / "1.0.0" / "annotations" / "annotations_train.csv"
    if damage == "no_entry_table":
        entry.unlink()
        expected = "source nih_cxr .* yielded no records: missing Data_Entry_2017.csv"
    else:
        vindr.write_text(vindr.read_text().replace("x_min", "xmin", 1))
        expected = r"source vindr_cxr .* yielded no records: .*missing column\(s\) \['x_min'\]"
        (vindr.parent / "annotations_test.csv").unlink()
    with pytest.raises(IngestError, match=expected):
        run_ingest(raw, tmp_path / "out", IngestConfig(image_size=SIZE))
