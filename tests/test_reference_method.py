"""The reference's method where the paper configuration follows it: anatomy InfoNCE and box losses, multi-region and
synonym prompts, ROI aggregation, projector dropout, text pre-training repeats, box + text fusion, the stage-1 path
without the post decoder and the reference report policy. Each is checked against a hand-written computation."""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chex_model import box_ops, losses
from chex_model.chex import ChEX
from chex_model.config import LossConfig, preset
from chex_model.detector import aggregate
from chex_model.image_encoder import normalize
from chex_model.multitask import anatomy_box_targets, multitask_losses
from chex_model.prompts import anatomy_prompts, anatomy_synonyms, load_prompt_set, multi_regions
from model_support import MULTI_PROMPT, phantom_batch, tiny_config
from pipelines.training.collate import collate
from pipelines.training.config import DataConfig, StageConfig
from pipelines.training.data import REGIONS, encode_row
from pipelines.training.trainer import stage_batch
from train_support import S, raw_row


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=0))


def _reference_anatomy_infonce(features, labels, pos, neg, temperature, base) -> float:
    """Per region, with plain loops: -mean(pos logits) + log(sum over pos and neg of exp(logit)); mean over regions."""
    per_region = []
    for r in range(labels.shape[0]):
        positives, negatives = [], []
        for c in range(labels.shape[1]):
            lp, ln = _cos(features[r], pos[c]) / temperature, _cos(features[r], neg[c]) / temperature
            if labels[r, c] == 1:
                positives.append(lp)
                negatives.append(ln)
            elif labels[r, c] == 0 and base[c]:
                positives.append(ln)
                negatives.append(lp)
        if positives:
            per_region.append(-sum(positives) / len(positives) + math.log(sum(math.exp(v) for v in positives + negatives)))
    return sum(per_region) / len(per_region)


@pytest.mark.parametrize("n_negatives", [99, 3])
def test_anatomy_infonce_has_the_reference_form(n_negatives: int) -> None:
    g = torch.Generator().manual_seed(0)
    features, pos, neg = torch.randn(5, 16, generator=g), torch.randn(7, 16, generator=g), torch.randn(7, 16, generator=g)
    labels = torch.tensor([[1, 0, 0, 0, 0, -1, 0], [0, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, -1, 0, 0],
                           [0, 0, 1, 0, 0, 0, 0], [-1, -1, -1, -1, -1, -1, -1]])
    got = losses.anatomy_infonce_reference(features, labels, pos, neg, 0.25, n_negatives, torch.Generator().manual_seed(5))
    base = (labels >= 0).any(0).tolist()
    if n_negatives < labels.shape[1]:  # one subset of classes for the whole batch, drawn by in-batch positive counts
        counts = (labels == 1).sum(0).float() + 1e-7
        drawn = set(torch.multinomial(counts, n_negatives, replacement=False, generator=torch.Generator().manual_seed(5)).tolist())
        base = [b and c in drawn for c, b in enumerate(base)]
        assert sum(base) < sum((labels >= 0).any(0).tolist())
    want = _reference_anatomy_infonce(features, labels, pos, neg, 0.25, base)
    assert got.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("weight", [1.0, 10.0])
def test_anatomy_box_loss_weighs_each_multi_region_prompt_once(weight: float) -> None:
    """Single regions: every one of the M boxes regresses to the region's box (a term per box); a multi-region prompt:
    balanced optimal matching to its member boxes, its pairs' mean counting as one term (chex-reference §2.6), or as
    ``multi_region_weight`` terms."""
    g = torch.Generator().manual_seed(1)
    n, a, m = 2, 2, 3
    boxes = torch.rand(n, a + 1, m, 4, generator=g) * 0.5 + 0.25
    scores = torch.rand(n, a + 1, m, generator=g)
    single, present = torch.rand(n, a, 4, generator=g) * 0.5 + 0.25, torch.tensor([[True, True], [True, False]])
    members = torch.rand(n, 1, 2, 4, generator=g) * 0.5 + 0.25
    member_mask = torch.tensor([[[True, True]], [[True, False]]])
    t = dataclasses.replace(phantom_batch().anatomy, prompts=["a", "b"], boxes=single, present=present,
                            multi_prompts=["both"], multi_boxes=members, multi_mask=member_mask)
    targets, mask, multi = anatomy_box_targets(t)
    assert multi.tolist() == [False, False, True]
    cfg = LossConfig(multi_region_weight=weight)
    got = losses.detection_losses(boxes, scores, targets, mask, torch.ones(n, a + 1, dtype=torch.bool), cfg,
                                  mean_per_prompt=multi).terms

    def cost(p, q, s):
        gi = box_ops.generalized_box_iou(box_ops.cxcywh_to_xyxy(p[None]), box_ops.cxcywh_to_xyxy(q[None]))[0, 0]
        return 5 * float((p - q).abs().sum()) + 2 * float(1 - gi) + 3 * float(1 - s)

    def l1_giou(p, q):
        gi = box_ops.generalized_box_iou(box_ops.cxcywh_to_xyxy(p[None]), box_ops.cxcywh_to_xyxy(q[None]))[0, 0]
        return float((p - q).abs().sum()), float(1 - gi)

    l1_sum = giou_sum = count = 0.0
    for i in range(n):
        for r in range(a):
            if present[i, r]:
                for k in range(m):
                    l1, gi = l1_giou(boxes[i, r, k], single[i, r])
                    l1_sum, giou_sum, count = l1_sum + l1, giou_sum + gi, count + 1
        tg = members[i, 0][member_mask[i, 0]]
        # brute force: every assignment of the M boxes to targets that covers each target at least once
        best = min((sum(cost(boxes[i, a, k], tg[j], scores[i, a, k]) for k, j in enumerate(choice)), choice)
                   for choice in itertools.product(range(len(tg)), repeat=m) if set(choice) == set(range(len(tg))))[1]
        pairs = [l1_giou(boxes[i, a, k], tg[j]) for k, j in enumerate(best)]
        l1_sum += weight * sum(p[0] for p in pairs) / m
        giou_sum += weight * sum(p[1] for p in pairs) / m
        count += weight
    assert got["l1"].item() == pytest.approx(l1_sum / count, rel=1e-5)
    assert got["giou"].item() == pytest.approx(giou_sum / count, rel=1e-5)


