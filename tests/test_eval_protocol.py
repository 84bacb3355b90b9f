"""The evaluation protocol against independent computations on small hand-made inputs: macro accuracy and AUROC
against scikit-learn, the paper's Ex-F1 and ours against a hand-computed table, AP with ground-truth duplicates
kept or counted once against a brute force, the bootstrap against a direct loop over torch's generator, grounding
selection by mAP and by mIoU on a validation set where they choose differently, the MS-CXR split mapped from
MIMIC-CXR's, and an evaluation that records its protocol and what each mean left out."""
from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from evaluation.auroc import auroc
from evaluation.bootstrap import SEED, bootstrap, per_group
from evaluation.clinical_f1 import ce_metrics
from evaluation.data import class_boxes, load_mscxr_paper_split
from evaluation.detection_map import IOU_THRESHOLDS, ImageBoxes, average_precision, match
from evaluation.grounding import miou_metrics, overlaps
from evaluation.postprocess import BoxPostprocess
from evaluation.task_detection import RawDetections
from evaluation.task_grounding import Phrase, metric_inputs, metrics as sg_metrics, search as sg_search
from evaluation.task_region_cls import mscxr_metrics, mscxr_skips
from preprocessing.classes import MS_CXR_8
from preprocessing.labeler import NEGATIVE, POSITIVE
from test_eval_metrics import brute_force_ap


def test_region_classification_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 1, 2, 3, 5, 6, 7], 120)  # class 4 never occurs
    probs = rng.uniform(0, 1, (120, 8)) + np.eye(8)[labels] * 0.4
    probs[:6, 4] = 5.0  # ... but is predicted: balanced accuracy leaves it out, as sklearn does
    weights = rng.integers(0, 3, 120)
    pred = probs.argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the predicted class without ground truth
        macro = balanced_accuracy_score(labels, pred, sample_weight=weights)
    got = mscxr_metrics(probs, labels, weights)
    assert got["accuracy"] == pytest.approx(macro)
    assert got["accuracy_micro"] == pytest.approx(accuracy_score(labels, pred, sample_weight=weights))
    assert got["accuracy"] != pytest.approx(got["accuracy_micro"])
    present = [c for c in range(8) if c != 4]
    expected_auc = np.mean([roc_auc_score(labels == c, probs[:, c], sample_weight=weights) for c in present])
    assert got["auroc"] == pytest.approx(expected_auc)
    assert mscxr_skips(labels) == {"auroc": [MS_CXR_8[4]], "accuracy": [MS_CXR_8[4]]}


def test_region_skips_name_what_each_cig_mean_leaves_out():
    from evaluation.auroc import region_auroc
    from evaluation.skips import region_skips

    rng = np.random.default_rng(1)
    present = rng.uniform(0, 1, (30, 3)) < 0.9
    present[:, 2] = True
    targets = (rng.uniform(0, 1, (30, 3, 4)) < 0.3) & present[..., None]
    targets[:, :, 3] = False  # finding 3: no positive anywhere
    targets[:, 2, 1] = True  # region 2 x finding 1: positives only
    probs = rng.uniform(0, 1, targets.shape)
    got = region_skips(targets, present, ["r0", "r1", "r2"], ["f0", "f1", "f2", "f3"])
    assert got == {"auroc_weighted": ["r2: f1"], "auroc_macro": ["f3"], "auroc_global_macro": ["f1", "f3"]}
    # the left-out pair changes nothing: the weighted mean over the scored pairs is the same without it
    direct = [(roc_auc_score(targets[present[:, r], r, c], probs[present[:, r], r, c]), targets[present[:, r], r, c].sum())
              for r in range(3) for c in range(3) if (r, c) != (2, 1)]
    assert region_auroc(probs, targets, present)["weighted"] == pytest.approx(sum(a * n for a, n in direct) / sum(n for _, n in direct))


