"""Dataset copies users actually have: VinDr-CXR as Kaggle's "VinBigData" (train.csv, no label table), NIH with or
without the Kaggle split lists and with re-saved (reordered, extra) columns.

Fixtures are literal text in the real shapes (spec 4.2, 4.8, 6.3, 6.4); expected values are worked out by hand or
with ensemble_boxes directly, never by the reader under test.
"""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from ensemble_boxes import weighted_boxes_fusion

from pipelines.ingest.config import IngestConfig, SourcePaths
from pipelines.ingest.job import run_ingest
from pipelines.ingest.plan import read_sources, source_roots
from preprocessing.nih_cxr import read_nih
from preprocessing.records import PixelBox, Reject
from preprocessing.synth.catalog import CATALOG
from preprocessing.synth.write_vindr import KAGGLE_DIR, sample_images, write_kaggle
from preprocessing.tables import TableError, span_columns
from preprocessing.vindr_cxr import fuse_boxes, read_vindr
from test_readers import NIH_BBOX_LIST, NIH_DATA_ENTRY_2017, write_nih_tree, write_text

# the Kaggle classes by class_id (spec 4.8), written out here rather than taken from the reader
KAGGLE_15 = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD", "Infiltration",
    "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "No finding",
)


def reject_keys(rejects: list[Reject]) -> list[tuple[str, str, str, str]]:
    return sorted((r.source, r.source_path, r.stage, r.record_id) for r in rejects)


def kaggle_labels(*present: str) -> dict[str, int]:
    return {name: int(name in present) for name in KAGGLE_15}


# --------------------------------------------------------------------------------------------------------------
# VinDr-CXR, Kaggle "VinBigData" layout (spec 4.8)
# --------------------------------------------------------------------------------------------------------------

K1, K2, K3, K4 = ("9a5094b2563a1ef3ff50dc5c7ff71345", "051132a778e61a86eb147c7c6f564dfe",
                  "1c32170b4af4ce1a3030eb8167753b06", "47ed17dcb2cbeec15182ed335a8b5a9e")

# line 1 is the header. K1: three readers; Aortic enlargement 3 of 3, Cardiomegaly 2 of 3 (R8, R10),
# Pleural thickening 1 of 3 (R9). K2: "No finding" from all three. K3: "No finding" 2 of 3, Nodule/Mass 1 of 3.
# K4: R8's Pleural effusion row (line 14) has a non-numeric y_min; R9 marks it too, R10 finds nothing.
KAGGLE_TRAIN = f"""\
image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
{K1},Aortic enlargement,0,R8,1260.0,589.0,1486.0,866.0
{K1},Cardiomegaly,3,R8,1011.0,1592.0,1855.0,1925.0
{K1},Aortic enlargement,0,R9,1250.47,601.12,1500.33,877.5
{K1},Pleural thickening,11,R9,433.0,393.0,619.0,484.0
{K1},Aortic enlargement,0,R10,1271.0,580.0,1478.0,870.0
{K1},Cardiomegaly,3,R10,1023.5,1575.0,1877.25,1933.0
{K2},No finding,14,R1,,,,
{K2},No finding,14,R2,,,,
{K2},No finding,14,R3,,,,
{K3},No finding,14,R11,,,,
{K3},Nodule/Mass,8,R13,1789.0,1729.0,1875.0,1992.0
{K3},No finding,14,R12,,,,
{K4},Pleural effusion,10,R8,1595.0,n/a,1886.0,2180.0
{K4},Pleural effusion,10,R9,1601.0,1905.0,1899.0,2194.0
{K4},No finding,14,R10,,,,
"""
VINDR_W, VINDR_H = 2336, 2836


def test_kaggle_fixture_has_the_real_shape() -> None:
    rows = list(csv.reader(io.StringIO(KAGGLE_TRAIN)))
    assert rows[0] == ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    for image_id, name, class_id, rad_id, *coords in rows[1:]:
        assert len(image_id) == 32 and all(c in "0123456789abcdef" for c in image_id)
        assert KAGGLE_15[int(class_id)] == name and 1 <= int(rad_id[1:]) <= 17 and rad_id[0] == "R"
        assert (name == "No finding") == (coords == ["", "", "", ""])


