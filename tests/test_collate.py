"""From encoded rows to the multitask batch: each target only where its source supervises it, and the reference's
per-step class subsampling (present classes kept with probability k / #present, topped up to k)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binom

from pipelines.training.collate import collate, subsample
from pipelines.training.data import PATHOLOGIES, REGIONS, encode_row
from train_support import S, raw_row


def _numpy_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    encoded = [encode_row(r, S, None, seed=0) for r in rows]
    return {k: np.stack([e[k] for e in encoded]) for k in encoded[0]}


def test_mixed_batch_has_per_source_presence_masks():
    batch = collate(_numpy_batch([raw_row("mimic_cxr"), raw_row("vindr_cxr")]), np.random.default_rng(0),
                    pathology_classes=len(PATHOLOGIES), anatomy_regions=len(REGIONS), max_sentences=8)
    assert batch.images.shape == (2, 1, S, S) and batch.images.dtype == torch.float32
    p = batch.pathology
    assert p.has_boxes.tolist() == [False, True]  # only VinDr carries pathology boxes
    k = PATHOLOGIES.index("Nodule/Mass")
    assert p.labels[0].eq(-1).all() and p.labels[1, k] == 1  # MIMIC rows: pathology labels unknown, not absent
    assert p.box_mask[1, k].sum() == 1 and p.box_mask[0].sum() == 0
    a = batch.anatomy
    r = REGIONS.index("right lung")
    assert a.present[0, r] and not a.present[1].any()  # VinDr rows have no anatomy boxes
    assert a.labels[1].eq(-1).all() and a.labels[0].ge(0).all()
    assert a.phrases[0][r] == ["Opacity in the right lower lobe."] and a.phrases[1][r] == []
    assert batch.sentences == [["Opacity in the right lower lobe.", "The left lung is clear."], []]


def test_sentences_are_capped_per_image():
    batch = collate(_numpy_batch([raw_row("mimic_cxr")]), np.random.default_rng(0), 10, 20, max_sentences=1)
    assert batch.sentences == [["Opacity in the right lower lobe."]]
    assert batch.pathology is None  # no VinDr row, no pathology targets at all


@pytest.mark.parametrize("n_present", [0, 3, 10, 18])
def test_subsample_keeps_k_classes_and_favours_present_ones(n_present):
    n, k = 22, 10
    present = np.zeros(n, bool)
    present[:n_present] = True
    kept_present = []
    for seed in range(400):
        keep = subsample(present, k, np.random.default_rng(seed))
        assert len(keep) == k and len(set(keep.tolist())) == k and keep.max() < n
        kept_present.append(present[keep].sum())
    # D ~ Binomial(n_present, min(1, k / n_present)) present classes are drawn; absent ones fill up first
    d = np.arange(n_present + 1)
    pmf = binom.pmf(d, n_present, min(1.0, k / max(1, n_present)))
    expected = float((pmf * (np.minimum(d, k) + np.maximum(0, k - d - (n - n_present)))).sum())
    assert np.mean(kept_present) == pytest.approx(expected, abs=0.2)
