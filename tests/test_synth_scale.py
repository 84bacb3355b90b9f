"""`chex synth --metadata-only --scale`: every table at a fraction of the releases' real row counts, pixels only for
the sample. Expected counts are computed here from the counts ../specs/dataset-formats.md gives, not by the generator."""
from __future__ import annotations

import csv
import datetime
import gzip
import hashlib
import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from pipelines.cli import main
from preprocessing.chest_imagenome import index_scene_graphs
from preprocessing.mimic_cxr import image_lookup, read_mimic_cxr
from preprocessing.ms_cxr import read_ms_cxr
from preprocessing.nih_cxr import read_nih
from preprocessing.vindr_cxr import read_vindr

F = 0.01          # 3,771 MIMIC images; the whole tree takes a few seconds
SAMPLE = 6        # --studies: MIMIC studies rendered (VinDr max(2, 6 // 2) train + max(2, 6 // 4) test, NIH max(4, 6 // 2))
REAL = {"images": 377_110, "studies": 227_835, "patients": 65_379, "unlabelled": 8, "ms_cxr": 1_162,
        "vindr_train": 15_000, "vindr_test": 3_000, "nih": 112_120, "nih_box_images": 880, "nih_box_rows": 984}
REAL_VIEWS = {"AP": 147_173, "PA": 96_161, "LATERAL": 82_853, "LL": 35_133, "": 15_769}


def at(name: str) -> int:
    return round(REAL[name] * F)


def synth(out: Path, scale: float = F, seed: int = 0, workers: int = 2) -> None:
    assert main(["synth", "--out", str(out), "--metadata-only", "--scale", str(scale), "--studies", str(SAMPLE),
                 "--image-scale", "0.05", "--seed", str(seed), "--workers", str(workers)]) == 0


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scale") / "raw"
    synth(out)
    return out


