"""The generator: byte-determinism by seed, and raw files in the exact real layouts."""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from preprocessing.classes import CHEXPERT_14, VINDR_GLOBAL_TEST, VINDR_GLOBAL_TRAIN, VINDR_LOCAL_22
from preprocessing.synth.generate import SynthConfig, synthesize

TINY = dict(studies=6, image_scale=0.05, workers=1)


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    synthesize(tmp_path / "a", SynthConfig(seed=3, **TINY))
    synthesize(tmp_path / "b", SynthConfig(seed=3, **TINY))
    synthesize(tmp_path / "c", SynthConfig(seed=4, **TINY))
    a, b, c = (tree_digest(tmp_path / x) for x in "abc")
    assert len(a) > 30 and a == b
    shared = set(a) & set(c)
    assert any(a[k] != c[k] for k in shared)


def _gz_header(path: Path) -> str:
    with gzip.open(path, "rt") as f:
        return f.readline().rstrip("\n")


def test_mimic_layout(synth_raw):
    base = synth_raw / "mimic-cxr-jpg" / "2.0.0"
    assert _gz_header(base / "mimic-cxr-2.0.0-metadata.csv.gz") == (
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,"
        "ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning")
    assert _gz_header(base / "mimic-cxr-2.0.0-split.csv.gz") == "dicom_id,study_id,subject_id,split"
    assert _gz_header(base / "mimic-cxr-2.0.0-chexpert.csv.gz") == "subject_id,study_id," + ",".join(CHEXPERT_14)
    with gzip.open(base / "mimic-cxr-2.0.0-metadata.csv.gz", "rt") as f:
        meta = list(csv.DictReader(f))
    views = {r["ViewPosition"] for r in meta}
    assert {"PA", "AP"} & views and "" in views and views & {"LATERAL", "LL"}
    for r in meta:
        s = r["subject_id"]
        jpg = base / f"files/p{s[:2]}/p{s}/s{r['study_id']}/{r['dicom_id']}.jpg"
        with Image.open(jpg) as im:
            assert im.mode == "L" and im.size == (int(r["Columns"]), int(r["Rows"]))
        assert len(r["dicom_id"]) == 44 and r["dicom_id"].count("-") == 4
        hhmmss = float(r["StudyTime"])
        assert int(hhmmss) % 100 < 60 and int(hhmmss) // 100 % 100 < 60 and not r["StudyTime"].startswith("0")
    reports = sorted((synth_raw / "mimic-cxr" / "2.0.0").rglob("s*.txt"))
    assert len(reports) == len({r["study_id"] for r in meta})
    for path in reports:
        lines = path.read_text().split("\n")
        assert lines[0].strip() in ("FINAL REPORT", "FINAL ADDENDUM") and lines[0].startswith(" " * 20)
        body = [line for line in lines[1:] if line and line.strip() != "FINAL REPORT"]
        assert all(line == " " or (line[0] == " " and line[1] != " ") for line in body), path  # exactly one space
        assert all(len(line) <= 79 for line in body), path


def test_chest_imagenome_layout(synth_raw):
    base = synth_raw / "chest-imagenome" / "1.0.0" / "silver_dataset"
    with zipfile.ZipFile(base / "scene_graph.zip") as zf:
        names = zf.namelist()
    assert names and all(n.startswith("scene_graph/") and n.endswith("_SceneGraph.json") for n in names)
    header = (base / "splits" / "train.csv").read_text().split("\n")[0]
    assert header == ",subject_id,study_id,dicom_id,path,ViewPosition"
    assert (base / "splits" / "images_to_avoid.csv").read_text().startswith("subject_id,study_id,dicom_id,path,ViewPosition")


