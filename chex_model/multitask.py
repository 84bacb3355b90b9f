"""One multitask step: run the model on a batch with pathology, anatomy and sentence targets and return every loss
term by name (unweighted, DETR ``SetCriterion`` style). Which terms a training stage uses, and with what weight, is
the trainer's business."""
from __future__ import annotations

from dataclasses import dataclass

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
    frozen CLIP embedding under dropout, so the prefix learns to read the shared space before it sees ROI tokens."""
    flat = [s for row in sentences for s in row]
    if not flat:
        return {}
    emb = model.encode_prompts(flat).detach()
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
    out.update({f"patho_box_{k}": v for k, v in d.items()})
    if det.reference_logits is not None:
        out["patho_ground"] = losses.grounding_loss(det.reference_logits, t.boxes, t.box_mask, supervised,
                                                    feats.patches.shape[1:3])
    known = t.labels >= 0
    if known.any():
        n_cls = len(t.positive)
        cls_idx = torch.arange(n_cls, device=known.device).expand_as(t.labels)
        target = torch.where(t.labels == 1, cls_idx, cls_idx + n_cls)[known]
        out["patho_cls"] = losses.pathology_infonce(det.features[known], target, pos, neg, cfg.pathology_temperature)
    return out


def _anatomy_losses(model: nn.Module, feats, t, region_encoding: str, generate: bool, cfg) -> dict[str, Tensor]:
    """Anatomy boxes, region classification, and the regions' phrases (embedding MSE and generation)."""
    out: dict[str, Tensor] = {}
    if region_encoding == "prompts":
        det = model.detect(feats, model.encode_prompts(t.prompts))
        d = losses.detection_losses(
            det.boxes, det.box_scores, t.boxes[:, :, None], t.present[:, :, None], torch.ones_like(t.present), cfg
        )
        out.update({f"anat_box_{k}": v for k, v in d.items()})
        if det.reference_logits is not None:
            out["anat_ground"] = losses.grounding_loss(
                det.reference_logits, t.boxes[:, :, None], t.present[:, :, None], torch.ones_like(t.present),
                feats.patches.shape[1:3],
            )
        features = det.features
    elif region_encoding == "boxes":
        features = model.encode_boxes(feats, t.boxes, t.present)
    else:
        raise ValueError(f"region_encoding must be 'prompts' or 'boxes', got {region_encoding!r}")
    rows = t.present & (t.labels >= 0).any(-1)
    if rows.any():
        out["anat_cls"] = losses.anatomy_infonce(
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


def _sentence_losses(model: nn.Module, feats, sentences: list[list[str]], generate: bool, cfg) -> dict[str, Tensor]:
    """Report sentences as prompts: region-sentence and image-report contrast, embedding MSE, generation."""
    out: dict[str, Tensor] = {}
    emb, mask = model.prompt_encoder.encode_padded(sentences)
    det = model.detect(feats, emb, mask)
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


def multitask_losses(model: nn.Module, batch: Batch, region_encoding: str = "prompts", generate: bool = True) -> dict[str, Tensor]:
    """Every loss term of ``model`` (a :class:`~chex_model.chex.ChEX`) on ``batch``. ``region_encoding``: anatomy ROI
    tokens from the detector ("prompts") or from the ground-truth boxes ("boxes");
    "text" runs only the sentence-generator pre-training loss (no image)."""
    if region_encoding == "text":
        return text_pretrain_loss(model, batch.sentences or [])
    cfg = model.cfg.loss
    feats = model.encode_image(normalize(batch.images.to(model.device), model.cfg.image))
    out: dict[str, Tensor] = {}
    if batch.pathology is not None:
        out.update(_pathology_losses(model, feats, batch.pathology, cfg))
    if batch.anatomy is not None:
        out.update(_anatomy_losses(model, feats, batch.anatomy, region_encoding, generate, cfg))
    if batch.sentences is not None and any(batch.sentences):
        out.update(_sentence_losses(model, feats, batch.sentences, generate, cfg))
    if generate and batch.findings is not None:
        t = batch.findings
        features = model.detect(feats, model.encode_prompts(t.prompts + t.negatives)).features
        rois = features[t.image.to(features.device), t.query.to(features.device)]
        out["patho_gen"] = model.generator.loss(rois, t.texts)
    return out