def gz_rows(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_mimic_tables_have_the_scaled_counts_and_real_shapes(tree):
    base = tree / "mimic-cxr-jpg" / "2.0.0"
    meta = gz_rows(base / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert len(meta) == at("images")
    assert len({r["study_id"] for r in meta}) == at("studies") and len({r["subject_id"] for r in meta}) == at("patients")
    views = Counter(r["ViewPosition"] for r in meta)
    for view, real in REAL_VIEWS.items():   # largest-remainder shares: within one image of the exact proportion
        assert abs(views[view] - real * len(meta) / REAL["images"]) < 1, view
    keys = [(int(r["subject_id"]), int(r["study_id"])) for r in meta]
    assert keys == sorted(keys)             # the release sorts by subject, then study
    for r in meta:
        assert r["subject_id"][0] == "1" and r["study_id"][0] == "5" and len(r["subject_id"]) == len(r["study_id"]) == 8
        assert len(r["dicom_id"]) == 44 and r["dicom_id"].count("-") == 4
        assert 2100 <= datetime.datetime.strptime(r["StudyDate"], "%Y%m%d").year < 2300
        hhmmss = int(float(r["StudyTime"]))
        assert hhmmss < 240000 and hhmmss % 100 < 60 and hhmmss // 100 % 100 < 60
    split = gz_rows(base / "mimic-cxr-2.0.0-split.csv.gz")
    assert sorted(r["dicom_id"] for r in split) == sorted(r["dicom_id"] for r in meta)
    for table in ("chexpert", "negbio"):
        labels = gz_rows(base / f"mimic-cxr-2.0.0-{table}.csv.gz")
        assert len(labels) == at("studies") - at("unlabelled")
    with zipfile.ZipFile(tree / "mimic-cxr" / "2.0.0" / "mimic-cxr-reports.zip") as zf:
        members = set(zf.namelist())
    assert members == {f"files/p{s[:2]}/p{s}/s{st}.txt" for s, st in {(r["subject_id"], r["study_id"]) for r in meta}}
    assert not (tree / "mimic-cxr" / "2.0.0" / "files").exists()   # the zip is what is shipped: no extracted tree


def test_chest_imagenome_ms_cxr_vindr_and_nih_counts(tree):
    meta = gz_rows(tree / "mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz")
    frontal = {r["dicom_id"]: r for r in meta if r["ViewPosition"] in ("PA", "AP")}
    cig = tree / "chest-imagenome/1.0.0/silver_dataset"
    with zipfile.ZipFile(cig / "scene_graph.zip") as zf:
        assert set(zf.namelist()) == {f"scene_graph/{d}_SceneGraph.json" for d in frontal}
    assert sum(len(csv_rows(cig / "splits" / f"{s}.csv")) for s in ("train", "valid", "test")) == len(frontal)
    ms = csv_rows(tree / "ms-cxr/1.1.0/MS_CXR_Local_Alignment_v1.1.0.csv")
    assert len(ms) == at("ms_cxr")
    for r in ms:
        image = frontal[r["dicom_id"]]
        assert (r["image_width"], r["image_height"]) == (image["Columns"], image["Rows"])
        x, y, w, h = (int(r[k]) for k in "xywh")
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= int(r["image_width"]) + 1 and y + h <= int(r["image_height"]) + 1
    ann = tree / "vindr-cxr/1.0.0/annotations"
    train = csv_rows(ann / "image_labels_train.csv")
    assert len(train) == 3 * at("vindr_train") and len({r["image_id"] for r in train}) == at("vindr_train")
    assert len(csv_rows(ann / "image_labels_test.csv")) == at("vindr_test")
    nih = tree / "nih-chest-xrays"
    assert len((nih / "Data_Entry_2017.csv").read_text().splitlines()) == 1 + at("nih")
    boxes = list(csv.reader(io.StringIO((nih / "BBox_List_2017.csv").read_text())))[1:]
    assert len(boxes) == at("nih_box_rows") and len({b[0] for b in boxes}) == at("nih_box_images")


def test_tables_parse_with_the_real_readers_without_a_reject(tree):
    graphs = index_scene_graphs(tree / "chest-imagenome/1.0.0")
    mimic, rejects = read_mimic_cxr(tree / "mimic-cxr-jpg/2.0.0", tree, tree / "mimic-cxr/2.0.0", graphs)
    assert not rejects and len(mimic) == at("images")
    assert all(r.report is not None for r in mimic)
    assert sum(r.scene_graph is not None for r in mimic) == sum(r.view_position in ("PA", "AP") for r in mimic)
    ms, rejects = read_ms_cxr(tree / "ms-cxr", tree, image_lookup(mimic))
    assert not rejects and sum(len(g.boxes) for r in ms for g in r.grounded_phrases) == at("ms_cxr")
    vindr, rejects = read_vindr(tree / "vindr-cxr/1.0.0", tree, 1)
    assert not rejects and len(vindr) == at("vindr_train") + at("vindr_test")
    nih, rejects = read_nih(tree / "nih-chest-xrays", tree, 1)
    assert not rejects and len(nih) == at("nih") and sum(len(r.boxes) for r in nih) == at("nih_box_rows")


def test_images_and_full_scene_graphs_exist_only_for_the_sample(tree):
    meta = gz_rows(tree / "mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz")
    sample_studies = list(dict.fromkeys(r["study_id"] for r in meta))[:SAMPLE]
    sample = {r["dicom_id"]: r for r in meta if r["study_id"] in sample_studies}
    jpgs = {p.stem: p for p in (tree / "mimic-cxr-jpg/2.0.0/files").rglob("*.jpg")}
    assert set(jpgs) == set(sample)
    for dicom_id, path in jpgs.items():
        with Image.open(path) as im:
            assert im.size == (int(sample[dicom_id]["Columns"]), int(sample[dicom_id]["Rows"]))
    with zipfile.ZipFile(tree / "chest-imagenome/1.0.0/silver_dataset/scene_graph.zip") as zf:
        graphs = [json.loads(zf.read(n)) for n in zf.namelist()]
    full = {g["image_id"] for g in graphs if g["objects"]}
    assert full == {d for d, r in sample.items() if r["ViewPosition"] in ("PA", "AP")}
    assert all(len(g["objects"]) == 36 and g["attributes"] for g in graphs if g["image_id"] in full)
    vindr = tree / "vindr-cxr/1.0.0"
    assert len(list((vindr / "train").glob("*.dicom"))) == max(2, SAMPLE // 2)
    assert len(list((vindr / "test").glob("*.dicom"))) == max(2, SAMPLE // 4)
    assert len(list((tree / "nih-chest-xrays").rglob("*.png"))) == max(4, SAMPLE // 2)


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_trees_whatever_the_workers(tmp_path):
    synth(tmp_path / "a", scale=0.002, seed=5, workers=1)
    synth(tmp_path / "b", scale=0.002, seed=5, workers=2)
    synth(tmp_path / "c", scale=0.002, seed=6, workers=2)
    a, b, c = (digests(tmp_path / x) for x in "abc")
    assert a == b and len(a) > 20
    assert a["mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz"] != c["mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz"]


@pytest.mark.parametrize("args, message", [
    (["--scale", "full"], "add --metadata-only"),
    (["--metadata-only"], "--metadata-only needs --scale full"),
    (["--metadata-only", "--scale", "1.5"], "must be demo, full or a fraction of full within (0, 1], got 1.5"),
    (["--metadata-only", "--scale", "huge"], "got huge"),
])
def test_bad_scale_options_end_in_one_clear_line(args, message, tmp_path, capsys):
    try:
        code = main(["synth", "--out", str(tmp_path / "raw"), *args])
    except SystemExit as exc:   # argparse type errors exit from the parser
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "raw").exists()