def kaggle_tree(root: Path, text: str = KAGGLE_TRAIN, gz: bool = False) -> Path:
    write_text(root / ("train.csv.gz" if gz else "train.csv"), text, gz=gz)
    return root


def test_kaggle_labels_are_the_readers_majority_vote(tmp_path: Path) -> None:
    root = kaggle_tree(tmp_path / "vinbigdata")
    records, _ = read_vindr(root, tmp_path, seed=0)
    by_id = {r.image_id: r for r in records}
    assert sorted(by_id) == sorted([K1, K2, K3, K4])
    # K1: Aortic enlargement 3/3 -> 1, Cardiomegaly 2/3 -> 1, Pleural thickening 1/3 -> 0, No finding 0/3 -> 0
    assert by_id[K1].labels == kaggle_labels("Aortic enlargement", "Cardiomegaly")
    assert by_id[K2].labels == kaggle_labels("No finding")
    assert by_id[K3].labels == kaggle_labels("No finding")           # Nodule/Mass 1/3 -> 0
    assert by_id[K4].labels == kaggle_labels("Pleural effusion")     # the unreadable box still counts as a mark
    assert all(r.split == "train" and r.fuse_boxes and r.view_position == "PA" for r in records)
    assert by_id[K1].image_path == str(root / "train" / f"{K1}.dicom")
    assert by_id[K1].source_path == f"vinbigdata/train/{K1}.dicom"


def test_kaggle_boxes_per_reader_then_fused(tmp_path: Path) -> None:
    records, _ = read_vindr(kaggle_tree(tmp_path / "vinbigdata"), tmp_path, seed=0)
    by_id = {r.image_id: r for r in records}
    assert by_id[K2].boxes == []
    assert by_id[K3].boxes == [PixelBox("Nodule/Mass", 1789.0, 1729.0, 1875.0, 1992.0, "R13")]
    assert by_id[K4].boxes == [PixelBox("Pleural effusion", 1601.0, 1905.0, 1899.0, 2194.0, "R9")]
    k1 = by_id[K1].boxes
    assert [(b.name, b.reader) for b in k1] == [
        ("Aortic enlargement", "R8"), ("Cardiomegaly", "R8"), ("Aortic enlargement", "R9"),
        ("Pleural thickening", "R9"), ("Aortic enlargement", "R10"), ("Cardiomegaly", "R10")]
    fused = {b.name: b for b in fuse_boxes(k1, VINDR_W, VINDR_H)}
    scale = np.array([VINDR_W, VINDR_H, VINDR_W, VINDR_H], dtype=np.float64)
    aortic = [[[1260.0, 589.0, 1486.0, 866.0]], [[1250.47, 601.12, 1500.33, 877.5]], [[1271.0, 580.0, 1478.0, 870.0]]]
    want, _, _ = weighted_boxes_fusion([(np.array(b) / scale).tolist() for b in aortic], [[1.0]] * 3, [[0]] * 3,
                                       iou_thr=0.1, skip_box_thr=1e-4)
    got = fused["Aortic enlargement"]
    assert [got.x1, got.y1, got.x2, got.y2] == pytest.approx((want[0] * scale).tolist(), abs=1e-3)
    # the same as the hand mean: x1 (1260 + 1250.47 + 1271)/3, y1 (589 + 601.12 + 580)/3, ...
    assert [got.x1, got.y1, got.x2, got.y2] == pytest.approx(
        [3781.47 / 3, 1770.12 / 3, 4464.33 / 3, 2613.5 / 3], abs=1e-2)
    cardio = fused["Cardiomegaly"]   # R8 + R10: (1011 + 1023.5)/2, (1592 + 1575)/2, (1855 + 1877.25)/2, (1925 + 1933)/2
    assert [cardio.x1, cardio.y1, cardio.x2, cardio.y2] == pytest.approx([1017.25, 1583.5, 1866.125, 1929.0], abs=1e-2)
    assert (fused["Pleural thickening"].x1, fused["Pleural thickening"].y2) == (433.0, 484.0)


