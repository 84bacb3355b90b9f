"""Calibration of the report's queries (our addition, :mod:`chex_model.presence`), fitted on MIMIC-CXR frontal
images and stored with the model: pathology presence against what the reports find (the rule labeler, as
``patho_gen`` reads them), anatomy abnormality against the Chest ImaGenome scene graphs. The training driver refits it
after every stage that changes the detector's ROI tokens; later stages carry it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chex_model.chex import ChEX
from chex_model.image_encoder import encoder_input
from chex_model.presence import fit_platt, pair_key, paired_margin, positivity_key
from chex_model.prompts import anatomy_prompts, load_prompt_set
from pipelines.training.config import CalibrationConfig
from pipelines.training.data import ms_cxr_image_ids, table_paths
from pipelines.training.finding_text import found, report_queries, sentence_codes
from preprocessing.classes import FRONTAL_VIEWS
from preprocessing.image_io import decode_png

log = logging.getLogger(__name__)

def calibration_rows(tables: Path, cfg: CalibrationConfig, exclude_ms_cxr: bool = True) -> list[dict[str, Any]]:
    """Frontal MIMIC-CXR rows with report sentences from the configured splits (MS-CXR images left out when
    training leaves them out)."""
    import pyarrow.parquet as pq

    excluded = ms_cxr_image_ids(tables) if exclude_ms_cxr else set()
    rows: list[dict[str, Any]] = []
    for split in cfg.splits:
        for path in table_paths(tables, "mimic_cxr", split):
            table = pq.read_table(path, columns=["image_id", "view_position", "report_sentences", "region_labels", "image_png"])
            for r in table.to_pylist():
                if r["view_position"] in FRONTAL_VIEWS and r["report_sentences"] and r["image_id"] not in excluded:
                    rows.append(r)
                    if len(rows) >= cfg.max_images:
                        return rows
    return rows


@torch.no_grad()
def presence_margins(model: ChEX, rows: list[dict[str, Any]], queries: list[str], positive: torch.Tensor,
                     negative: torch.Tensor, batch_size: int) -> np.ndarray:
    """Margins ``(len(rows), K)`` of the detector's ROI tokens of ``queries`` against ``positive`` / ``negative``
    prompt embeddings ``(K, d)``, one pair per query."""
    size = model.image_encoder.image_size
    prompts = model.encode_prompts(queries)
    out = []
    for start in range(0, len(rows), batch_size):
        images = [decode_png(r["image_png"]) for r in rows[start: start + batch_size]]
        pixels = encoder_input(images, size, model.cfg.image, model.device)
        features = model.detect(model.encode_image(pixels), prompts, post_decoder=False).features
        out.append(paired_margin(features, positive, negative).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(queries)), np.float32)


def region_abnormal(row: dict[str, Any], regions: list[str]) -> np.ndarray:
    """Per region name: whether the image's scene graph finds anything there (its "abnormal" attribute or any
    positive finding); a row without a scene graph gives nothing (-1)."""
    if row.get("region_labels") is None:
        return np.full(len(regions), -1, np.int8)
    hit = {lab["region"] for lab in row["region_labels"] if lab["value"] == 1}
    return np.array([name in hit for name in regions], np.int8)


def _fit(model: ChEX, keys: list[str], names: list[str], margins: np.ndarray, labels: np.ndarray, min_each: int,
         stats: dict[str, dict[str, float]]) -> None:
    from sklearn.metrics import roc_auc_score

    for k, (key, name) in enumerate(zip(keys, names)):
        known = labels[:, k] >= 0
        m, y = margins[known, k], labels[known, k] == 1
        scale, shift = fit_platt(m, y, min_each)
        model.presence_calibration[key] = (scale, shift)
        stats[name] = {"scale": scale, "shift": shift, "positives": int(y.sum()), "images": int(len(y)),
                       "auroc": float(roc_auc_score(y, m)) if 0 < y.sum() < len(y) else float("nan")}


def fit_calibration(model: ChEX, rows: list[dict[str, Any]], cfg: CalibrationConfig) -> dict[str, dict[str, float]]:
    """Fit every query of the packaged report prompt set (pathology: presence against its own negative, labelled by
    the report; anatomy: abnormality against the positivity prompts, labelled by the scene graph); set
    ``model.presence_calibration`` and return per-query statistics."""
    ps = load_prompt_set("report")
    model.eval()
    model.presence_calibration = {}
    stats: dict[str, dict[str, float]] = {}
    positive, negative = report_queries()
    margins = presence_margins(model, rows, positive, model.encode_prompts(positive), model.encode_prompts(negative), cfg.batch_size)
    labels = np.array([found(sentence_codes(r["report_sentences"])) for r in rows], np.int8).reshape(len(rows), len(positive))
    _fit(model, [pair_key(p, n) for p, n in zip(positive, negative)], positive, margins, labels, cfg.min_each, stats)
    if ps.anatomy:
        names = {prompt: name for name, prompt in anatomy_prompts().items()}
        regions = [names.get(q, q.lower()) for q in ps.anatomy]
        a = len(ps.anatomy)
        pos = model.encode_prompts(ps.positivity.positive).mean(0, keepdim=True).expand(a, -1)
        neg = model.encode_prompts(ps.positivity.negative).mean(0, keepdim=True).expand(a, -1)
        margins = presence_margins(model, rows, ps.anatomy, pos, neg, cfg.batch_size)
        labels = np.stack([region_abnormal(r, regions) for r in rows]) if rows else np.zeros((0, a), np.int8)
        key = positivity_key(ps.positivity.positive, ps.positivity.negative)
        _fit(model, [pair_key(q, key) for q in ps.anatomy], ps.anatomy, margins, labels, cfg.min_each, stats)
    return stats


def calibrate_model_dir(model_dir: Path, tables: Path, cfg: CalibrationConfig, exclude_ms_cxr: bool = True) -> dict[str, dict[str, float]]:
    """Fit the calibration of a saved model and write it next to its weights (the weights stay untouched); on the
    driver's GPU when it has one."""
    model = ChEX.from_pretrained(model_dir, device="cuda" if torch.cuda.is_available() else "cpu")
    rows = calibration_rows(tables, cfg, exclude_ms_cxr)
    if rows:
        stats = fit_calibration(model, rows, cfg)
    else:
        log.warning("calibration: no frontal MIMIC-CXR image with report sentences in splits %s of %s; the model keeps "
                    "uncalibrated presence", cfg.splits, tables)
        model.presence_calibration, stats = {}, {}
    model.save_calibration(model_dir)
    return stats
