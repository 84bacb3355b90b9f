"""One multitask step: run the model on a batch with pathology, anatomy and sentence targets and return every loss
term by name (unweighted, DETR ``SetCriterion`` style). Which terms a training stage uses, and with what weight, is
the trainer's business."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from chex_model import losses
from chex_model.image_encoder import normalize


@dataclass
class PathologyTargets:
    """Class prompts shared by the batch (e.g. VinDr classes); boxes only where ``has_boxes``."""

    positive: list[str]  # C positive prompts, also the detection prompts
    negative: list[str]  # C "No X" prompts
    labels: Tensor  # (N, C) 1 present, 0 absent, -1 unknown
    boxes: Tensor  # (N, C, T, 4) cx, cy, w, h
    box_mask: Tensor  # (N, C, T)
    has_boxes: Tensor  # (N,) images whose boxes are annotated


@dataclass
class AnatomyTargets:
    prompts: list[str]  # A region prompts
    boxes: Tensor  # (N, A, 4)
    present: Tensor  # (N, A)
    labels: Tensor  # (N, A, F) 1 present, 0 absent, -1 unknown
    finding_positive: list[str]  # F
    finding_negative: list[str]  # F
    phrases: list[list[list[str]]]  # (N x A) the region's report phrases ([] = none)
    # multi-region prompts ("Bilateral", "Lung bases"): boxes only, matched to their member regions' boxes
    multi_prompts: list[str] = field(default_factory=list)  # K
    multi_boxes: Tensor | None = None  # (N, K, T, 4) the members' boxes
    multi_mask: Tensor | None = None  # (N, K, T) members present


@dataclass
class FindingTargets:
    """What each image's report says about chosen pathology queries (the `patho_gen` term, our addition), decoded
    from the post-decoded ROI tokens, as the full report decodes them."""

    prompts: list[str]  # K pathology query prompts
    negatives: list[str]  # K "No X" prompts, one per query
    image: Tensor  # (P,) image index of each target
    query: Tensor  # (P,) prompt of each target: k < K the query's own, K + k its negative
    texts: list[str]  # P target texts; "" = the report does not mention the query's condition


@dataclass
class Batch:
    images: Tensor  # (N, 1, S, S) in [0, 1]
    pathology: PathologyTargets | None = None
    anatomy: AnatomyTargets | None = None
    sentences: list[list[str]] | None = None  # report sentences per image
    findings: FindingTargets | None = None


def _prompt_class_probs(box_features: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """P(class) of each box from a softmax over its (unnormalized) dot products with the class's pos / neg prompt."""
    lp = (box_features * pos[None, :, None]).sum(-1)
    ln = (box_features * neg[None, :, None]).sum(-1)
    return torch.sigmoid(lp - ln)


def text_pretrain_loss(model: nn.Module, sentences: list[list[str]]) -> dict[str, Tensor]:
    """Sentence-generator pre-training (reference "txtgen" stage): each report sentence is generated from its own
    frozen CLIP embedding, repeated R ~ U{1..pretrain_repeats} times per step (each copy under its own dropout), so
    the prefix learns to read the shared space, from one token or several, before it sees ROI tokens."""
    flat = [s for row in sentences for s in row]
    if not flat:
        return {}
    emb = model.encode_prompts(flat).detach()[:, None]
    repeats = model.cfg.generator.pretrain_repeats
    if repeats > 1:
        emb = emb.expand(-1, int(torch.randint(1, repeats + 1, ())), -1)
    emb = torch.nn.functional.dropout(emb, model.cfg.generator.prefix_dropout, model.training)
    return {"text_gen": model.generator.loss(emb, flat)}