def test_kaggle_non_numeric_coordinate_is_a_box_reject_naming_the_row(tmp_path: Path) -> None:
    records, rejects = read_vindr(kaggle_tree(tmp_path / "vinbigdata"), tmp_path, seed=0)
    assert reject_keys(rejects) == [("vindr_cxr", "vinbigdata/train.csv#row14", "box", K4)]
    assert "n/a" in rejects[0].reason and "Pleural effusion" in rejects[0].reason
    assert sum(len(r.boxes) for r in records) == 6 + 1 + 1   # every other box row stays


def test_kaggle_gzipped_table_gives_the_same_records(tmp_path: Path) -> None:
    root = tmp_path / "vinbigdata"
    plain, plain_rejects = read_vindr(kaggle_tree(root), tmp_path, seed=0)
    (root / "train.csv").unlink()
    gzipped, gz_rejects = read_vindr(kaggle_tree(root, gz=True), tmp_path, seed=0)
    assert gzipped == plain and len(plain) == 4
    assert [r.source_path for r in gz_rejects] == ["vinbigdata/train.csv.gz#row14"]
    assert [(r.stage, r.reason) for r in gz_rejects] == [(r.stage, r.reason) for r in plain_rejects]


def test_kaggle_row_outside_the_15_classes_or_without_reader_is_rejected(tmp_path: Path) -> None:
    text = KAGGLE_TRAIN + f"{K2},Edema,15,R1,10.0,10.0,20.0,20.0\n{K3},Nodule/Mass,8,,1.0,2.0,3.0,4.0\n"
    records, rejects = read_vindr(kaggle_tree(tmp_path / "vinbigdata", text), tmp_path, seed=0)
    assert reject_keys(rejects) == [
        ("vindr_cxr", "vinbigdata/train.csv#row14", "box", K4),
        ("vindr_cxr", "vinbigdata/train.csv#row17", "table", K2),
        ("vindr_cxr", "vinbigdata/train.csv#row18", "table", K3),
    ]
    reasons = {r.source_path: r.reason for r in rejects}
    assert "'Edema' is not a Kaggle class" in reasons["vinbigdata/train.csv#row17"]
    assert reasons["vinbigdata/train.csv#row18"].startswith("no rad_id")
    by_id = {r.image_id: r for r in records}
    assert by_id[K2].labels == kaggle_labels("No finding") and by_id[K2].boxes == []
    assert by_id[K3].labels == kaggle_labels("No finding") and len(by_id[K3].boxes) == 1


def test_kaggle_table_without_a_needed_column_is_a_table_error(tmp_path: Path) -> None:
    text = KAGGLE_TRAIN.replace("rad_id", "reader", 1)
    with pytest.raises(TableError, match=r"missing column\(s\) \['rad_id'\]"):
        read_vindr(kaggle_tree(tmp_path / "vinbigdata", text), tmp_path, seed=0)


def test_physionet_layout_wins_and_neither_layout_names_both(tmp_path: Path) -> None:
    root = kaggle_tree(tmp_path / "vindr")
    (root / "annotations").mkdir()
    records, rejects = read_vindr(root, tmp_path, seed=0)
    assert records == [] and [r.source_path for r in rejects] == ["vindr/annotations"] * 2
    empty = tmp_path / "empty"
    empty.mkdir()
    _, rejects = read_vindr(empty, tmp_path, seed=0)
    assert len(rejects) == 2 and all("annotations_" in r.reason and "train.csv" in r.reason for r in rejects)


# --------------------------------------------------------------------------------------------------------------
# Kaggle layout end to end: synthetic truth -> writer -> ingest job -> Parquet
# --------------------------------------------------------------------------------------------------------------

SIZE = 48


def stored(x1: float, y1: float, x2: float, y2: float, w: int, h: int) -> tuple[float, float, float, float]:
    """(cx, cy, w, h) after the short-side resize and centre crop, from first principles."""
    side = min(w, h)
    ox, oy = (w - side) / 2, (h - side) / 2
    a = [min(max(v, 0.0), 1.0) for v in ((x1 - ox) / side, (y1 - oy) / side, (x2 - ox) / side, (y2 - oy) / side)]
    return ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2, a[2] - a[0], a[3] - a[1])