def _codes(rows: list[tuple[set[int], set[int]]]) -> tuple[np.ndarray, np.ndarray]:
    """(predicted positive classes, true positive classes) per row -> CheXbert code matrices."""
    pred = np.full((len(rows), 14), NEGATIVE, np.int8)
    true = np.full((len(rows), 14), NEGATIVE, np.int8)
    for r, (p, t) in enumerate(rows):
        pred[r, list(p)] = POSITIVE
        true[r, list(t)] = POSITIVE
    return pred, true


def test_example_f1_paper_and_strict_on_a_hand_computed_table():
    # example: rows (predicted, true) -> tp, fp, fn
    #   a: ({0, 1, 2}, {0, 1}) and ({}, {3})   tp 2 fp 1 fn 1: P 2/3, R 2/3, F1 2/3
    #   b: ({4, 5}, {})                        tp 0 fp 2 fn 0: a false-positive-only example
    #   c: ({}, {6})                           tp 0 fp 0 fn 1: a miss without a false positive
    #   d: ({}, {})                            nothing on either side
    #   e: ({7}, {7})                          tp 1: F1 1
    #   f: ({8}, {9, 10})                      tp 0 fp 1 fn 2
    rows = [({0, 1, 2}, {0, 1}), (set(), {3}), ({4, 5}, set()), (set(), {6}), (set(), set()), ({7}, {7}), ({8}, {9, 10})]
    ids = ["a", "a", "b", "c", "d", "e", "f"]
    got = ce_metrics(*_codes(rows), np.array(ids))
    assert got["ex_f1_14"] == pytest.approx((2 / 3 + 1) / 2)  # the paper's: every tp = 0 example (b, c, d, f) left out
    assert got["ex_f1_14_strict"] == pytest.approx((2 / 3 + 0 + 0 + 1 + 0) / 5)  # ours: only d (nothing) left out
    pred, true = _codes(rows)
    flat_p, flat_t = (pred == POSITIVE).ravel(), (true == POSITIVE).ravel()
    assert got["mic_f1_14"] == pytest.approx(f1_score(flat_t, flat_p))
    assert got["mac_f1_14"] == pytest.approx(f1_score(true == POSITIVE, pred == POSITIVE, average="macro", zero_division=0))
    nothing_hit = ce_metrics(*_codes([({1}, {2}), (set(), {3})]), np.array([0, 1]))
    assert np.isnan(nothing_hit["ex_f1_14"]) and nothing_hit["ex_f1_14_strict"] == 0.0


def test_duplicate_ground_truth_boxes_kept_by_the_paper_counted_once_by_ours():
    box = {"name": "Pneumonia", "cx": 0.3, "cy": 0.3, "w": 0.2, "h": 0.2}
    rows = [{"boxes": [box, dict(box)]}, {"boxes": [{**box, "cx": 0.6}]}]
    paper = [class_boxes(r, ("Pneumonia",), unique=False) for r in rows]
    ours = [class_boxes(r, ("Pneumonia",)) for r in rows]
    assert [len(t[0]) for t in paper] == [2, 1] and [len(t[0]) for t in ours] == [1, 1]
    pred = [np.array([[0.2, 0.2, 0.4, 0.4], [0.7, 0.7, 0.9, 0.9]]), np.array([[0.5, 0.2, 0.7, 0.4]])]
    scores = [np.array([0.9, 0.8]), np.array([0.7])]
    for truth in (paper, ours):
        samples = [ImageBoxes({0: p}, {0: s}, t) for p, s, t in zip(pred, scores, truth)]
        ap = average_precision(match(samples, 1))
        for t, thr in enumerate(IOU_THRESHOLDS):
            assert ap[t, 0] == pytest.approx(brute_force_ap(samples, 0, thr), abs=1e-9)
    ap_paper = average_precision(match([ImageBoxes({0: p}, {0: s}, t) for p, s, t in zip(pred, scores, paper)], 1))
    assert ap_paper[0, 0] < 0.7  # a duplicate is a second object nobody can find: recall stops at 2/3


