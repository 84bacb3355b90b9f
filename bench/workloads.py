"""The timed workloads shared by bench/model.py (CPU) and bench/gpu.py: the model built as training builds it, the
stage-1 and generation losses of one training step, and the query / report calls with every token generated."""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator

import torch

ANATOMY = ["Right lung", "Left lung", "Right upper lung zone", "Right mid lung zone", "Right lower lung zone",
           "Left upper lung zone", "Left mid lung zone", "Left lower lung zone", "Right hilar structures",
           "Left hilar structures", "Right apical zone", "Left apical zone", "Right costophrenic angle",
           "Left costophrenic angle", "Trachea", "Spine", "Mediastinum", "Cardiac silhouette", "Carina", "Abdomen"]
SENTENCE = "There is a moderate right pleural effusion with adjacent compressive atelectasis of the lower lobe."
TOKENS = 20  # generated per sentence, as in the reference's measurements


def median_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def build(preset_name: str, device: str = "cpu"):
    """A randomly initialised ChEX of ``preset_name`` exactly as ``ChEX.build`` makes it for training (GPT-2's output
    layer tied to its embedding), on ``device``."""
    from chex_model.chex import ChEX
    from chex_model.config import preset

    torch.manual_seed(0)
    with torch.device(device):
        return ChEX.build(preset(preset_name))


def detect_loss(model, images: torch.Tensor) -> torch.Tensor:
    """Stage 1: image encoder + detector on 20 anatomy prompts per image, L1 + gIoU + score loss on anatomy boxes."""
    from chex_model import losses
    from chex_model.image_encoder import normalize

    n = images.shape[0]
    gen = torch.Generator().manual_seed(0)
    targets = (torch.rand(n, len(ANATOMY), 1, 4, generator=gen) * 0.4 + 0.3).to(images.device)
    tmask = torch.ones(n, len(ANATOMY), 1, dtype=torch.bool, device=images.device)
    feats = model.encode_image(normalize(images, model.cfg.image))
    det = model.detect(feats, model.encode_prompts(ANATOMY), post_decoder=False)
    out = losses.detection_losses(det.boxes, det.box_scores, targets, tmask, tmask[..., 0], model.cfg.loss).terms
    return 5 * out["l1"] + 2 * out["giou"] + out["score"]


def generation_texts(n: int = 8, words: int = 20) -> list[str]:
    """``n`` sentences of ``words`` words (the reference's generation row: 8 x 20 words, 176 GPT-2 tokens)."""
    pool = (SENTENCE + " " + SENTENCE).split()
    return [" ".join(pool[i: i + words]) for i in range(n)]


def generate_loss(model, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """Stage 3: post decoder + prefix MLP + GPT-2 on ``len(texts)`` sentences, 4 boxes on each of 2 images."""
    from chex_model.image_encoder import normalize

    feats = model.encode_image(normalize(images[:2], model.cfg.image))
    boxes = torch.rand(2, len(texts) // 2, 4, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.35
    rois = model.encode_boxes(feats, boxes.to(images.device)).flatten(0, 1)
    return model.generator.loss(rois, texts)


def freeze_for(model, workload: str, preset_name: str) -> list[torch.nn.Parameter]:
    """The reference's trainable set for ``workload`` ("detect": top ViT blocks + detector; "generate": all but the
    image encoder and detector); returns those parameters."""
    if workload == "detect":
        model.image_encoder.freeze(9 if preset_name != "tiny" else 1, True)
        return [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(("image_encoder", "detector"))]
    model.image_encoder.freeze_all()
    model.detector.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def reference_texts(model, n: int = 8, tokens: int = 176) -> list[str]:
    """``n`` sentences whose training targets total about ``tokens`` GPT-2 tokens with this model's tokenizer (the
    reference's row: 8 sentences x 20 words = 176 tokens with GPT-2's own; a tokenizer without its merges splits
    words further, so the word count is chosen by tokens)."""
    return min((generation_texts(n, w) for w in range(1, 41)), key=lambda t: abs(target_tokens(model, t) - tokens))


def target_tokens(model, texts: list[str]) -> int:
    """GPT-2 tokens the generation step is trained on (``bos + sentence + eos`` per text)."""
    return int(model.generator.encode_targets(texts)[1].sum())


@contextlib.contextmanager
def every_token(model) -> Iterator[None]:
    """Generation never stops early (no end-of-text), so every query really decodes its ``TOKENS`` tokens."""
    eos = model.generator.eos_id
    model.generator.eos_id = -1
    try:
        yield
    finally:
        model.generator.eos_id = eos


def full_report_prompts():
    """The reference's 29-query report with every anatomy query kept: all 29 sentences are generated."""
    from chex_model.prompts import load_prompt_set

    ps = load_prompt_set("reference")
    return dataclasses.replace(ps, positivity=dataclasses.replace(ps.positivity, threshold=-1.0))