def test_roi_token_aggregation_divides_by_max_one_and_the_sum() -> None:
    boxes = torch.rand(1, 2, 3, 4)
    feats = torch.randn(1, 2, 3, 8)
    scores = torch.tensor([[[0.2, 0.1, 0.3], [0.9, 0.8, 0.4]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    ref = aggregate(boxes, scores, feats, mask, 0.5, "max1")
    ours = aggregate(boxes, scores, feats, mask, 0.5, "sum")
    for q in range(2):
        w = scores[0, q]
        ref_norm = max(1.0, float(w.sum()))
        assert torch.allclose(ref.features[0, q], (w[:, None] * feats[0, q]).sum(0) / ref_norm, atol=1e-6)
        assert torch.allclose(ours.features[0, q], (w[:, None] * feats[0, q]).sum(0) / float(w.sum()), atol=1e-6)
        assert ref.score[0, q].item() == pytest.approx(float((w * w).sum()) / ref_norm, rel=1e-6)


def test_projectors_end_in_dropout_as_the_reference_mlp() -> None:
    model = ChEX.build(dataclasses.replace(tiny_config(), detector=dataclasses.replace(tiny_config().detector, projector_dropout=True)))
    det = model.detector
    assert isinstance(det.patch_proj[-1], torch.nn.Dropout) and isinstance(det.out_proj[-1][-1], torch.nn.Dropout)
    assert not isinstance(det.box_head[-1][-1], torch.nn.Dropout)  # the box predictor has no final dropout
    paper = preset("paper")
    assert paper.detector.projector_dropout and paper.detector.feature_norm == "max1"


def test_text_pretraining_repeats_the_sentence_embedding_as_consecutive_prefixes() -> None:
    torch.manual_seed(0)
    model = ChEX.build(tiny_config()).eval()
    prefix = model.generator.prefix
    feats = torch.randn(2, 3, model.cfg.d_model)
    with torch.no_grad():
        together = prefix(feats)
        alone = [prefix(feats[:, r]) for r in range(3)]
    p = model.cfg.generator.prefix_length
    for layer, (k, v) in enumerate(together):
        assert k.shape[2] == 3 * p
        assert torch.allclose(k, torch.cat([a[layer][0] for a in alone], dim=2), atol=1e-6)
        assert torch.allclose(v, torch.cat([a[layer][1] for a in alone], dim=2), atol=1e-6)
    with torch.no_grad():  # R copies of one token give the loss of an R * P prefix (here R = 1 equals the plain call)
        one = model.generator.loss(feats[:, 0], ["Heart size is normal.", "No effusion."])
        same = model.generator.loss(feats[:, :1], ["Heart size is normal.", "No effusion."])
    assert one.item() == pytest.approx(same.item(), rel=1e-6)


def test_box_and_text_fuse_the_decoded_query_token_of_the_overlapping_box() -> None:
    torch.manual_seed(0)
    model = ChEX.build(tiny_config()).eval()
    images = phantom_batch().images[:2]
    boxes = torch.tensor([[[0.3, 0.4, 0.3, 0.6], [0.7, 0.4, 0.3, 0.6]]] * 2)
    has = torch.tensor([[True, False], [True, True]])
    with torch.no_grad():
        feats = model.encode_image(normalize(images, model.cfg.image))
        prompts = model.encode_prompts(["Right lung", "Left lung"])[None].expand(2, -1, -1)
        got = model.encode_boxes(feats, boxes, prompts=prompts, has_prompt=has, post_decoder=False)
        det = model.detector(feats.patches, feats.pos, prompts, has)
        want = torch.empty_like(got)
        for i, j in itertools.product(range(2), range(2)):
            iou = [float(box_ops.box_iou(box_ops.cxcywh_to_xyxy(boxes[i, j][None]),
                                         box_ops.cxcywh_to_xyxy(det.boxes[i, j, k][None]))[0, 0]) for k in range(3)]
            token = det.query_tokens[i, j, int(np.argmax(iou))]
            roi = model.detector.pool(feats.patches[i:i + 1], boxes[i:i + 1, j:j + 1])[0, 0]
            fused = model.detector.pool(feats.patches[i:i + 1], boxes[i:i + 1, j:j + 1], token[None, None],
                                        torch.tensor([[True]]))[0, 0]
            want[i, j] = fused if has[i, j] else roi
    assert torch.allclose(got, want, atol=1e-5)
    model.cfg.detector.box_text_fusion = "prompt"
    with torch.no_grad():
        raw = model.encode_boxes(feats, boxes, prompts=prompts, has_prompt=has, post_decoder=False)
    assert not torch.allclose(raw[has], got[has], atol=1e-3) and torch.allclose(raw[~has], got[~has], atol=1e-6)


def test_stage_one_tokens_bypass_the_post_decoder() -> None:
    torch.manual_seed(0)
    model = ChEX.build(tiny_config())
    batch = dataclasses.replace(phantom_batch(), pathology=None, findings=None)
    for flag in (False, True):
        model.zero_grad()
        out = multitask_losses(model, batch, generate=False, post_decoder=flag)
        (out["anat_cls"] + out["sent_contr"] + out["sent_mse"]).backward()
        touched = model.post_decoder.norm.weight.grad
        assert (touched is not None and touched.abs().sum() > 0) == flag


def test_bilateral_boxes_cover_both_lungs_after_training_on_a_fixed_batch() -> None:
    """A multi-region prompt trained on its member boxes: each of its M boxes lands on one lung, and each lung gets
    a box (the phantom batch's "Bilateral" prompt, anatomy box losses only)."""
    torch.manual_seed(0)
    model = ChEX.build(tiny_config())
    full = phantom_batch()
    an = full.anatomy
    an = dataclasses.replace(an, prompts=an.prompts[:2], boxes=an.boxes[:, :2], present=an.present[:, :2],
                             labels=an.labels[:, :2], phrases=[r[:2] for r in an.phrases])
    batch = dataclasses.replace(full, pathology=None, sentences=None, findings=None, anatomy=an)
    weights = {"anat_box_l1": 5.0, "anat_box_giou": 2.0, "anat_ground": 5.0}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(150):
        out = multitask_losses(model, batch, generate=False)
        opt.zero_grad()
        sum(w * out[k] for k, w in weights.items()).backward()
        opt.step()
    model.eval()
    for n in range(len(batch.images)):
        result = model.query(batch.images[n, 0].numpy(), prompts=[MULTI_PROMPT], max_new_tokens=2)[0]
        iou = box_ops.box_iou(box_ops.cxcywh_to_xyxy(torch.tensor(result.boxes)),
                              box_ops.cxcywh_to_xyxy(batch.anatomy.boxes[n, :2]))  # (M, 2 lungs)
        assert (iou.max(1).values >= 0.5).all(), iou  # every box on a lung
        assert (iou.max(0).values >= 0.5).all(), iou  # both lungs found


def test_collate_draws_region_synonyms_and_builds_multi_region_targets() -> None:
    rows = [encode_row(raw_row("mimic_cxr"), S, None, seed=0)]
    nb = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    vocabulary = anatomy_synonyms()
    seen: set[str] = set()
    for seed in range(30):
        batch = collate(nb, np.random.default_rng(seed), 10, 29, 0, synonyms=True, multi=True)
        a = batch.anatomy
        seen |= set(a.prompts + a.multi_prompts)
        assert all(p in {s for v in vocabulary.values() for s in v} | {s for m in multi_regions() for s in m.prompts}
                   for p in a.prompts + a.multi_prompts)
        lungs = [m for m in multi_regions() if m.name == "lungs"][0]
        assert len(a.multi_prompts) == 1 and a.multi_prompts[0] in lungs.prompts  # only the lungs have members here
        right, left = REGIONS.index("right lung"), REGIONS.index("left lung")
        assert torch.equal(a.multi_boxes[0, 0], torch.from_numpy(nb["anat_boxes"][0, [right, left]]))
        assert a.multi_mask[0, 0].tolist() == [True, True]
    assert "Bilateral" in seen and "Lungs" in seen  # synonyms are drawn, not only the canonical prompt
    plain = collate(nb, np.random.default_rng(0), 10, 29, 0)
    assert plain.anatomy.multi_prompts == [] and set(plain.anatomy.prompts) <= set(anatomy_prompts().values())


def test_stage_batch_builds_only_the_targets_a_stage_weighs() -> None:
    rows = [encode_row(raw_row("mimic_cxr"), S, None, seed=0)]
    nb = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    data = DataConfig()
    detection = StageConfig(loss_weights={"anat_box_l1": 1.0, "anat_cls": 1.0})
    post = StageConfig(loss_weights={"anat_cls": 1.0, "anat_mse": 1.0})
    generation = StageConfig(loss_weights={"anat_gen": 1.0, "patho_gen": 1.0})
    rng = np.random.default_rng(0)
    assert stage_batch(nb, rng, data, detection, train=True).anatomy.multi_prompts
    assert not stage_batch(nb, rng, data, post, train=True).anatomy.multi_prompts  # no multi-anatomy after stage 1
    assert stage_batch(nb, rng, data, post, train=True).findings is None  # patho_gen not weighed: not computed
    assert stage_batch(nb, rng, data, generation, train=True).findings is not None


def test_reference_report_policy_ignores_calibration_and_answers_every_pathology_query() -> None:
    torch.manual_seed(0)
    model = ChEX.build(tiny_config()).eval()
    ps = load_prompt_set("reference")
    assert not ps.pathology_negative and not ps.calibrated and len(ps.pathology) == 14 and len(ps.anatomy) == 15
    no_dedup = dataclasses.replace(ps, dedup=dataclasses.replace(ps.dedup, strict=1.01, loose=1.01))
    image = phantom_batch().images[0, 0]
    with torch.no_grad():
        feats = model.encode_image(normalize(image[None, None], model.cfg.image))
        det = model.detect(feats, model.encode_prompts(ps.pathology + ps.anatomy)[None])
        pos = model.encode_prompts(ps.positivity.positive).mean(0)
        neg = model.encode_prompts(ps.positivity.negative).mean(0)
    f = det.features[0, len(ps.pathology):]
    positive = [i for i in range(len(ps.anatomy))
                if 1 / (1 + math.exp(-(_cos(f[i], pos) - _cos(f[i], neg)))) >= ps.positivity.threshold]
    keep = list(range(len(ps.pathology))) + [len(ps.pathology) + i for i in positive]  # every pathology query
    with torch.no_grad():
        sentences = model.generate(det.features[0, keep])
    queries = ps.pathology + ps.anatomy
    expected = [queries[k] for k, s in zip(keep, sentences) if s]
    model.presence_calibration = {}
    assert [s.query for s in model.report(image, no_dedup).sentences] == expected
    from chex_model.presence import pair_key, positivity_key

    key = positivity_key(ps.positivity.positive, ps.positivity.negative)
    model.presence_calibration = {pair_key(q, key): (0.0, 9.0) for q in ps.anatomy}  # "abnormal everywhere"
    model.presence_calibration.update({pair_key(p, n): (0.0, -9.0) for p, n in zip(ps.pathology, ps.positivity.negative)})
    assert [s.query for s in model.report(image, no_dedup).sentences] == expected  # the calibration is not used
    ours = dataclasses.replace(load_prompt_set("report"), dedup=no_dedup.dedup)
    with torch.no_grad():
        spoken = [q for q, s in zip(ps.anatomy, model.generate(f)) if s]
    assert [s.query for s in model.report(image, ours).sentences if s.kind == "anatomy"] == spoken  # ours uses it
    assert load_prompt_set("report").calibrated


def test_a_format_one_checkpoint_keeps_the_settings_it_was_trained_with(tiny_model_dir, tmp_path) -> None:
    """Checkpoints written before the reference's settings became the defaults load with what they ran with."""
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    meta = json.loads((old / "config.json").read_text())
    for section, keys in (("detector", ("projector_dropout", "feature_norm", "box_text_fusion")),
                          ("generator", ("pretrain_repeats",)), ("loss", ("anatomy_cls",))):
        for key in keys:
            meta["chex"][section].pop(key)
    (old / "config.json").write_text(json.dumps({**meta, "format": 1}))
    cfg = ChEX.from_pretrained(old).cfg
    assert (cfg.detector.feature_norm, cfg.detector.projector_dropout, cfg.detector.box_text_fusion) == ("sum", False, "prompt")
    assert cfg.generator.pretrain_repeats == 1 and cfg.loss.anatomy_cls == "per_positive"
    assert ChEX.from_pretrained(tiny_model_dir).cfg.detector.box_text_fusion == "decoded"  # format 2 as written