def test_bootstrap_equals_a_direct_loop_over_torch_generator():
    rng = np.random.default_rng(3)
    s = rng.uniform(0, 1, 41)
    y = rng.uniform(0, 1, 41) < 0.3 + 0.4 * s
    got = bootstrap(lambda w: {"auroc": auroc(s, y, w), "mean": float(np.average(s, weights=w))}, 41, 30)
    g = torch.Generator().manual_seed(2147483647)
    aucs, means = [], []
    for _ in range(30):
        idx = torch.randint(41, size=(41,), generator=g).numpy()
        aucs.append(roc_auc_score(y[idx], s[idx]))
        means.append(s[idx].mean())
    assert SEED == 2147483647
    assert got["auroc"]["mean"] == pytest.approx(np.mean(aucs)) and got["auroc"]["std"] == pytest.approx(np.std(aucs))
    assert got["mean"]["mean"] == pytest.approx(np.mean(means)) and got["mean"]["std"] == pytest.approx(np.std(means, ddof=0))
    assert got["auroc"]["value"] == pytest.approx(roc_auc_score(y, s))


def test_grounding_bootstrap_resamples_images_with_all_their_phrases():
    rng = np.random.default_rng(4)
    image = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 5])  # the image of each phrase
    counts = np.stack([overlaps(rng.uniform(0, .5, (2, 4)) + [0, 0, .4, .4], rng.uniform(0, .6, 2),
                                rng.uniform(0, .5, (1, 4)) + [0, 0, .4, .4], size=64) for _ in image])
    metric, n = per_group(lambda w: miou_metrics(counts, w), image)
    assert n == 6
    got = bootstrap(metric, n, 20)
    g = torch.Generator().manual_seed(SEED)
    direct = []
    for _ in range(20):
        drawn = torch.randint(6, size=(6,), generator=g).numpy()
        phrases = np.concatenate([np.flatnonzero(image == i) for i in drawn])
        direct.append(miou_metrics(counts[phrases])["mIoU"])
    assert got["mIoU"]["mean"] == pytest.approx(np.mean(direct)) and got["mIoU"]["std"] == pytest.approx(np.std(direct))


def _grounding_validation(n: int = 12) -> tuple[RawDetections, list[Phrase]]:
    """Each phrase names two findings G1, G2. Box A (weight 0.9) is G1; box B (0.5) loosely covers G2 (IoU 0.16:
    a hit at IoU 0.1 only) and overlaps A with IoU 0.084, so NMS at 0.05 removes it and NMS >= 0.1 keeps it. Keeping
    B adds recall (mAP up: 0.505 -> 0.576) and much area outside the truth (mIoU down: 0.5 -> 0.3)."""
    g1, g2 = [0.10, 0.10, 0.30, 0.30], [0.45, 0.45, 0.65, 0.65]
    a, b, c = g1, [0.15, 0.15, 0.65, 0.65], [0.11, 0.10, 0.30, 0.30]  # c: a near copy of A, always removed by NMS
    boxes = np.tile(np.array([a, b, c])[None, None], (n, 1, 1, 1))
    weights = np.tile(np.array([0.9, 0.5, 0.05])[None, None], (n, 1, 1))
    return RawDetections(boxes, weights, np.zeros((n, 1))), [Phrase(i, f"phrase {i}", np.array([g1, g2])) for i in range(n)]


def test_grounding_selection_by_map_and_by_miou_choose_differently():
    raw, phrases = _grounding_validation()
    start, grid = BoxPostprocess(mode="weights", nms=0.25), [0.05, 0.1, 0.25, 0.5]
    by_map, trace_map = sg_search(raw, phrases, start, [1.0], grid, "mAP")
    by_miou, trace_miou = sg_search(raw, phrases, start, [1.0], grid, "mIoU")
    assert by_miou.nms == 0.05  # B removed: the union mask is the truth's half, no area outside
    assert by_map.nms == 0.5  # 0.1, 0.25 and 0.5 tie on mAP (B kept); the paper's tie keeps the later option
    assert trace_map["selected_by"] == "mAP" and trace_miou["selected_by"] == "mIoU"
    scored = {v: sg_metrics(*metric_inputs(raw, phrases, BoxPostprocess(mode="weights", nms=v))) for v in grid}
    # by hand: A alone hits G1 at every IoU (AP 51/101 at recall 1/2); B also hits G2 at IoU 0.1 (AP 1 there)
    assert scored[0.05]["mAP"] == pytest.approx(51 / 101, abs=1e-9)
    assert scored[0.5]["mAP"] == pytest.approx((1 + 6 * 51 / 101) / 7, abs=1e-9)
    assert scored[0.05]["mIoU"] == pytest.approx(0.5, abs=0.01)
    assert scored[0.5]["mIoU"] == pytest.approx(0.08 / 0.2675, abs=0.01)  # |G1|+|G2| over |A u B|
    assert trace_map["after_nms"] == pytest.approx(scored[0.5]["mAP"])