def expected_fused(rows: list[dict], w: int, h: int) -> list[tuple[str, tuple]]:
    """The written reader boxes of one image fused per class with ensemble_boxes, in the stored frame."""
    by_class: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["x_min"]:
            by_class[r["class_name"]][r["rad_id"]].append(
                [float(r["x_min"]) / w, float(r["y_min"]) / h, float(r["x_max"]) / w, float(r["y_max"]) / h])
    out = []
    for name, readers in by_class.items():
        lists = [np.clip(v, 0, 1).tolist() for v in readers.values()]
        if sum(map(len, lists)) == 1:
            boxes = np.array(lists[0])
        else:
            boxes, _, _ = weighted_boxes_fusion(lists, [[1.0] * len(v) for v in lists], [[0] * len(v) for v in lists],
                                                iou_thr=0.1, skip_box_thr=1e-4)
        out += [(name, stored(b[0] * w, b[1] * h, b[2] * w, b[3] * h, w, h)) for b in boxes]
    return sorted(o for o in out if o[1][2] > 1e-3 and o[1][3] > 1e-3)


@pytest.fixture(scope="module")
def kaggle_ingest(ray_local, tmp_path_factory):
    raw = tmp_path_factory.mktemp("kaggle_raw")
    images = sample_images(np.random.default_rng([7, 3]), 5, 2, image_scale=0.05)
    lesion_boxes, seen_by = write_kaggle(raw, images, np.random.default_rng([7, 4]))
    sources = SourcePaths(mimic_cxr_jpg=None, mimic_cxr_reports=None, chest_imagenome=None, ms_cxr=None,
                          vindr_cxr=KAGGLE_DIR, nih_cxr=None)
    out = tmp_path_factory.mktemp("kaggle_out")
    manifest = run_ingest(raw, out, IngestConfig(image_size=SIZE, sources=sources))
    table = pl.scan_parquet(out / "tables" / "**" / "*.parquet", hive_partitioning=True).collect()
    rejects = pl.read_parquet(out / "rejects" / "rejects.parquet")
    return raw, images, lesion_boxes, seen_by, manifest, table, rejects


def test_kaggle_tree_ingests_train_images_with_voted_labels(kaggle_ingest) -> None:
    raw, images, _, seen_by, manifest, table, rejects = kaggle_ingest
    rows = {r["image_id"]: r for r in table.iter_rows(named=True)}
    train = [im for im in images if im.split == "train"]
    assert sorted(rows) == sorted(im.image_id for im in train)          # test/ DICOMs are not records
    assert any((raw / KAGGLE_DIR / "test").glob("*.dicom"))
    assert set(manifest["datasets"]) == {"vindr_cxr/train"}
    assert rejects.filter(pl.col("stage") != "box").height == 0
    for im in train:
        row = rows[im.image_id]
        assert (row["source"], row["split"], row["orig_width"], row["orig_height"]) == ("vindr_cxr", "train", im.width, im.height)
        readers = seen_by[im.image_id]
        marked = [{n for i in seen for n in CATALOG[im.lesions[i].kind].vindr if n in KAGGLE_15} for seen in readers.values()]
        marked = [m or {"No finding"} for m in marked]
        want = {n: int(sum(n in m for m in marked) >= 2) for n in KAGGLE_15}   # 2 of 3 readers
        assert {d["name"]: d["value"] for d in row["labels"]} == want, im.image_id


def test_kaggle_tree_ingests_fused_boxes_near_the_truth(kaggle_ingest) -> None:
    raw, images, lesion_boxes, _, _, table, rejects = kaggle_ingest
    with open(raw / KAGGLE_DIR / "train.csv", newline="") as f:
        written = list(csv.DictReader(f))
    rows = {r["image_id"]: r for r in table.iter_rows(named=True)}
    assert rejects.height == 0, rejects.to_dicts()
    n_boxes = 0
    for im in (im for im in images if im.split == "train"):
        want = expected_fused([r for r in written if r["image_id"] == im.image_id], im.width, im.height)
        got = sorted((b["name"], (b["cx"], b["cy"], b["w"], b["h"])) for b in rows[im.image_id]["boxes"])
        assert [n for n, _ in got] == [n for n, _ in want], im.image_id
        np.testing.assert_allclose([g for _, g in got], [w for _, w in want], atol=1.5 / SIZE)
        truth = [(name, stored(*box, im.width, im.height)) for les, box in zip(im.lesions, lesion_boxes[im.image_id])
                 for name in CATALOG[les.kind].vindr]
        for name, (cx, cy, _, _) in got:   # each fused box sits on a drawn lesion of its class
            assert any(n == name and abs(cx - t[0]) < 0.05 and abs(cy - t[1]) < 0.05 for n, t in truth), (name, cx, cy)
        n_boxes += len(got)
    assert n_boxes > 0


