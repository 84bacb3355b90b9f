"""Baselines beside the model: the shuffled predictor is the model's answer for another image (a derangement that keeps
patients apart), and a model evaluation scores random, oracle and shuffled on the same tasks into results.json, MLflow
and extra table columns."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from chex_model.typed_config import ConfigError
from evaluation import task_detection as od
from evaluation.config import Bootstrap, EvalConfig
from evaluation.data import load_rows
from evaluation.postprocess import BoxPostprocess
from evaluation.evaluate import Evaluation, derangement, image_groups
from evaluation.table import cell

SPLIT = "train"  # the split with the most VinDr boxes in the shared ingest fixture


@pytest.fixture(scope="module")
def runner(tiny_model_dir):
    from chex_model.chex import ChEX
    from evaluation.runner import ModelRunner

    return ModelRunner(ChEX.from_pretrained(tiny_model_dir), batch_size=4, max_new_tokens=6, show_progress=False)


@pytest.mark.parametrize("n, patients", [(2, 2), (3, 1), (7, 7), (10, 4), (25, 6), (40, 3)])
def test_derangement_is_a_permutation_without_fixed_points_that_keeps_patients_apart(n, patients):
    groups = [f"p{k}" for k in np.random.default_rng(n).integers(0, patients, n)]
    perm = derangement(groups)
    assert sorted(perm.tolist()) == list(range(n))
    assert all(perm[i] != i for i in range(n))
    if 2 * max(groups.count(g) for g in groups) <= n:  # possible: no row shown an image of its own patient
        assert all(groups[perm[i]] != groups[i] for i in range(n))
    assert derangement(groups).tolist() == perm.tolist()  # fixed: every run pairs the same images
    assert derangement(["a"]).tolist() == [0] and derangement([]).tolist() == []


def test_shuffled_detection_is_the_model_on_another_image(ingested, runner):
    tables, _ = ingested
    task = od.TASKS["od_vindr"]
    rows = od.scored_rows(load_rows(tables, task.source, SPLIT), task)
    perm = derangement(image_groups(rows))
    assert len(rows) >= 3
    cfg = EvalConfig(tasks=["od_vindr"], split=SPLIT, predictor="shuffled")
    shuffled = Evaluation(tables, cfg, runner)._od_raw(rows, task, od.truth(rows, task))
    # independently: the model on each image alone (box prompts are per class, the same for every row)
    own = [od.predict(runner, [r], task) for r in rows]
    for i, j in enumerate(perm):
        assert rows[j]["image_png"] != rows[i]["image_png"]
        np.testing.assert_allclose(shuffled.boxes[i], own[j].boxes[0], atol=1e-5)
        np.testing.assert_allclose(shuffled.weights[i], own[j].weights[0], atol=1e-5)
        np.testing.assert_allclose(shuffled.margin[i], own[j].margin[0], atol=1e-5)
    assert not np.allclose(shuffled.boxes, np.concatenate([o.boxes for o in own]), atol=1e-4)  # the image matters


def test_single_image_is_shown_its_own_image_with_a_note(ingested, runner):
    tables, _ = ingested
    cfg = EvalConfig(tasks=["od_vindr"], split=SPLIT, predictor="shuffled", max_images=1, search=False, bootstrap=Bootstrap(boxes=2))
    res = Evaluation(tables, cfg, runner).run()["od_vindr"]
    model = Evaluation(tables, replace(cfg, predictor="model"), runner).run()["od_vindr"]
    assert "single image" in res.note and not model.note
    assert res.metrics["mAP"]["value"] == pytest.approx(model.metrics["mAP"]["value"], nan_ok=True)


def test_rows_keep_their_own_fields_and_the_note_counts_same_patient_pairs(runner):
    rows = [{"sample_id": f"s{k}", "patient_id": p, "image_png": f"img{k}".encode(), "boxes": [k]}
            for k, p in enumerate(["a", "a", "a", "b"])]  # patient a has 3 of 4 rows: some pairs cannot be kept apart
    ev = Evaluation(".", EvalConfig(predictor="shuffled"), runner)
    seen = ev.seen(rows)
    assert [r["boxes"] for r in seen] == [[0], [1], [2], [3]] and [r["sample_id"] for r in seen] == ["s0", "s1", "s2", "s3"]
    source = [int(r["image_png"][3:]) for r in seen]
    assert sorted(source) == [0, 1, 2, 3] and all(j != i for i, j in enumerate(source))
    same = sum(rows[i]["patient_id"] == rows[j]["patient_id"] for i, j in enumerate(source))
    assert same >= 2 and ev._notes == [f"shuffled: {same} of 4 rows were shown another image of their own patient"]
    assert Evaluation(".", EvalConfig(predictor="model"), runner).seen(rows) is rows


def test_baselines_are_checked():
    assert EvalConfig().baselines == []
    assert EvalConfig(baselines=["oracle", "shuffled", "oracle"]).baselines == ["oracle", "shuffled"]
    with pytest.raises(ConfigError, match="baseline 'model' is not one of random, oracle, shuffled"):
        EvalConfig(baselines=["model"])
    with pytest.raises(ValueError, match="shuffled predictor needs a model"):
        Evaluation(".", EvalConfig(predictor="shuffled"))


def test_run_evaluation_scores_baselines_beside_the_model(ingested, tiny_model_dir, tmp_path):
    import mlflow

    from pipelines.evaluation_run import run_evaluation

    tables, _ = ingested
    tasks, names = ["od_vindr", "rc_cig"], ["random", "oracle", "shuffled"]
    cfg = EvalConfig(tasks=tasks, split=SPLIT, baselines=names, max_new_tokens=6, bootstrap=Bootstrap(boxes=10), examples=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    payload = run_evaluation(tables, cfg, tmp_path / "eval", tiny_model_dir, uri, show_progress=False)
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(saved["baselines"]) == names
    assert all(set(saved["baselines"][b]) == set(tasks) for b in names)
    chosen = saved["tasks"]["od_vindr"]["settings"]["postprocess"]  # what the model's validation search picked
    assert "search" not in saved["baselines"]["shuffled"]["od_vindr"]["settings"]
    assert saved["baselines"]["shuffled"]["od_vindr"]["settings"]["postprocess"] == chosen  # boxes as the model's

    # each baseline equals that predictor evaluated on its own with the same settings
    from chex_model.chex import ChEX
    from evaluation.runner import ModelRunner

    runner = ModelRunner(ChEX.from_pretrained(tiny_model_dir), cfg.batch_size, cfg.max_new_tokens, show_progress=False)
    fixed = {"od_vindr": BoxPostprocess(**chosen)}
    for name in names:
        alone = Evaluation(tables, replace(cfg, predictor=name, baselines=[], search=False,
                                           postprocess={**cfg.postprocess, **fixed}), runner).run()
        for task in tasks:
            got = saved["baselines"][name][task]["metrics"]
            for key, stat in alone[task].metrics.items():
                assert got[key]["value"] == pytest.approx(stat["value"], nan_ok=True), (name, task, key)
    oracle, chance = (saved["baselines"][b]["od_vindr"]["metrics"]["mAP"]["value"] for b in ("oracle", "random"))
    assert oracle >= 0.6 and oracle - chance >= 0.3  # as the oracle / chance tests of test_evaluate_stage

    run = mlflow.MlflowClient(uri).get_run(payload["mlflow_run_id"])
    for name in names:
        assert run.data.metrics[f"baseline/{name}/od_vindr/mAP"] == pytest.approx(saved["baselines"][name]["od_vindr"]["metrics"]["mAP"]["value"])
    assert run.data.metrics["od_vindr/mAP"] == pytest.approx(saved["tasks"]["od_vindr"]["metrics"]["mAP"]["value"])

    table = (tmp_path / "eval" / "table.md").read_text().splitlines()
    assert table[0] == "| Task | Dataset | Metric | n | ChEX (ours) | random | oracle | shuffled |"
    assert table[1].count("---") == 8
    row = next(line for line in table if line.startswith("| Pathology detection | VinDr-CXR | mAP |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    expected = [saved["tasks"]["od_vindr"]] + [saved["baselines"][b]["od_vindr"] for b in names]
    assert cells[4:] == [cell(r["metrics"]["mAP"]) for r in expected]