def _write(folder, source: str, split: str, ids: list[str]) -> None:
    out = folder / "tables" / f"source={source}" / f"split={split}"
    out.mkdir(parents=True)
    pl.DataFrame({"sample_id": ids, "grounded_phrases": [[] for _ in ids]}).write_parquet(out / "part-0.parquet")


def test_mscxr_split_is_mapped_from_mimic_split(tmp_path):
    for split, ids in {"train": ["p1/s1/a", "p1/s1/b"], "val": ["p2/s2/c"], "test": ["p3/s3/d"]}.items():
        _write(tmp_path, "mimic_cxr", split, ids)
    # MS-CXR's own (official) split disagrees with MIMIC's for a, c and d; e is not in the MIMIC tables
    _write(tmp_path, "ms_cxr", "train", ["p2/s2/c"])
    _write(tmp_path, "ms_cxr", "val", ["p3/s3/d"])
    _write(tmp_path, "ms_cxr", "test", ["p1/s1/a", "p9/s9/e"])
    got = {s: load_mscxr_paper_split(tmp_path, s) for s in ("train", "val", "test")}
    assert [r["sample_id"] for r in got["train"][0]] == []  # the paper has no MS-CXR training images
    assert [r["sample_id"] for r in got["val"][0]] == ["p1/s1/a"]  # MIMIC train -> val
    assert [r["sample_id"] for r in got["test"][0]] == ["p2/s2/c", "p3/s3/d", "p9/s9/e"]  # validate, test -> test
    assert {u for _, u in got.values()} == {1}  # e kept its ingested split, and the run is told