def _pathology_losses(model: nn.Module, feats, t, cfg) -> dict[str, Tensor]:
    """Finding boxes (VinDr) and pathology classification against each class's positive / negative prompt."""
    out: dict[str, Tensor] = {}
    pos, neg = model.encode_prompts(t.positive), model.encode_prompts(t.negative)
    det = model.detect(feats, pos, post_decoder=False)
    supervised = t.has_boxes.to(det.mask.device)[:, None] & (t.labels >= 0)
    cls_prob = _prompt_class_probs(det.box_features, pos, neg)
    d = losses.detection_losses(det.boxes, det.box_scores, t.boxes, t.box_mask, supervised, cfg, cls_prob)
    out.update({f"patho_box_{k}": v for k, v in d.terms.items()})
    if det.reference_logits is not None:
        out["patho_ground"] = _matched_grounding(det, d, feats)
    known = t.labels >= 0
    if known.any():
        n_cls = len(t.positive)
        cls_idx = torch.arange(n_cls, device=known.device).expand_as(t.labels)
        target = torch.where(t.labels == 1, cls_idx, cls_idx + n_cls)[known]
        out["patho_cls"] = losses.pathology_infonce(det.features[known], target, pos, neg, cfg.pathology_temperature)
    return out


def anatomy_box_targets(t: AnatomyTargets) -> tuple[Tensor, Tensor, Tensor]:
    """Targets of the single-region prompts (their box) followed by the multi-region prompts (their members' boxes):
    boxes ``(N, A + K, T, 4)``, mask ``(N, A + K, T)``, and ``(A + K,)`` True for the multi-region prompts."""
    single, mask = t.boxes[:, :, None], t.present[:, :, None]
    a, k = len(t.prompts), len(t.multi_prompts)
    flags = torch.arange(a + k, device=single.device) >= a
    if not k:
        return single, mask, flags
    pad = max(1, t.multi_boxes.shape[2]) - 1
    single = torch.cat((single, single.new_zeros(*single.shape[:2], pad, 4)), dim=2)
    mask = torch.cat((mask, mask.new_zeros(*mask.shape[:2], pad)), dim=2)
    return torch.cat((single, t.multi_boxes.to(single)), 1), torch.cat((mask, t.multi_mask.to(mask)), 1), flags


def _anatomy_detection(model: nn.Module, feats, t: AnatomyTargets, post_decoder: bool, cfg) -> tuple[Tensor, dict[str, Tensor]]:
    """Anatomy box losses of the single- and multi-region prompts (one detector pass), and the single regions' ROI
    tokens."""
    det = model.detect(feats, model.encode_prompts(t.prompts + t.multi_prompts), post_decoder=post_decoder)
    targets, mask, multi = anatomy_box_targets(t)
    every = torch.ones(mask.shape[:2], dtype=torch.bool, device=mask.device)
    d = losses.detection_losses(det.boxes, det.box_scores, targets, mask, every, cfg, mean_per_prompt=multi)
    out = {f"anat_box_{k}": v for k, v in d.terms.items()}
    if det.reference_logits is not None:
        out["anat_ground"] = _matched_grounding(det, d, feats)
    return det.features[:, : len(t.prompts)], out


def _matched_grounding(det, d: losses.BoxLosses, feats) -> Tensor:
    """Each box query's reference map pulled into the target box it was matched to (so the M queries of a prompt
    with several targets, e.g. both lungs, spread over them rather than all finding the same one)."""
    n, q, m, cells = det.reference_logits.shape
    return losses.grounding_loss(det.reference_logits.reshape(n, q * m, 1, cells), *d.per_box_targets(),
                                 feats.patches.shape[1:3])