def test_vindr_layout_and_dicoms(synth_raw):
    base = synth_raw / "vindr-cxr" / "1.0.0"
    ann = base / "annotations"
    assert (ann / "image_labels_train.csv").read_text().split("\n")[0] == ",".join(
        ("image_id", "rad_id", *VINDR_LOCAL_22, *VINDR_GLOBAL_TRAIN))
    assert (ann / "image_labels_test.csv").read_text().split("\n")[0] == ",".join(("image_id", *VINDR_LOCAL_22, *VINDR_GLOBAL_TEST))
    with open(ann / "annotations_train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    per_image: dict[str, set[str]] = {}
    for r in rows:
        per_image.setdefault(r["image_id"], set()).add(r["rad_id"])
        if r["class_name"] == "No finding":
            assert r["x_min"] == r["y_max"] == ""
    assert all(len(readers) == 3 for readers in per_image.values())
    seen = {"MONOCHROME1": 0, "MONOCHROME2": 0, "compressed": 0, "bits": set()}
    for path in sorted(base.glob("*/*.dicom")):
        ds = pydicom.dcmread(path)
        seen[ds.PhotometricInterpretation] += 1
        seen["compressed"] += ds.file_meta.TransferSyntaxUID.is_compressed
        seen["bits"].add(int(ds.BitsStored))
        assert ds.pixel_array.dtype == np.uint16 and int(ds.pixel_array.max()) < 2 ** int(ds.BitsStored)
    assert seen["MONOCHROME1"] and seen["MONOCHROME2"] and seen["compressed"] and seen["bits"] == {12, 14, 16}


def test_nih_layout(synth_raw):
    base = synth_raw / "nih-chest-xrays"
    entry = (base / "Data_Entry_2017.csv").read_text().split("\n")
    assert entry[0].endswith("OriginalImagePixelSpacing[x,y],") and all(line.endswith(",") for line in entry[1:] if line)
    assert (base / "BBox_List_2017.csv").read_text().startswith("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    pngs = sorted(base.glob("images_*/images/*.png"))
    assert len(pngs) == len([line for line in entry[1:] if line])
    with Image.open(pngs[0]) as im:
        assert im.mode == "L" and im.size[0] == im.size[1]


@pytest.mark.parametrize("kind", ["pleural_effusion", "cardiomegaly"])
def test_findings_are_visible_where_their_boxes_say(kind, tmp_path):
    """The MS-CXR box of a finding is brighter in the image than the same box in a healthy phantom of that patient."""
    from preprocessing.synth.phantom import Lesion, render_frontal

    side = "left" if kind == "pleural_effusion" else None
    ill = render_frontal(400, 480, [Lesion(kind, side, "lower" if side else None, 1.0)], np.random.default_rng(5))
    healthy = render_frontal(400, 480, [], np.random.default_rng(5))
    x1, y1, x2, y2 = (int(round(v)) for v in ill.lesion_boxes[0])
    patch = np.s_[y1:y2, x1:x2]
    assert ill.image[patch].mean() > healthy.image[patch].mean() + 0.02
    buf = io.BytesIO()
    Image.fromarray((ill.image * 255).astype(np.uint8)).save(buf, "PNG")
    assert buf.tell() > 0


def test_report_text_round_trips_through_the_sentence_reader():
    """Hundreds of generated reports, all five styles: the reader gets back exactly the truth's sentences."""
    from preprocessing.sentences import report_sentences_batch
    from preprocessing.synth.report_writer import write_report
    from preprocessing.synth.truth import sample_studies

    studies = sample_studies(np.random.default_rng(11), 400, 0.05)
    assert {s.report_style for s in studies} == {"standard", "impression_only", "headerless", "wet_read", "addendum"}
    got = report_sentences_batch([write_report(s, seed=s.study_id) for s in studies])
    for study, sentences in zip(studies, got, strict=True):
        assert sentences == list(dict.fromkeys(s.text for s in study.sentences)), study.report_style


def test_reports_never_deny_what_the_image_shows():
    from preprocessing.synth.catalog import CATALOG
    from preprocessing.synth.truth import sample_studies

    studies = sample_studies(np.random.default_rng(12), 1000, 0.05)
    assert any(s.lesions for s in studies) and any(s.polarity == "no" for st in studies for s in st.sentences)
    for study in studies:
        present = {n for les in study.lesions for n in CATALOG[les.kind].chexpert}
        for s in study.sentences:
            if s.polarity == "no":
                assert not present & set(CATALOG[s.kind].chexpert), (s.text, [les.kind for les in study.lesions])
        assert 10_000_000 <= study.subject_id < 20_000_000   # folder groups p10..p19 as in the real data


def test_rendering_with_two_workers_gives_the_same_bytes(tmp_path):
    synthesize(tmp_path / "one", SynthConfig(seed=5, **{**TINY, "workers": 1}))
    synthesize(tmp_path / "two", SynthConfig(seed=5, **{**TINY, "workers": 2}))
    assert tree_digest(tmp_path / "one") == tree_digest(tmp_path / "two")


@pytest.mark.parametrize("kind, side", [("pleural_effusion", "left"), ("cardiomegaly", None), ("pneumothorax", "right")])
def test_a_linear_model_learns_the_finding_from_pixels(kind, side):
    """Learnability: plain logistic regression on 32x32 thumbnails separates images with and without the finding."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from preprocessing.synth.phantom import Lesion, render_frontal

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 240)
    x = []
    for i, y in enumerate(labels):
        lesions = [Lesion(kind, side, None, float(rng.uniform(0.6, 1.0)))] if y else []
        image = render_frontal(96, 112, lesions, np.random.default_rng(1000 + i)).image
        x.append(np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BOX)).ravel())
    x = np.array(x)
    model = LogisticRegression(C=0.1, max_iter=2000).fit(x[:160], labels[:160])
    assert roc_auc_score(labels[160:], model.decision_function(x[160:])) > 0.85