# --------------------------------------------------------------------------------------------------------------
# NIH ChestX-ray14: split lists, columns by name (spec 6.1, 6.3, 6.4)
# --------------------------------------------------------------------------------------------------------------

@pytest.fixture
def nih_root(tmp_path: Path) -> Path:
    return write_nih_tree(tmp_path / "nih")


def test_nih_split_lists_do_not_change_the_records(nih_root: Path) -> None:
    without = read_nih(nih_root, nih_root.parent, seed=5)
    names = [row[0] for row in list(csv.reader(io.StringIO(NIH_DATA_ENTRY_2017)))[1:]]
    # lists that contradict the paper's split: the no-box patients 13 and 14 as "test", every box patient as train
    write_text(nih_root / "test_list.txt", "".join(f"{n}\n" for n in names if n[:8] in ("00000013", "00000014")))
    write_text(nih_root / "train_val_list.txt", "".join(f"{n}\n" for n in names if n[:8] not in ("00000013", "00000014")))
    with_lists = read_nih(nih_root, nih_root.parent, seed=5)
    assert with_lists == without
    split = {r.image_id: r.split for r in with_lists[0]}
    assert split["00000013_000.png"] == split["00000014_000.png"] == "train"
    assert {split[f"{p:08d}_000.png"] for p in range(1, 13)} == {"val", "test"}


# The shipped Data_Entry column groups in order, with the number of cells each covers (spec 6.3).
ENTRY_GROUPS = (("Image Index", 1), ("Finding Labels", 1), ("Follow-up #", 1), ("Patient ID", 1), ("Patient Age", 1),
                ("Patient Gender", 1), ("View Position", 1), ("OriginalImage[Width,Height]", 2),
                ("OriginalImagePixelSpacing[x,y]", 2), ("", 1))
BBOX_GROUPS = (("Image Index", 1), ("Finding Label", 1), ("Bbox [x,y,w,h]", 4))


def regroup(text: str, groups: tuple, order: list[str], extra: dict[str, str], quote_header: bool) -> str:
    """The table re-saved with its column groups in ``order`` and ``extra`` constant columns added where named
    (``order`` names them too); rows shorter than the groups are padded with empty cells."""
    rows = [r for r in csv.reader(io.StringIO(text)) if r][1:]
    starts, pos = {}, 0
    for name, width in groups:
        starts[name], pos = (pos, width), pos + width
    out = io.StringIO()
    header = ",".join(f'"{n}"' if quote_header and "," in n else n for n in order)
    out.write(header + "\n")
    writer = csv.writer(out, lineterminator="\n")
    for i, row in enumerate(rows):
        row = row + [""] * (pos - len(row))
        cells = []
        for name in order:
            if name in extra:
                cells.append(extra[name].format(i=i))
            else:
                start, width = starts[name]
                cells += row[start:start + width]
        writer.writerow(cells)
    return out.getvalue()


ENTRY_ORDER = ["", "Patient ID", "OriginalImage[Width,Height]", "View Position", "Notes", "Image Index",
               "Patient Age", "Finding Labels", "OriginalImagePixelSpacing[x,y]", "Follow-up #", "Patient Gender"]
BBOX_ORDER = ["Bbox [x,y,w,h]", "Reader", "Finding Label", "Image Index"]
EXTRA = {"": "{i}", "Notes": "re-read, {i} times", "Reader": "dr {i}"}