def _anatomy_losses(model: nn.Module, feats, t, region_encoding: str, generate: bool, cfg, post_decoder: bool = True) -> dict[str, Tensor]:
    """Anatomy boxes, region classification, and the regions' phrases (embedding MSE and generation)."""
    out: dict[str, Tensor] = {}
    if region_encoding == "prompts":
        features, box_losses = _anatomy_detection(model, feats, t, post_decoder, cfg)
        out.update(box_losses)
    elif region_encoding == "boxes":
        features = model.encode_boxes(feats, t.boxes, t.present, post_decoder=post_decoder)
    else:
        raise ValueError(f"region_encoding must be 'prompts' or 'boxes', got {region_encoding!r}")
    rows = t.present & (t.labels >= 0).any(-1)
    if rows.any():
        infonce = losses.anatomy_infonce_reference if cfg.anatomy_cls == "reference" else losses.anatomy_infonce
        out["anat_cls"] = infonce(
            features[rows], t.labels[rows], model.encode_prompts(t.finding_positive),
            model.encode_prompts(t.finding_negative), cfg.anatomy_temperature, cfg.anatomy_negatives,
        )
    described = [(n, a) for n, row in enumerate(t.phrases) for a, ph in enumerate(row) if ph and t.present[n, a]]
    if described:
        idx = torch.tensor(described, device=features.device)
        rois = features[idx[:, 0], idx[:, 1]]
        phrase_means = torch.stack([model.encode_prompts(t.phrases[n][a]).mean(0) for n, a in described])
        out["anat_mse"] = losses.squared_error(rois, phrase_means)
        if generate:
            out["anat_gen"] = model.generator.loss(rois, [" ".join(t.phrases[n][a]) for n, a in described])
    return out


def _sentence_losses(model: nn.Module, feats, sentences: list[list[str]], generate: bool, cfg,
                     post_decoder: bool = True) -> dict[str, Tensor]:
    """Report sentences as prompts: region-sentence and image-report contrast, embedding MSE, generation."""
    out: dict[str, Tensor] = {}
    emb, mask = model.prompt_encoder.encode_padded(sentences)
    det = model.detect(feats, emb, mask, post_decoder=post_decoder)
    region, sent = det.features[mask], emb[mask]
    flat = [s for row in sentences for s in row]
    ids = {s: i for i, s in enumerate(dict.fromkeys(flat))}
    key = torch.tensor([ids[s] for s in flat], device=region.device)
    out["sent_contr"] = losses.contrastive(region, sent, cfg.sentence_temperature, same=key[:, None] == key[None, :])
    out["sent_mse"] = losses.squared_error(region, sent)
    has = mask.any(-1)
    if has.sum() > 1:
        text_mean = (emb * mask[..., None]).sum(1)[has] / mask.sum(1, keepdim=True)[has]
        out["global_contr"] = losses.contrastive(
            feats.patches.mean((1, 2))[has], text_mean, cfg.global_temperature, symmetric=True
        )
    if generate:
        out["sent_gen"] = model.generator.loss(region, flat)
    return out


def multitask_losses(model: nn.Module, batch: Batch, region_encoding: str = "prompts", generate: bool = True,
                     post_decoder: bool = True) -> dict[str, Tensor]:
    """Every loss term of ``model`` (a :class:`~chex_model.chex.ChEX`) on ``batch``. ``region_encoding``: anatomy ROI
    tokens from the detector ("prompts") or from the ground-truth boxes ("boxes");
    "text" runs only the sentence-generator pre-training loss (no image). ``post_decoder`` False: anatomy and
    sentence ROI tokens straight from the detector (the reference's stage 1 has no post decoder)."""
    if region_encoding == "text":
        return text_pretrain_loss(model, batch.sentences or [])
    cfg = model.cfg.loss
    feats = model.encode_image(normalize(batch.images.to(model.device), model.cfg.image))
    out: dict[str, Tensor] = {}
    if batch.pathology is not None:
        out.update(_pathology_losses(model, feats, batch.pathology, cfg))
    if batch.anatomy is not None:
        out.update(_anatomy_losses(model, feats, batch.anatomy, region_encoding, generate, cfg, post_decoder))
    if batch.sentences is not None and any(batch.sentences):
        out.update(_sentence_losses(model, feats, batch.sentences, generate, cfg, post_decoder))
    if generate and batch.findings is not None:
        t = batch.findings
        features = model.detect(feats, model.encode_prompts(t.prompts + t.negatives), post_decoder=post_decoder).features
        rois = features[t.image.to(features.device), t.query.to(features.device)]
        out["patho_gen"] = model.generator.loss(rois, t.texts)
    return out
