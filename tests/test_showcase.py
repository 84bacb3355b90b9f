"""The showcase: the abnormal frontal test images with the most findings, each answered exactly as the query and
report APIs answer it directly, IoUs against the true region boxes, pictures that decode, and both renderings."""
from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from chex_model.inference import query, report
from chex_model.prompts import load_prompt_set
from evaluation.data import load_rows
from pipelines.showcase import finding_prompt, pick_rows, render_markdown, render_text, showcase, true_findings
from preprocessing.classes import CIG_ANATOMICAL_FINDINGS_43, CIG_DISEASES_10
from preprocessing.image_io import decode_png
from preprocessing.records import split_dir

TOKENS = 4


@pytest.fixture(scope="module")
def tables(ingested, tmp_path_factory) -> Path:
    """The fixture's MIMIC-CXR test rows plus its val rows, as one test split: enough abnormal images to choose from."""
    src, _ = ingested
    out = tmp_path_factory.mktemp("showcase_tables")
    dest = split_dir(out, "mimic_cxr", "test")
    dest.mkdir(parents=True)
    for split in ("test", "val"):
        for f in sorted(split_dir(src, "mimic_cxr", split).glob("*.parquet")):
            shutil.copy(f, dest / f"{split}-{f.name}")
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A random tiny ChEX that speaks: its generator prefix scaled up (a random one falls silent at once), and its
    presence calibrated so that the report calls Cardiomegaly present, Atelectasis absent and the cardiac
    silhouette abnormal, whatever the image (sigmoid(0 * margin +- 10)): a report with findings and absences."""
    import torch

    from chex_model.chex import ChEX
    from chex_model.presence import pair_key, positivity_key
    from model_support import tiny_config

    torch.manual_seed(0)
    model = ChEX.build(tiny_config())
    last = [m for m in model.generator.prefix.net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(20)
        last.bias.mul_(20)
    ps = load_prompt_set("report")
    model.presence_calibration = {
        pair_key("Cardiomegaly", "No cardiomegaly"): (0.0, 10.0), pair_key("Atelectasis", "No atelectasis"): (0.0, -10.0),
        pair_key("Cardiac silhouette", positivity_key(ps.positivity.positive, ps.positivity.negative)): (0.0, 10.0),
    }
    out = tmp_path_factory.mktemp("talking_model")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def model(model_dir):
    from chex_model.chex import ChEX

    return ChEX.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def shown(model_dir, tables, tmp_path_factory):
    return showcase(model_dir, tables, tmp_path_factory.mktemp("showcase") / "pictures", n_images=3,
                    max_new_tokens=TOKENS)


def _rows_by_id(tables: Path) -> dict[str, dict]:
    return {r["sample_id"]: r for r in load_rows(tables, "mimic_cxr", "test")}


def _expected_choice(tables: Path, n: int) -> list[str]:
    """Independently of the module: frontal test rows ranked by their distinct positive findings (CheXpert except
    No Finding, Chest ImaGenome vocabulary findings; case ignored), ties by sample id; the abnormal top n."""
    files = sorted(split_dir(tables, "mimic_cxr", "test").glob("*.parquet"))
    el = pl.element()
    chexpert = pl.col("labels").fill_null([]).list.eval(
        el.filter((el.struct.field("value") == 1) & (el.struct.field("name") != "No Finding")).struct.field("name").str.to_lowercase())
    cig = pl.col("region_labels").fill_null([]).list.eval(
        el.filter((el.struct.field("value") == 1) & el.struct.field("finding").is_in(CIG_ANATOMICAL_FINDINGS_43 + CIG_DISEASES_10))
        .struct.field("finding").str.to_lowercase())
    frame = (pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")
             .filter(pl.col("view_position").is_in(["PA", "AP"]))
             .with_columns(n=pl.concat_list(chexpert, cig).list.unique().list.len())
             .filter(pl.col("n") > 0).sort(["n", "sample_id"], descending=[True, False]))
    return frame["sample_id"].head(n).to_list()


def test_picks_the_abnormal_frontal_test_images_with_most_findings(shown, tables, ingested):
    assert [i.sample_id for i in shown.images] == _expected_choice(tables, 3)
    assert len(shown.images) == 3
    real, _ = ingested  # the fixture's own test split has fewer abnormal frontal images than asked for
    picked = pick_rows(load_rows(real, "mimic_cxr", "test", frontal_only=True), 3)
    assert [r["sample_id"] for r in picked] == _expected_choice(real, 3) and 0 < len(picked) < 3


def test_pick_rows_and_finding_prompt_on_hand_made_rows():
    def row(sid, labels=(), regions=()):
        return {"sample_id": sid, "labels": [{"name": n, "value": v} for n, v in labels],
                "region_labels": [{"region": "right lung", "finding": f, "value": v} for f, v in regions]}

    normal = row("a", [("No Finding", 1), ("Edema", 0)], [("abnormal", 1)])  # "abnormal" is no vocabulary finding
    one = row("b", [("Edema", 1)], [("pulmonary edema/hazy opacity", 0)])
    two = row("c", [("Lung Lesion", 1)], [("lung lesion", 1), ("mass/nodule (not otherwise specified)", 1)])
    also_one = row("d", [], [("pleural effusion", 1)])
    assert true_findings(normal) == [] and true_findings(two) == ["Lung Lesion", "mass/nodule (not otherwise specified)"]
    assert [r["sample_id"] for r in pick_rows([normal, one, two, also_one], 2)] == ["c", "b"]
    assert [finding_prompt(r) for r in (normal, one, two, also_one)] == ["Cardiomegaly", "Edema", "Lung lesion", "Pleural effusion"]


def _xyxy(cx, cy, w, h):
    return [min(max(v, 0.0), 1.0) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)]


def _iou(a, b):
    iw, ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0])), max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_answers_equal_the_query_api_and_ious_a_hand_computation(shown, tables, model):
    rows = _rows_by_id(tables)
    for item in shown.images:
        row = rows[item.sample_id]
        prompts = [a.prompt for a in item.answers]
        assert prompts == ["Left lung", "Bilateral", finding_prompt(row)]
        assert finding_prompt(row).lower() in {f.lower() for f in item.true_findings}
        direct = query(model, decode_png(row["image_png"]), prompts, max_new_tokens=TOKENS)
        region = {b["name"]: _xyxy(b["cx"], b["cy"], b["w"], b["h"]) for b in row["region_boxes"]}
        truths = [[region["left lung"]], [region["right lung"], region["left lung"]], []]
        for a, d, true in zip(item.answers, direct, truths):
            assert a.box == pytest.approx(_xyxy(*d.box), abs=1e-4)
            assert (a.score, a.sentence) == (d.score, d.sentence)
            if true:
                assert a.iou == pytest.approx(max(_iou(a.box, t) for t in true), abs=1e-4)
            else:
                assert a.iou is None  # MIMIC rows have no finding boxes


def test_report_equals_the_report_api(shown, tables, model):
    rows = _rows_by_id(tables)
    for item in shown.images:
        direct = report(model, decode_png(rows[item.sample_id]["image_png"]), "report", max_new_tokens=TOKENS)
        assert [(s.query, s.sentence, s.finding) for s in item.report] == [(s.query, s.sentence, s.finding) for s in direct.sentences]
        for ours, theirs in zip(item.report, direct.sentences):
            assert ours.box == pytest.approx(_xyxy(*theirs.box), abs=1e-4)
        assert item.undetermined == direct.undetermined
        said = [s.finding for s in item.report]  # near duplicates are dropped, so which ones stay may vary
        assert True in said and False in said and all(s.sentence for s in item.report)
        assert item.true_report == " ".join(rows[item.sample_id]["report_sentences"])


def test_pictures_decode_at_the_drawing_width(shown):
    assert len({i.picture for i in shown.images}) == len(shown.images)
    for item in shown.images:
        with Image.open(io.BytesIO(item.picture.read_bytes())) as im:
            im.load()
            assert im.format == "PNG" and im.mode == "RGB"
            assert im.width == 512 and im.height > 512  # the X-ray, square, then the sentence panel
            assert im.crop((0, 0, 512, 512)).convert("L").getextrema()[1] > 0


def test_renderings_name_every_image_and_link_the_pictures(shown):
    text = render_text(shown)
    assert text.startswith("Showcase: 3 ")
    for item in shown.images:
        assert item.image_id in text and "IoU" in text
        assert all(f"'{a.prompt}' -> [" in text for a in item.answers)
        assert all(s.query in text for s in item.report)
    root = shown.images[0].picture.parent.parent
    md = render_markdown(shown, root)
    links = re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", md)
    assert [i for i, _ in links] == [item.image_id for item in shown.images]
    assert all((root / link).resolve() == item.picture.resolve() for (_, link), item in zip(links, shown.images))
    assert all(not Path(link).is_absolute() for _, link in links)
