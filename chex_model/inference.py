"""Interactive use: text, box and box + text queries against one X-ray, and full grounded reports.

Boxes in and out are normalized (cx, cy, w, h) of the image *as given*; internally the model sees the centre square
crop, and boxes are mapped to and from it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from chex_model.box_input import validate_box
from chex_model.image_encoder import encoder_input
from chex_model.precision import autocast_for
from chex_model.presence import pair_key, paired_margin, positivity_key
from chex_model.prompts import PromptSet, load_prompt_set, negative
from preprocessing.box_geometry import crop_frame
from preprocessing.image_io import load_resized, resize_center_crop



@dataclass
class PreparedImage:
    square: np.ndarray  # uint8 (S, S): what the model sees, as ingest stores it
    original: np.ndarray  # uint8 as decoded, for drawing (a file may decode at a reduced, aspect-true scale)
    width: int
    height: int

    def _frame(self) -> tuple[float, float, float]:
        return crop_frame(float(self.width), float(self.height))

    def to_crop(self, boxes: Tensor) -> Tensor:
        """Image-normalized (cx, cy, w, h) -> crop-normalized."""
        x0, y0, side = self._frame()
        cx, cy, w, h = boxes.unbind(-1)
        return torch.stack(((cx * self.width - x0) / side, (cy * self.height - y0) / side,
                            w * self.width / side, h * self.height / side), dim=-1)

    def from_crop(self, boxes: Tensor) -> Tensor:
        x0, y0, side = self._frame()
        cx, cy, w, h = boxes.unbind(-1)
        return torch.stack(((cx * side + x0) / self.width, (cy * side + y0) / self.height,
                            w * side / self.width, h * side / self.height), dim=-1)


ImageInput = str | Path | np.ndarray | Image.Image | Tensor | PreparedImage


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        image = image.mean(-1) if image.shape[-1] in (3, 4) else image[..., 0]
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    arr = image.astype(np.float32)
    if arr.min() >= 0 and arr.max() <= 1:
        return (arr * 255).round().astype(np.uint8)
    lo, hi = float(arr.min()), float(arr.max())
    return ((arr - lo) / max(hi - lo, 1e-6) * 255).round().astype(np.uint8)


def prepare_image(image: ImageInput, size: int) -> PreparedImage:
    """A path (JPEG, PNG, DICOM), PIL image, array or tensor -> the model's centre-cropped ``size`` square.

    A file goes through :func:`preprocessing.image_io.load_resized`, the function ingest stores images with, so a
    query sees exactly the pixels training saw (DICOMs equalized, as the ingest default).
    """
    if isinstance(image, PreparedImage) and image.square.shape == (size, size):
        return image
    if isinstance(image, PreparedImage):
        image = image.original
    if isinstance(image, (str, Path)):
        loaded = load_resized(image, size, equalize_dicom=True)
        return PreparedImage(loaded.pixels, loaded.decoded, loaded.width, loaded.height)
    if isinstance(image, Image.Image):
        gray = np.asarray(image.convert("L"))
    elif isinstance(image, Tensor):
        gray = _to_uint8(image.detach().cpu().squeeze().numpy())
    else:
        gray = _to_uint8(np.asarray(image))
    h, w = gray.shape
    return PreparedImage(resize_center_crop(gray, size), gray, w, h)


@dataclass
class QueryResult:
    """One answered query. ``boxes``/``box_scores``: the detector's M boxes (a box query: the given box only)."""

    prompt: str | None
    query_box: list[float] | None
    box: list[float]
    score: float | None
    boxes: list[list[float]]
    box_scores: list[float]
    sentence: str
    probabilities: dict[str, float] = field(default_factory=dict)
    presence: float | None = None  # calibrated P(present) of a text prompt the model has calibrated against "No <prompt>"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ReportSentence:
    query: str
    kind: str  # "pathology" | "anatomy"
    sentence: str
    box: list[float]
    score: float
    abnormal: float  # P(abnormal) of the query's ROI token (P(present) for a classified pathology query)
    finding: bool = True  # False: a statement of absence from a pathology query classified absent (its box shows
    # where the model looked, not a finding)