def test_paper_protocol_is_logged_with_what_each_mean_left_out(ingested, tiny_model_dir, tmp_path, caplog):
    import mlflow

    from evaluation.config import Bootstrap, EvalConfig
    from evaluation.data import load_rows
    from pipelines.evaluation_run import run_evaluation
    from pipelines.lineage import format_lineage, model_lineage
    from pipelines.registry import EVAL_RUN_TAG

    tables, _ = ingested
    cfg = EvalConfig(tasks=["sg_mscxr", "od_mscxr", "rc_mscxr"], protocol="paper", bootstrap=Bootstrap(boxes=4, text=1), examples=0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with caplog.at_level(logging.WARNING, logger="evaluation.evaluate"):
        payload = run_evaluation(tables, cfg, tmp_path / "eval", tiny_model_dir, uri, show_progress=False)
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["protocol"]["name"] == "paper" and saved["protocol"]["sg_selection"].startswith("paper: ")
    # independently: MS-CXR test images are those whose MIMIC-CXR image is in MIMIC's val or test split
    mimic = {r["sample_id"]: s for s in ("train", "val", "test") for r in load_rows(tables, "mimic_cxr", s)}
    mscxr = [r for s in ("train", "val", "test") for r in load_rows(tables, "ms_cxr", s)]
    test_rows = [r for r in mscxr if mimic[r["sample_id"]] in ("val", "test")]
    assert saved["tasks"]["sg_mscxr"]["images"] == len(test_rows) > 0
    sg_settings = saved["tasks"]["sg_mscxr"]["settings"]
    assert sg_settings["search"]["selected_by"] == "mAP" and sg_settings["postprocess"]["nms"] in (0.05, 0.1, 0.25, 0.5)
    boxed = {b["name"] for r in test_rows for g in r["grounded_phrases"] for b in g["boxes"]}
    absent = [c for c in MS_CXR_8 if c not in boxed]
    assert absent and saved["tasks"]["od_mscxr"]["skipped"]["mAP"] == absent
    warned = " ".join(r.getMessage() for r in caplog.records if "od_mscxr mAP" in r.getMessage())
    assert all(c in warned for c in absent)
    run = mlflow.MlflowClient(uri).get_run(payload["mlflow_run_id"])
    assert run.data.tags["protocol"] == "paper" and run.data.tags["protocol.gt_boxes"] == "paper"
    assert run.data.tags["protocol.ex_f1_14"] == "paper" and run.data.tags["protocol.edge_conventions"] == "ours"
    assert run.data.tags["skipped.od_mscxr.mAP"] == ", ".join(absent)
    assert "Protocol: paper" in (tmp_path / "eval" / "table.md").read_text()

    client = mlflow.MlflowClient(uri)
    client.create_registered_model("chex-protocol")
    client.create_model_version("chex-protocol", f"runs:/{run.info.run_id}/evaluation", run.info.run_id,
                                tags={EVAL_RUN_TAG: run.info.run_id})
    chain = model_lineage("models:/chex-protocol/1", uri)
    assert chain["evaluation"]["protocol"]["protocol"] == "paper"
    assert "protocol.sg_selection: paper" in format_lineage(chain)


def test_paper_config_takes_the_paper_protocol_and_the_demo_ours():
    from pathlib import Path

    from chex_model.typed_config import ConfigError, from_dict, load_config
    from evaluation.config import EvalConfig
    from evaluation.protocol import Protocol

    root = Path(__file__).resolve().parents[1]
    assert load_config(EvalConfig, root / "configs/evaluate/paper.yaml").protocol == Protocol.preset("paper")
    assert load_config(EvalConfig, root / "configs/evaluate/default.yaml").protocol == Protocol.preset("ours")
    mixed = from_dict(EvalConfig, {"protocol": {"sg_selection": "paper"}}).protocol
    assert mixed == Protocol(sg_selection="paper") and mixed.name == "mixed: ours for gt_boxes, mscxr_split"
    assert Protocol().name == "ours" and Protocol.preset("paper").name == "paper"
    with pytest.raises(ConfigError, match="protocol.gt_boxes"):
        Protocol(gt_boxes="mine")
    with pytest.raises(ConfigError, match="protocol"):
        EvalConfig(protocol="mine")


def test_detection_search_ties_keep_the_later_scale_and_a_class_without_val_boxes_keeps_one():
    from evaluation.postprocess import best_of
    from evaluation.task_detection import TASKS, search

    task = TASKS["od_mscxr"]
    rng = np.random.default_rng(5)
    n, c = 10, len(task.classes)
    truth, boxes = [], np.zeros((n, c, 3, 4))
    for i in range(n):
        ctr = rng.uniform(0.3, 0.7, 2)
        box = np.concatenate([ctr - 0.1, ctr + 0.1])
        truth.append({0: box[None]})  # only class 0 has validation boxes
        boxes[i] = box
    raw = RawDetections(boxes, np.ones((n, c, 3)), np.zeros((n, c)))
    pp, _ = search(raw, truth, task, BoxPostprocess(mode="weights", nms=0.25), [0.9, 1.0, 1.1, 1.2], [0.1], [0.25])
    # scales 0.9, 1.0 and 1.1 keep IoU >= 0.81 (AP 1 at every threshold up to 0.7), 1.2 does not (IoU 0.69)
    assert pp.scale[0] == 1.1 and set(pp.scale[1:]) == {1.0}
    options = [BoxPostprocess(nms=v) for v in (0.1, 0.25, 0.5)]
    value = {0.1: 0.4, 0.25: 0.7, 0.5: 0.7}
    assert best_of(options, lambda p: value[p.nms], later_ties=True).nms == 0.5
    assert best_of(options, lambda p: value[p.nms], later_ties=False).nms == 0.25
