"""Failures a pipeline must hear about: an absent source, data that vanished, missing images beyond the declared
intent, and table rows that point outside their dataset root."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from pipelines.ingest.checks import IngestError
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.job import run_ingest
from pipelines.ingest.plan import plan_ingest, source_roots
from tests_support import only_sources

SIZE = 32
REPO = Path(__file__).resolve().parents[1]


def _copy(synth_raw: Path, tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(synth_raw, raw)
    return raw


def _nih_entries(raw: Path) -> list[str]:
    return (raw / "nih-chest-xrays" / "Data_Entry_2017.csv").read_text().splitlines()


def test_a_configured_source_whose_folder_is_absent_fails_and_null_skips_it(synth_raw, tmp_path):
    raw = _copy(synth_raw, tmp_path)
    shutil.rmtree(raw / "ms-cxr")
    with pytest.raises(IngestError, match=r"configured source folder\(s\) not found: ms_cxr: .*ms-cxr .*set the source to null"):
        source_roots(raw, IngestConfig())
    roots = source_roots(raw, IngestConfig(sources=only_sources("mimic_cxr_jpg", "vindr_cxr", "nih_cxr")))
    assert sorted(roots) == ["mimic_cxr_jpg", "nih_cxr", "vindr_cxr"]


def test_a_source_with_header_only_tables_fails(synth_raw, tmp_path):
    raw = _copy(synth_raw, tmp_path)
    entry = raw / "nih-chest-xrays" / "Data_Entry_2017.csv"
    entry.write_text(_nih_entries(raw)[0] + "\n")
    with pytest.raises(IngestError, match="source nih_cxr .* yielded no records"):
        plan_ingest(raw, IngestConfig(sources=only_sources("nih_cxr")))


def test_rows_pointing_outside_their_root_are_rejects_and_never_planned(synth_raw, tmp_path):
    """``..`` segments and absolute paths in table cells: a reject each; no record names a path outside a root."""
    raw = _copy(synth_raw, tmp_path)
    entry = raw / "nih-chest-xrays" / "Data_Entry_2017.csv"
    template = _nih_entries(raw)[1].split(",")
    evil = ["../../../../../etc/passwd", "/etc/hostname", "images_001/../../../outside.png"]
    with open(entry, "a") as f:
        for i, name in enumerate(evil):
            f.write(",".join([name, "No Finding", "0", str(90000 + i), *template[4:]]) + "\n")
    labels = raw / "vindr-cxr" / "1.0.0" / "annotations" / "image_labels_train.csv"
    row = labels.read_text().splitlines()[1].split(",")
    with open(labels, "a") as f:
        f.write(",".join(["../../../../etc/shadow", *row[1:]]) + "\n")
    plan = plan_ingest(raw, IngestConfig(sources=only_sources("nih_cxr", "vindr_cxr"), max_reject_fraction=1.0))
    roots = [str(p) for p in source_roots(raw, IngestConfig(sources=only_sources("nih_cxr", "vindr_cxr"))).values()]
    assert all(os.path.normpath(r.image_path).startswith(tuple(roots)) for r in plan.records)
    outside = [r for r in plan.rejects if "lies outside" in r.reason]
    assert sorted(r.record_id for r in outside) == sorted([*evil, "../../../../etc/shadow"])
    assert {r.stage for r in outside} == {"table"}
    assert not {r.sample_id for r in plan.records} & {*evil, "../../../../etc/shadow"}


def _drop_nih_images(raw: Path, n: int) -> list[str]:
    """Delete the image files of n NIH entries without boxes (their rows stay listed); returns their names."""
    boxed = {line.split(",")[0] for line in (raw / "nih-chest-xrays" / "BBox_List_2017.csv").read_text().splitlines()}
    files = sorted(p for p in (raw / "nih-chest-xrays").rglob("*.png") if p.name not in boxed)[:n]
    for p in files:
        p.unlink()
    return [p.name for p in files]


def test_missing_images_fail_before_decoding_unless_a_partial_mirror_is_declared(synth_raw, ray_local, tmp_path):
    raw = _copy(synth_raw, tmp_path)
    n_nih = len(_nih_entries(raw)) - 1
    gone = _drop_nih_images(raw, 1)
    cfg = IngestConfig(image_size=SIZE, sources=only_sources("nih_cxr"))
    with pytest.raises(IngestError, match=rf"nih_cxr: 1 of {n_nih} image files are missing .*allow_missing_images: "
                                          r"true\nper source, before any image was decoded:\n  nih_cxr: "):
        run_ingest(raw, tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()   # failed during planning: nothing written
    cfg.allow_missing_images = True
    manifest = run_ingest(raw, tmp_path / "out", cfg)
    rejects = pl.read_parquet(tmp_path / "out" / "rejects" / "rejects.parquet")
    assert rejects.filter(pl.col("stage") == "missing")["record_id"].to_list() == gone
    assert manifest["rejects"]["by_stage"] == {"missing": 1}
    assert sum(d["rows"] for d in manifest["datasets"].values()) == n_nih - 1


def test_cli_failure_is_one_error_with_a_per_source_summary(synth_raw, tmp_path):
    """Every NIH image gone: exit 1, the error and the per-source summary, no traceback."""
    raw = _copy(synth_raw, tmp_path)
    for p in (raw / "nih-chest-xrays").rglob("*.png"):
        p.unlink()
    cfg = tmp_path / "ingest.yaml"
    cfg.write_text("sources: {mimic_cxr_jpg: null, mimic_cxr_reports: null, chest_imagenome: null, ms_cxr: null,"
                   " vindr_cxr: null}\nallow_missing_images: true\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "chex"), "ingest", "--raw", str(raw), "--out",
                           str(tmp_path / "out"), "--config", str(cfg)], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("chex ingest: error:")]
    assert error and "source nih_cxr kept none of its" in error[0]
    n_nih = len(_nih_entries(raw)) - 1
    assert f"  nih_cxr: {n_nih} records, 0 kept, {n_nih} images missing, 0 rejected" in proc.stderr


def test_tally_counts_missing_apart_from_rejected():
    """Hand-made counts: a missing image is not a corrupt one; both fractions are checked against the ceiling."""
    from pipelines.ingest.checks import check_outcome, tally

    rejects = [{"source": "a", "stage": "missing", "reason": "image file not found"}] * 3 + \
              [{"source": "a", "stage": "image", "reason": "truncated"}] * 2
    t = tally(Counter(a=100), Counter(a=95), rejects)["a"]
    assert (t.read, t.kept, t.missing, t.rejected) == (100, 95, 3, 2)
    check_outcome({"a": t}, rejects, 0.05, allow_missing=False)          # 3 % and 2 % both under 5 %
    with pytest.raises(IngestError, match="2 of 100 records rejected"):
        check_outcome({"a": t}, rejects, 0.01, allow_missing=True)
    t.kept, t.missing = 92, 6
    with pytest.raises(IngestError, match="6 of 100 image files are missing"):
        check_outcome({"a": t}, rejects, 0.05, allow_missing=False)
    check_outcome({"a": t}, rejects, 0.05, allow_missing=True)
