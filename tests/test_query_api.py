"""Query and report API, image/box frames, near-duplicate removal, and the `chex query` command."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.cli import main
from chex_model.inference import prepare_image, remove_near_duplicates
from chex_model.image_encoder import normalize
from chex_model.presence import pair_key, paired_margin
from chex_model.prompts import Dedup, Positivity, PromptSet, chexpert_prompts, load_prompt_set
from preprocessing.box_geometry import xyxy_to_stored_cxcywh
from model_support import texts_of
from tests_support import write_dicom


def test_boxes_map_between_the_image_and_the_model_crop() -> None:
    prep = prepare_image(np.zeros((300, 420), dtype=np.uint8), 64)
    assert prep.square.shape == (64, 64) and (prep.width, prep.height) == (420, 300)
    xyxy = np.array([[100.0, 40.0, 220.0, 260.0]])  # pixels of the 420 x 300 image
    stored, keep = xyxy_to_stored_cxcywh(xyxy, 420, 300)  # the ingest pipeline's (independent) crop-frame conversion
    image_norm = torch.tensor([[160 / 420, 150 / 300, 120 / 420, 220 / 300]], dtype=torch.float64)
    assert keep.all()
    np.testing.assert_allclose(prep.to_crop(image_norm).numpy(), stored, atol=1e-9)
    torch.testing.assert_close(prep.from_crop(prep.to_crop(image_norm)), image_norm)


def test_near_duplicate_removal_keeps_the_higher_weight() -> None:
    sim = np.array([[1, 0.97, 0.2, 0.91], [0.97, 1, 0.3, 0.5], [0.2, 0.3, 1, 0.1], [0.91, 0.5, 0.1, 1]])
    assert remove_near_duplicates(sim, [0.9, 0.5, 0.4, 0.3], 0.95, 0.9, 10) == [0, 2, 3]
    assert remove_near_duplicates(sim, [0.1, 0.5, 0.4, 0.3], 0.95, 0.9, 10) == [1, 2, 3]
    # the loose threshold applies only while more than max_kept sentences remain
    assert remove_near_duplicates(sim, [0.9, 0.5, 0.4, 0.3], 0.95, 0.9, 2) == [0, 2]
    assert remove_near_duplicates(np.eye(3), [1, 1, 1], 0.95, 0.9, 1) == [0, 1, 2]


def test_report_prompt_set_matches_the_chexpert_prompts() -> None:
    ps = load_prompt_set("report")
    pairs = chexpert_prompts()
    assert ps.pathology == ps.positivity.positive == [p for p, _ in pairs.values()]
    assert ps.positivity.negative == [n for _, n in pairs.values()]
    assert len(ps.pathology) + len(ps.anatomy) == 29


def test_query_on_a_trained_model(trained_tiny) -> None:
    model, batch, _, _ = trained_tiny
    image = batch.images[0, 0]
    region = batch.anatomy.prompts.index("Right lung")
    target = batch.anatomy.boxes[0, region].tolist()
    text, box, fused = model.query(image, prompts=["Right lung"], boxes=[target], box_prompts=[(target, "Right lung")],
                                   classes=[("Pleural effusion", "No pleural effusion")])
    assert box.sentence == texts_of(batch)[0][region]  # the ground-truth box describes what it was trained on
    assert np.abs(np.array(text.box) - np.array(target)).sum() < 0.25
    assert text.sentence and fused.sentence and set(text.probabilities) == {"Pleural effusion"}
    assert text.presence is None  # "Right lung" has no calibration
    key = pair_key("Pleural effusion", "No pleural effusion")
    try:
        model.presence_calibration = {key: (12.0, -0.5)}
        effusion, heart = model.query(image, prompts=["Pleural effusion", "Cardiomegaly"])
        with torch.no_grad():
            det = model.detect(model.encode_image(normalize(image[None, None], model.cfg.image)),
                               model.encode_prompts(["Pleural effusion"]), post_decoder=False)
            margin = paired_margin(det.features[0], model.encode_prompts(["Pleural effusion"]),
                                   model.encode_prompts(["No pleural effusion"]))
        assert effusion.presence == pytest.approx(torch.sigmoid(12.0 * margin - 0.5).item(), abs=1e-4)
        assert heart.presence is None
    finally:
        model.presence_calibration = {}
    with pytest.raises(ValueError):
        model.query(image)
    with pytest.raises(ValueError):
        model.query(image, boxes=[(0.5, 0.5, 0.0, 0.2)])


def test_a_sentence_without_a_box_draws_no_box() -> None:
    from chex_model.draw import Annotation, render

    image = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    plain = np.asarray(render(image, [Annotation("q", None, "No pleural effusion.")], width=128))
    boxed = np.asarray(render(image, [Annotation("q", (0.5, 0.5, 0.5, 0.5), "Pleural effusion.")], width=128))
    bare = np.asarray(render(image, [], width=128))
    assert (plain[:128] == bare[:128]).all() and (boxed[:128] != bare[:128]).any()
    assert plain.shape[0] > 128 and plain[128:].any()  # its sentence is still listed under the picture


def test_report_filters_anatomy_by_positivity(trained_tiny) -> None:
    model, batch, _, _ = trained_tiny
    base = dict(name="t", pathology=["Pleural effusion", "Cardiomegaly"], anatomy=["Right lung", "Left lung", "Trachea"],
                dedup=Dedup(strict=1.01, loose=1.01))
    everything = model.report(batch.images[0, 0], PromptSet(**base, positivity=Positivity(["Effusion"], ["Normal"], 0.0)))
    assert [s.query for s in everything.sentences if s.sentence] == [s.query for s in everything.sentences]
    assert {s.query for s in everything.sentences} <= set(base["pathology"] + base["anatomy"])
    assert len([s for s in everything.sentences if s.kind == "anatomy"]) == 3
    gated = PromptSet(**base, pathology_negative=["No pleural effusion", "No cardiomegaly"],
                      positivity=Positivity(["Effusion"], ["Normal"], 1.01))
    keys = [pair_key("Pleural effusion", "No pleural effusion"), pair_key("Cardiomegaly", "No cardiomegaly")]
    try:
        for image, present, sentence in ((0, 0, "Small right pleural effusion."), (2, 1, "The heart is enlarged.")):
            # a calibration that calls one query present and the other absent, whatever the margins
            model.presence_calibration = {k: (0.0, 8.0 if i == present else -8.0) for i, k in enumerate(keys)}
            out = model.report(batch.images[image, 0], gated)
            # the present query speaks from its own prompt; the absent one from its negative prompt, trained silent
            assert [(s.query, s.sentence) for s in out.sentences] == [(base["pathology"][present], sentence)]
            assert out.sentences[0].abnormal == pytest.approx(torch.sigmoid(torch.tensor(8.0)).item(), abs=1e-4)
            assert out.sentences[0].finding  # a present finding: its box is drawn
            assert out.undetermined == []
            model.presence_calibration[keys[present]] = (0.0, -1.0)  # P = 0.27: cannot tell, so it is not answered
            unsure = model.report(batch.images[image, 0], gated)
            assert unsure.sentences == [] and unsure.undetermined == [base["pathology"][present]]
            assert unsure.to_dict()["undetermined"] == unsure.undetermined
        # a "no finding" query is said only when every other query is ruled out
        normal = dataclasses.replace(gated, normal_query="Cardiomegaly")
        model.presence_calibration = {keys[0]: (0.0, -8.0), keys[1]: (0.0, 8.0)}
        assert [s.query for s in model.report(batch.images[2, 0], normal).sentences] == ["Cardiomegaly"]
        model.presence_calibration[keys[0]] = (0.0, -1.0)  # effusion not ruled out
        assert model.report(batch.images[2, 0], normal).sentences == []
    finally:
        model.presence_calibration = {}
    default = model.report(batch.images[0, 0])
    assert all(s.abnormal >= 0.5 for s in default.sentences if s.kind == "anatomy")
    assert default.text == " ".join(s.sentence for s in default.sentences)
    assert all(len(s.box) == 4 for s in default.sentences)


@pytest.fixture(scope="module")
def xray_files(trained_tiny, tmp_path_factory) -> dict[str, Path]:
    img = (trained_tiny[1].images[1, 0].numpy() * 255).round().astype(np.uint8)
    out = tmp_path_factory.mktemp("xrays")
    Image.fromarray(img).save(out / "a.png")
    Image.fromarray(img).save(out / "a.jpg", quality=95)
    write_dicom(out / "a.dcm", img.astype(np.uint16) * 16, "MONOCHROME2", 12)
    (out / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return {p.stem + p.suffix: p for p in out.iterdir()}


@pytest.mark.parametrize("name", ["a.png", "a.jpg", "a.dcm"])
def test_cli_query_prints_json_and_draws(name, trained_tiny_dir, xray_files, tmp_path, capsys) -> None:
    picture = tmp_path / "answer.png"
    code = main(["query", str(xray_files[name]), "--model", str(trained_tiny_dir), "--prompt", "Left lung",
                 "--box", "0.3,0.5,0.2,0.4", "--box-prompt", "0.7,0.5,0.2,0.4", "Left lung",
                 "--classify", "Consolidation", "No consolidation", "--out", str(picture)])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["prompt"] for r in out["results"]] == ["Left lung", None, "Left lung"]
    assert all("Consolidation" in r["probabilities"] for r in out["results"])
    with Image.open(picture) as im:
        assert im.mode == "RGB" and im.width == 768 and im.height > 768


def test_cli_report(trained_tiny_dir, xray_files, capsys) -> None:
    assert main(["query", str(xray_files["a.png"]), "--model", str(trained_tiny_dir), "--report", "--max-tokens", "12"]) == 0
    report = json.loads(capsys.readouterr().out)["report"]
    assert report["sentences"] and report["text"]


@pytest.mark.parametrize("args, message", [
    (["{img}", "--prompt", "x", "--box", "0.5,0.5,0.2"], "bad box"),
    (["{img}", "--prompt", "x", "--box", "0.5,0.5,1.5,0.2"], "bad box"),
    (["{img}", "--prompt", "x", "--box", "a,b,c,d"], "bad box"),
    (["{img}", "--box-prompt", "0.5,0.5,0.2", "Left lung"], "bad box"),
    (["missing.png", "--prompt", "x"], "not found"),
    (["{folder}", "--prompt", "x"], "is a directory"),
    (["{broken}", "--prompt", "x"], "cannot read image"),
    (["{img}"], "give --prompt"),
    (["{img}", "--prompt", "x", "--model", "{nomodel}"], "no ChEX checkpoint"),
])
def test_cli_query_errors_are_one_line_with_exit_code_2(args, message, trained_tiny_dir, xray_files, tmp_path, capsys) -> None:
    subst = {"img": xray_files["a.png"], "broken": xray_files["broken.jpg"], "nomodel": tmp_path, "folder": tmp_path}
    argv = ["query", *[a.format(**subst) for a in args]]
    if "--model" not in argv:
        argv += ["--model", str(trained_tiny_dir)]
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse rejects malformed arguments before main's body runs
        return int(exc.code)


def test_int8_cpu_inference_keeps_the_answers(trained_tiny) -> None:
    import copy

    from chex_model.cpu_inference import quantize_for_cpu

    model, batch, _, _ = trained_tiny
    quantized = quantize_for_cpu(copy.deepcopy(model))
    assert any("quantized" in type(m).__module__ for m in quantized.generator.modules())
    boxes = batch.anatomy.boxes[0].tolist()
    fp32 = [r.sentence for r in model.query(batch.images[0, 0], boxes=boxes)]
    int8 = [r.sentence for r in quantized.query(batch.images[0, 0], boxes=boxes)]
    assert int8 == fp32


@pytest.mark.parametrize("kind", ["jpeg", "j2k_dicom"])
def test_a_query_sees_the_pixels_ingest_stores(kind, tmp_path) -> None:
    """`chex query` and ingest decode a file through one function: the model input is the stored PNG, bit for bit."""
    from pipelines.ingest.process import process_record
    from preprocessing.image_io import decode_png
    from preprocessing.records import RawRecord
    from pydicom.uid import JPEG2000

    img = np.round(np.random.default_rng(2).random((300, 260)) * 900 + 50)
    if kind == "jpeg":
        path = tmp_path / "x.jpg"
        Image.fromarray((img / 4).astype(np.uint8)).save(path, quality=90)
    else:
        path = tmp_path / "x.dcm"
        ds = write_dicom(path, img.astype(np.uint16), "MONOCHROME1", 10, Modality="CR", WindowCenter=500, WindowWidth=600)
        ds.compress(JPEG2000, j2k_cr=[10])
        ds.save_as(path, enforce_file_format=True)
    rec = RawRecord(source="vindr_cxr", split="test", sample_id="x", image_id="x", image_path=str(path), source_path="x")
    row, rejects = process_record(rec, 64, True, None)
    assert rejects == []
    prepared = prepare_image(path, 64)
    assert np.array_equal(prepared.square, decode_png(row["image_png"]))
    assert (prepared.width, prepared.height) == (260, 300)