@pytest.mark.parametrize("quote_header", [False, True], ids=["split-header", "quoted-header"])
def test_nih_reordered_and_extra_columns_read_the_same(nih_root: Path, quote_header: bool) -> None:
    original = read_nih(nih_root, nih_root.parent, seed=2)
    entry = regroup(NIH_DATA_ENTRY_2017, ENTRY_GROUPS, ENTRY_ORDER, EXTRA, quote_header)
    bbox = regroup(NIH_BBOX_LIST, BBOX_GROUPS, BBOX_ORDER, EXTRA, quote_header)
    assert entry.splitlines()[1].startswith('0,1,2480,2020,PA,"re-read, 0 times",00000001_000.png,61,Atelectasis,')
    assert bbox.splitlines()[1] == "214.372881355932,560.203389830508,91.1186440677966,74.8474576271186,dr 0,Atelectasis,00000001_000.png"
    write_text(nih_root / "Data_Entry_2017.csv", entry)
    write_text(nih_root / "BBox_List_2017.csv", bbox)
    records, rejects = read_nih(nih_root, nih_root.parent, seed=2)
    assert records == original[0] and len(records) == 17
    # the same rows are rejected (the malformed box rows 15, 16 and the orphan); their text differs, not what they name
    assert reject_keys(rejects) == reject_keys(original[1])


def test_span_columns_names_groups_split_or_quoted() -> None:
    split = next(csv.reader(["Image Index,Finding Label,Bbox [x,y,w,h],,,"]))
    assert span_columns(split) == [("Image Index", slice(0, 1)), ("Finding Label", slice(1, 2)),
                                   ("Bbox [x,y,w,h]", slice(2, 6))]
    quoted = next(csv.reader(['Notes,"OriginalImage[Width,Height]",View Position']))
    assert span_columns(quoted) == [("Notes", slice(0, 1)), ("OriginalImage[Width,Height]", slice(1, 3)),
                                    ("View Position", slice(3, 4))]
    assert span_columns(["odd [name", "Patient ID"]) == [("odd [name", slice(0, 1)), ("Patient ID", slice(1, 2))]


@pytest.mark.parametrize("column", ["Image Index", "Finding Labels", "Patient ID", "View Position"])
def test_nih_entry_table_without_a_required_column_is_a_table_error(nih_root: Path, column: str) -> None:
    order = [name for name, _ in ENTRY_GROUPS if name != column]
    write_text(nih_root / "Data_Entry_2017.csv", regroup(NIH_DATA_ENTRY_2017, ENTRY_GROUPS, order, {}, False))
    with pytest.raises(TableError, match=rf"Data_Entry_2017.csv: missing column\(s\) \['{column}'\]"):
        read_nih(nih_root, nih_root.parent, seed=0)


def test_nih_bbox_table_without_a_required_column_is_a_rejected_source(tmp_path: Path) -> None:
    root = tmp_path / "nih-chest-xrays"
    write_text(root / "Data_Entry_2017.csv", NIH_DATA_ENTRY_2017)
    write_text(root / "BBox_List_2017.csv", regroup(NIH_BBOX_LIST, BBOX_GROUPS, ["Image Index", "Bbox [x,y,w,h]"], {}, False))
    cfg = IngestConfig(sources=SourcePaths(mimic_cxr_jpg=None, mimic_cxr_reports=None, chest_imagenome=None,
                                           ms_cxr=None, vindr_cxr=None))
    records, rejects = read_sources(tmp_path, source_roots(tmp_path, cfg), cfg)
    assert records == []
    assert reject_keys(rejects) == [("nih_cxr", "nih-chest-xrays", "table", "")]
    assert "BBox_List_2017.csv: missing column(s) ['Finding Label']" in rejects[0].reason


def test_nih_short_row_in_a_reordered_table_is_rejected(nih_root: Path) -> None:
    entry = regroup(NIH_DATA_ENTRY_2017, ENTRY_GROUPS, ENTRY_ORDER, EXTRA, False)
    lines = entry.splitlines(keepends=True)
    lines[3] = ",".join(lines[3].split(",")[:4]) + "\n"    # 00000002_000.png cut before its Image Index
    write_text(nih_root / "Data_Entry_2017.csv", "".join(lines))
    records, rejects = read_nih(nih_root, nih_root.parent, seed=0)
    assert "00000002_000.png" not in {r.image_id for r in records} and len(records) == 16
    assert ("nih_cxr", "nih/Data_Entry_2017.csv#row4", "table", "") in reject_keys(rejects)