@dataclass
class Report:
    sentences: list[ReportSentence]
    undetermined: list[str] = field(default_factory=list)  # pathology queries the model could call neither way

    @property
    def text(self) -> str:
        return " ".join(s.sentence for s in self.sentences)

    def to_dict(self) -> dict:
        return {"text": self.text, "sentences": [asdict(s) for s in self.sentences], "undetermined": self.undetermined}


@contextlib.contextmanager
def inference_context(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode, no autograd, and the model's precision autocast; training mode is restored after."""
    was = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast_for(model):
            yield
    finally:
        model.train(was)


def _rounded(t: Tensor) -> list:
    return np.round(t.detach().cpu().double().numpy(), 4).tolist()


def encode_images(model, preps: Sequence[PreparedImage]) -> list:
    """One encoder pass over several prepared images -> each image's features (a batch of one each)."""
    feats = model.encode_image(encoder_input([p.square for p in preps], model.image_encoder.image_size, model.cfg.image,
                                             model.device))
    return [replace(feats, patches=feats.patches[i: i + 1], global_token=feats.global_token[i: i + 1])
            for i in range(len(preps))]


@dataclass
class QueryPlan:
    """A query grounded on its image: the results without sentences, and one ROI token per result to describe."""

    results: list[QueryResult]
    features: Tensor  # (len(results), d)


def ground_query(
    model, feats, prep: PreparedImage, prompts: Sequence[str] = (), boxes: Sequence[Sequence[float]] = (),
    box_prompts: Sequence[tuple[Sequence[float], str]] = (), classes: Sequence[tuple[str, str]] = (),
) -> QueryPlan:
    """Everything of :func:`query` before the language model (call inside :func:`inference_context`)."""
    all_boxes = [validate_box(b) for b in boxes] + [validate_box(b) for b, _ in box_prompts]
    if not prompts and not all_boxes:
        raise ValueError("give at least one prompt or box")
    results: list[QueryResult] = []
    features = []
    if prompts:
        det = model.detect(feats, model.encode_prompts(list(prompts))[None])
        features.append(det.features[0])
        negatives = [negative(t) for t in prompts]
        presence = model.presence(det.detector_features[0], list(prompts), negatives).tolist()
        for i, text in enumerate(prompts):
            calibrated = pair_key(text, negatives[i]) in model.presence_calibration
            results.append(QueryResult(
                text, None, _rounded(prep.from_crop(det.box[0, i])), round(float(det.score[0, i]), 4),
                _rounded(prep.from_crop(det.boxes[0, i])), _rounded(det.box_scores[0, i]), "",
                presence=round(presence[i], 4) if calibrated else None,
            ))
    if all_boxes:
        texts = [""] * len(boxes) + [t for _, t in box_prompts]
        features.append(_box_features(model, feats, prep, all_boxes, texts))
        results += [QueryResult(text or None, list(b), list(b), None, [list(b)], [], "") for b, text in zip(all_boxes, texts)]
    feat = torch.cat(features)
    if classes:
        probs = model.classify(feat, model.encode_prompts([p for p, _ in classes]), model.encode_prompts([n for _, n in classes]))
        for r, row in zip(results, probs.tolist()):
            r.probabilities = {pos: round(p, 4) for (pos, _), p in zip(classes, row)}
    return QueryPlan(results, feat)


def _box_features(model, feats, prep: PreparedImage, boxes: list, texts: list[str]) -> Tensor:
    """ROI tokens of given image-normalized boxes, each fused with its text where it has one."""
    dev = model.device
    crop = prep.to_crop(torch.tensor(boxes, dtype=torch.float32, device=dev))[None]
    has_prompt = torch.tensor([bool(t) for t in texts], device=dev)[None]
    tokens = torch.zeros(1, len(texts), model.cfg.d_model, device=dev)
    with_text = [i for i, t in enumerate(texts) if t]
    if with_text:
        tokens[0, with_text] = model.encode_prompts([texts[i] for i in with_text]).to(tokens.dtype)
    return model.encode_boxes(feats, crop, prompts=tokens, has_prompt=has_prompt)[0]


def finish_query(plan: QueryPlan, sentences: Sequence[str]) -> list[QueryResult]:
    for r, sentence in zip(plan.results, sentences):
        r.sentence = sentence
    return plan.results


def query(
    model, image: ImageInput, prompts: Sequence[str] = (), boxes: Sequence[Sequence[float]] = (),
    box_prompts: Sequence[tuple[Sequence[float], str]] = (), classes: Sequence[tuple[str, str]] = (),
    max_new_tokens: int | None = None, num_beams: int = 1,
) -> list[QueryResult]:
    """Answer text queries (detector), box queries (ROI pooling of the box) and box + text queries (the box's ROI
    token fused with the prompt token), all in one batch; results come back in that order. ``classes`` are
    (positive, negative) prompt pairs each result is scored against. A text prompt the model has calibrated against
    its "No ..." form (the report's pathology queries) also gets its ``presence``: the sentence describes what the
    prompt asks for, the presence says whether it is there."""
    for b in [*boxes, *(b for b, _ in box_prompts)]:
        validate_box(b)  # a bad box fails before the image is decoded
    if not prompts and not boxes and not box_prompts:
        raise ValueError("give at least one prompt or box")
    prep = prepare_image(image, model.image_encoder.image_size)
    with inference_context(model):
        plan = ground_query(model, encode_images(model, [prep])[0], prep, prompts, boxes, box_prompts, classes)
        return finish_query(plan, model.generate(plan.features, max_new_tokens, num_beams))


def remove_near_duplicates(similarity: np.ndarray, weights: Sequence[float], strict: float, loose: float, max_kept: int) -> list[int]:
    """Indices kept after repeatedly dropping the lower-weight sentence of the most similar pair while that pair's
    similarity is >= ``strict``, or >= ``loose`` while more than ``max_kept`` sentences remain."""
    kept = list(range(len(weights)))
    while len(kept) > 1:
        sub = similarity[np.ix_(kept, kept)].astype(np.float64)
        np.fill_diagonal(sub, -np.inf)
        i, j = np.unravel_index(np.argmax(sub), sub.shape)
        best = sub[i, j]
        if not (best >= strict or (best >= loose and len(kept) > max_kept)):
            break
        a, b = kept[i], kept[j]
        kept.remove(a if weights[a] < weights[b] else b)
    return kept


@dataclass
class ReportPlan:
    """A report grounded on its image: which queries get a sentence, from which ROI token, and what scores them."""

    prompt_set: PromptSet
    prep: PreparedImage
    keep: list[int]  # query indices that get a sentence
    features: Tensor  # (len(keep), d)
    box: Tensor  # (Q, 4) crop-normalized
    score: Tensor  # (Q,)
    abnormal: Tensor  # (Q,)
    absent: list[bool]  # per pathology query: classified absent (its sentence states the absence)
    told: list[bool]  # per pathology query: called either way


def plan_report(model, feats, prep: PreparedImage, ps: PromptSet) -> ReportPlan:
    """Everything of :func:`report` before the language model (call inside :func:`inference_context`)."""
    queries = ps.pathology + ps.anatomy
    n_patho, gated = len(ps.pathology), bool(ps.pathology_negative)
    det = model.detect(feats, model.encode_prompts(queries + ps.pathology_negative)[None])
    feat = det.features[0, : len(queries)].clone()
    abnormal = torch.ones(len(queries), device=feat.device)
    if ps.anatomy:
        pos = model.encode_prompts(ps.positivity.positive).mean(0, keepdim=True)
        neg = model.encode_prompts(ps.positivity.negative).mean(0, keepdim=True)
        margin = paired_margin(det.detector_features[0, n_patho: len(queries)], pos.expand(len(ps.anatomy), -1),
                               neg.expand(len(ps.anatomy), -1))
        keys = [pair_key(q, positivity_key(ps.positivity.positive, ps.positivity.negative)) if ps.calibrated else ""
                for q in ps.anatomy]
        abnormal[n_patho:] = model.calibrated(margin, keys, model.classify(feat[n_patho:], pos, neg)[:, 0])
    told, absent = [True] * n_patho, [False] * n_patho
    if gated:
        p = model.presence(det.detector_features[0, :n_patho], ps.pathology, ps.pathology_negative)
        abnormal[:n_patho] = p
        is_absent, present = p < ps.pathology_absent_below, p >= ps.pathology_threshold
        if ps.normal_query:  # "no finding" cannot be said while a finding is not ruled out
            j = ps.pathology.index(ps.normal_query)
            present[j] &= bool(torch.cat((is_absent[:j], is_absent[j + 1:])).all())
        feat[:n_patho][is_absent] = det.features[0, len(queries):][is_absent]
        told, absent = (is_absent | present).tolist(), is_absent.tolist()
    keep = [i for i in range(n_patho) if told[i]] + [i for i in range(n_patho, len(queries)) if abnormal[i] >= ps.positivity.threshold]
    return ReportPlan(ps, prep, keep, feat[keep], det.box[0], det.score[0], abnormal, absent, told)


def finish_report(model, plan: ReportPlan, sentences: Sequence[str]) -> Report:
    """The plan's sentences, near duplicates removed (CLIP-text similarity), each with its box."""
    ps = plan.prompt_set
    queries = ps.pathology + ps.anatomy
    n_patho = len(ps.pathology)
    pairs = [(i, s) for i, s in zip(plan.keep, sentences) if s]
    if len(pairs) > 1:
        emb = F.normalize(model.encode_prompts([s for _, s in pairs]), dim=-1)
        sim = ((emb @ emb.T + 1) / 2).float().cpu().numpy()
        weights = [float(plan.score[i]) for i, _ in pairs]
        pairs = [pairs[k] for k in remove_near_duplicates(sim, weights, ps.dedup.strict, ps.dedup.loose, ps.dedup.max_sentences)]
    out = [
        ReportSentence(queries[i], "pathology" if i < n_patho else "anatomy", s,
                       _rounded(plan.prep.from_crop(plan.box[i])), round(float(plan.score[i]), 4),
                       round(float(plan.abnormal[i]), 4), not (i < n_patho and plan.absent[i]))
        for i, s in pairs
    ]
    return Report(out, [q for q, t in zip(ps.pathology, plan.told) if not t])


def report(model, image: ImageInput, prompt_set: PromptSet | str | Path = "report", max_new_tokens: int | None = None,
           num_beams: int = 1) -> Report:
    """A grounded report: every pathology query, the anatomy queries classified abnormal, one sentence each, near
    duplicates removed (CLIP-text similarity), each sentence with its box.

    Where the prompt set gives the pathology queries' negatives, each is classified against its own negative on the
    detector's ROI token (:meth:`ChEX.presence`), and one classified absent is decoded from its negative prompt's
    token, so its sentence (if any) states the absence; one the model cannot call either way is left out;
    ``abnormal`` then holds the query's presence probability.
    Anatomy queries use the model's calibrated abnormality where it has one (fitted after training,
    :mod:`pipelines.training.calibrate`) and the prompt set allows it, else the reference's positivity on the
    post-decoded token. A prompt set without ``pathology_negative`` and with ``calibrated: false`` (the packaged
    ``reference`` set) is the reference's policy exactly."""
    ps = prompt_set if isinstance(prompt_set, PromptSet) else load_prompt_set(prompt_set)
    prep = prepare_image(image, model.image_encoder.image_size)
    with inference_context(model):
        plan = plan_report(model, encode_images(model, [prep])[0], prep, ps)
        sentences = model.generate(plan.features, max_new_tokens, num_beams) if plan.keep else []
        return finish_report(model, plan, sentences)
