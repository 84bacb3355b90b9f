"""Presence calibration: the Platt fit, its fallbacks, its storage with the model, and the fit on ingested tables."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from chex_model.chex import ChEX
from chex_model.presence import CALIBRATION_FILE, UNINFORMED_CAP, fit_platt, pair_key, paired_margin
from model_support import tiny_config


def test_platt_fit_matches_the_observed_frequencies() -> None:
    rng = np.random.default_rng(0)
    margins = rng.normal(size=4000)
    truth = 1 / (1 + np.exp(-(3.0 * margins - 1.0)))  # a known logistic relation
    labels = rng.uniform(size=margins.size) < truth
    scale, shift = fit_platt(margins, labels)
    assert scale == pytest.approx(3.0, rel=0.15) and shift == pytest.approx(-1.0, abs=0.2)
    predicted = 1 / (1 + np.exp(-(scale * margins + shift)))
    for lo in np.arange(0.0, 1.0, 0.2):  # calibrated: in each probability bin, the predicted mean is the observed rate
        m = (predicted >= lo) & (predicted < lo + 0.2)
        assert abs(predicted[m].mean() - labels[m].mean()) < 0.05


def test_a_query_the_margin_does_not_rank_is_never_called_present() -> None:
    rng = np.random.default_rng(1)
    margins = rng.normal(size=300)
    rare = np.zeros(300, bool)
    rare[:2] = True
    assert fit_platt(margins, rare) == (0.0, pytest.approx(math.log(2.5 / 298.5)))  # too few positives: base rate
    backwards = margins < 0  # the margin ranks the finding the wrong way round
    scale, shift = fit_platt(margins, backwards)
    assert scale == 0.0 and 1 / (1 + math.exp(-shift)) < 0.5
    common = rng.uniform(size=300) < 0.8  # common but unrelated to the margin
    scale, shift = fit_platt(np.where(common, -1.0, 1.0) * np.abs(margins), common)
    assert scale == 0.0 and 1 / (1 + math.exp(-shift)) == pytest.approx(UNINFORMED_CAP)


def test_calibration_is_applied_per_key_and_round_trips_with_the_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ChEX.build(tiny_config()).eval()
    feats = torch.randn(2, 3, model.cfg.d_model)
    positive, negative = ["Pleural effusion", "Cardiomegaly", "Edema"], ["No pleural effusion", "No cardiomegaly", "No edema"]
    model.presence_calibration = {pair_key(positive[0], negative[0]): (40.0, -2.0), pair_key(positive[2], negative[2]): (5.0, 1.0)}
    margin = paired_margin(feats, model.encode_prompts(positive), model.encode_prompts(negative))
    expected = torch.stack([torch.sigmoid(40 * margin[:, 0] - 2), torch.sigmoid(margin[:, 1] / model.cfg.loss.pathology_temperature),
                            torch.sigmoid(5 * margin[:, 2] + 1)], dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(model.presence(feats, positive, negative), expected)
    model.save_pretrained(tmp_path / "m")
    assert ChEX.from_pretrained(tmp_path / "m").presence_calibration == model.presence_calibration
    model.presence_calibration = {}
    model.save_pretrained(tmp_path / "m")  # an uncalibrated save removes the stale file
    assert not (tmp_path / "m" / CALIBRATION_FILE).exists()
    assert ChEX.from_pretrained(tmp_path / "m").presence_calibration == {}


def test_fit_on_ingested_tables_counts_the_labels_and_is_stored(ingested, tmp_path: Path) -> None:
    from chex_model.prompts import load_prompt_set
    from pipelines.training.calibrate import calibrate_model_dir
    from pipelines.training.config import CalibrationConfig
    from preprocessing.classes import FRONTAL_VIEWS

    tables, _ = ingested
    torch.manual_seed(0)
    ChEX.build(tiny_config()).save_pretrained(tmp_path / "m")
    cfg = CalibrationConfig(splits=["train", "val"], min_each=1)
    stats = calibrate_model_dir(tmp_path / "m", tables, cfg, exclude_ms_cxr=False)
    ps = load_prompt_set("report")
    assert list(stats) == ps.pathology + ps.anatomy
    rows = [r for split in cfg.splits for p in sorted((tables / "tables" / "source=mimic_cxr" / f"split={split}").glob("*.parquet"))
            for r in pq.read_table(p, columns=["view_position", "report_sentences", "region_labels"]).to_pylist()
            if r["view_position"] in FRONTAL_VIEWS and r["report_sentences"]]
    assert rows and all(s["images"] == len(rows) for s in list(stats.values())[: len(ps.pathology)])
    graphs = [r for r in rows if r["region_labels"] is not None]
    for prompt in ps.anatomy:  # anatomy labels: a brute-force count of scene-graph regions with a positive finding
        hits = sum(any(lab["region"] == prompt.lower() and lab["value"] == 1 for lab in r["region_labels"]) for r in graphs)
        assert (stats[prompt]["positives"], stats[prompt]["images"]) == (hits, len(graphs)), prompt
    effusion = sum(any("effusion" in s.lower() and not s.lower().startswith(("no ", "there is no")) for s in r["report_sentences"])
                   for r in rows)
    assert stats["Pleural effusion"]["positives"] == effusion
    model = ChEX.from_pretrained(tmp_path / "m")
    assert len(model.presence_calibration) == len(ps.pathology) + len(ps.anatomy)
    for query, s in stats.items():
        assert s["scale"] >= 0 and (s["scale"] > 0 or 1 / (1 + math.exp(-s["shift"])) <= UNINFORMED_CAP + 1e-9), query
