"""ChEX: image encoder + prompt encoder + prompt detector + post decoder + sentence generator, and its checkpoints."""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_file
from torch import Tensor, nn
from transformers import (
    AutoTokenizer,
    CLIPConfig,
    CLIPTextModelWithProjection,
    CLIPVisionModelWithProjection,
    GPT2Config,
    GPT2LMHeadModel,
)
from transformers.initialization import no_init_weights

from chex_model import box_ops
from chex_model.backbones import Backbones, load_backbones, load_conv_branch, random_backbones, train_tokenizers
from chex_model.checkpoint import (
    CLIP_DIR,
    CONFIG_FILE,
    FORMAT_VERSION,
    LM_DIR,
    WEIGHTS_FILE,
    CheckpointError,
    load_errors,
    read_config,
)
from chex_model.config import ChexConfig
from chex_model.detector import Detections, PromptDetector
from chex_model.generator import SentenceGenerator
from chex_model.image_encoder import ImageEncoder
from chex_model.multitask import multitask_losses
from chex_model.post_decoder import PostDecoder
from chex_model.presence import CALIBRATION_FILE, pair_key, paired_margin
from chex_model.prompt_encoder import PromptEncoder


@dataclass
class ImageFeatures:
    patches: Tensor  # (N, h, w, d)
    pos: Tensor  # (h, w, d)
    global_token: Tensor  # (N, d)


def _shared_names(model: nn.Module) -> set[str]:
    """Names of tensors that share storage with another (tied embeddings): safetensors stores each only once."""
    seen: dict[int, str] = {}
    shared: set[str] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        ptr = tensor.data_ptr()
        if ptr in seen:
            shared |= {name, seen[ptr]}
        seen[ptr] = name
    return shared


ANCHOR = "anchor"  # the zero loss term of ChEX.forward that touches every trainable parameter


def _unique_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each tied tensor once, every tensor an own contiguous copy: engines such as DeepSpeed ZeRO
    turn parameters into views of one flat buffer, which safetensors would refuse to save."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().clone().contiguous()
    return out


class ChEX(nn.Module):
    def __init__(self, cfg: ChexConfig, backbones: Backbones) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        for name, dim in (("vision", backbones.vision.config.projection_dim), ("text", backbones.text.config.projection_dim)):
            if dim != d:
                raise ValueError(f"CLIP {name} projection is {dim}-d but d_model is {d}")
        self.image_encoder = ImageEncoder(backbones.vision, cfg.image)
        self.prompt_encoder = PromptEncoder(backbones.text, backbones.clip_tokenizer, cfg.prompt_cache_size, cfg.prompt_encode_chunk)
        self.detector = PromptDetector(d, cfg.detector, cfg.dropout)
        self.post_decoder = PostDecoder(d, cfg.post_decoder, cfg.detector, cfg.dropout)
        self.generator = SentenceGenerator(backbones.lm, backbones.lm_tokenizer, d, cfg.generator)
        # pair_key(pos, neg) -> (scale, shift) of the presence margin (chex_model/presence.py), fitted after training
        self.presence_calibration: dict[str, tuple[float, float]] = {}

    # ---- construction and checkpoints -------------------------------------------------------------------------
    @classmethod
    def build(
        cls, cfg: ChexConfig, clip_dir: Path | None = None, lm_dir: Path | None = None, corpus: Iterable[str] | None = None,
    ) -> "ChEX":
        """From pretrained CLIP / GPT-2 folders when both are given, else random backbones of ``cfg``'s geometry with
        tokenizers trained on ``corpus`` (default: the synthetic report vocabulary)."""
        if (clip_dir is None) != (lm_dir is None):
            raise ValueError("give both clip_dir and lm_dir, or neither")
        if clip_dir is not None and lm_dir is not None:
            model = cls(cfg, load_backbones(clip_dir, lm_dir))
            conv = load_conv_branch(clip_dir, cfg.image.conv_widths, cfg.d_model) if cfg.image.conv_widths else None
            if conv is not None:  # pre-trained with the ViT (chex_model/pretraining.py)
                model.image_encoder.conv.load_state_dict(conv.state_dict())
            return model
        if corpus is None:
            from chex_model.corpus import default_corpus

            corpus = default_corpus()
        clip_tok, lm_tok = train_tokenizers(corpus, min(cfg.clip.text_vocab, cfg.lm.vocab_size))
        return cls(cfg, random_backbones(cfg, clip_tok, lm_tok))

    def save_pretrained(self, directory: Path | str) -> None:
        """``config.json`` + ``model.safetensors`` + the backbones' configs and tokenizers (``clip/``, ``lm/``)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        clip = CLIPConfig(
            text_config=self.prompt_encoder.text.config.to_dict(), vision_config=self.image_encoder.clip.config.to_dict(),
            projection_dim=self.cfg.d_model,
        )
        clip.save_pretrained(out / CLIP_DIR)
        self.prompt_encoder.tokenizer.save_pretrained(out / CLIP_DIR)
        self.generator.lm.config.save_pretrained(out / LM_DIR)
        self.generator.tokenizer.save_pretrained(out / LM_DIR)
        (out / CONFIG_FILE).write_text(json.dumps({"format": FORMAT_VERSION, "chex": self.cfg.to_dict()}, indent=2))
        save_file(_unique_tensors(self), str(out / WEIGHTS_FILE), metadata={"format": "pt", "chex_format": str(FORMAT_VERSION)})
        self.save_calibration(out)

    @classmethod
    def from_pretrained(cls, directory: Path | str, device: str | torch.device = "cpu") -> "ChEX":
        """Load a checkpoint written by :meth:`save_pretrained` (safetensors only; nothing is unpickled).

        Raises :class:`~chex_model.checkpoint.CheckpointError`, one line naming the folder and the problem, for
        every malformed folder: missing parts, config not JSON or of another format, weights that are not
        safetensors or do not fit the config.
        """
        src = Path(directory)
        cfg = read_config(src)
        with load_errors(src, f"{CLIP_DIR}/ or {LM_DIR}/"), no_init_weights():
            clip = CLIPConfig.from_pretrained(src / CLIP_DIR)
            backbones = Backbones(
                CLIPVisionModelWithProjection(clip.vision_config), CLIPTextModelWithProjection(clip.text_config),
                AutoTokenizer.from_pretrained(src / CLIP_DIR), GPT2LMHeadModel(GPT2Config.from_pretrained(src / LM_DIR)),
                AutoTokenizer.from_pretrained(src / LM_DIR),
            )
        with load_errors(src, "the model config"):
            model = cls(cfg, backbones)
        model.generator.lm.tie_weights()  # before loading: safetensors keeps one name of the tied pair
        with load_errors(src, f"{WEIGHTS_FILE} does not fit the config"):
            missing, unexpected = load_model(model, str(src / WEIGHTS_FILE), strict=False, device=str(device))
        untied = sorted(set(missing) - _shared_names(model))
        if untied or unexpected:
            raise CheckpointError(src, f"{WEIGHTS_FILE} does not fit the config (missing {untied[:5]}, "
                                       f"unexpected {unexpected[:5]})")
        if (src / CALIBRATION_FILE).is_file():
            with load_errors(src, CALIBRATION_FILE):
                model.presence_calibration = {k: (float(a), float(b)) for k, (a, b)
                                              in json.loads((src / CALIBRATION_FILE).read_text()).items()}
        return model.to(device).eval()

    @property
    def device(self) -> torch.device:
        return self.detector.region_tokens.device

    # ---- building blocks --------------------------------------------------------------------------------------
    def encode_image(self, images: Tensor) -> ImageFeatures:
        """Normalized grayscale images ``(N, 1, S, S)`` -> patch, position and global features."""
        patches, pos, glob = self.image_encoder(images)
        return ImageFeatures(patches, pos, glob)

    def encode_prompts(self, texts: Sequence[str]) -> Tensor:
        return self.prompt_encoder.encode(texts)

    def detect(self, feats: ImageFeatures, prompts: Tensor, mask: Tensor | None = None, post_decoder: bool = True) -> Detections:
        """Prompt tokens ``(Q, d)`` (shared by all images) or ``(N, Q, d)`` -> detections; ``features`` are the ROI
        tokens, refined by the post decoder when ``post_decoder`` (boxes and box scores never change; the unrefined
        tokens stay in ``detector_features``)."""
        n = feats.patches.shape[0]
        if prompts.dim() == 2:
            prompts = prompts.expand(n, -1, -1)
        if mask is None:
            mask = torch.ones(prompts.shape[:2], dtype=torch.bool, device=prompts.device)
        det = self.detector(feats.patches, feats.pos, prompts, mask)
        if post_decoder:
            tokens = torch.cat((det.features[:, :, None], det.box_features), dim=2)
            tmask = mask[..., None].expand(-1, -1, tokens.shape[2])
            det.detector_features = det.features
            det.features = self.post_decoder(tokens, tmask, feats.patches, feats.pos, feats.global_token)[:, :, 0]
        return det

    def encode_boxes(
        self, feats: ImageFeatures, boxes: Tensor, mask: Tensor | None = None, prompts: Tensor | None = None,
        has_prompt: Tensor | None = None, post_decoder: bool = True,
    ) -> Tensor:
        """ROI tokens ``(N, K, d)`` of given boxes ``(N, K, 4)`` (cx, cy, w, h): Gaussian ROI pooling, fused where
        ``has_prompt`` with the prompt ``(N, K, d)`` (``detector.box_text_fusion``: its decoded query token, or its
        embedding as given), then the post decoder (one token per box)."""
        if mask is None:
            mask = torch.ones(boxes.shape[:2], dtype=torch.bool, device=boxes.device)
        if prompts is not None and has_prompt is not None and self.cfg.detector.box_text_fusion == "decoded":
            prompts = self.decoded_query(feats, boxes, prompts, has_prompt)
        feat = self.detector.pool(feats.patches, boxes, prompts, has_prompt)
        if post_decoder:
            feat = self.post_decoder(feat[:, :, None], mask[..., None], feats.patches, feats.pos, feats.global_token)[:, :, 0]
        return feat

    def decoded_query(self, feats: ImageFeatures, boxes: Tensor, prompts: Tensor, has_prompt: Tensor) -> Tensor:
        """For each given box ``(N, K, 4)`` with a prompt: the decoded query token ``(N, K, d)`` of the prompt's own
        detected box that overlaps the given box most (the token the skip connection would pair with that box)."""
        det = self.detector(feats.patches, feats.pos, prompts, has_prompt)
        given = box_ops.cxcywh_to_xyxy(boxes.float())[:, :, None]  # (N, K, 1, 4)
        best = box_ops.paired_iou(given, box_ops.cxcywh_to_xyxy(det.boxes.float())).argmax(-1)  # (N, K)
        return det.query_tokens.gather(2, best[..., None, None].expand(-1, -1, 1, det.query_tokens.shape[-1]))[:, :, 0]

    def classify(self, features: Tensor, positive: Tensor, negative: Tensor, temperature: float | None = None) -> Tensor:
        """``P(positive)`` = sigmoid((cos(f, pos) - cos(f, neg)) / T) for features ``(..., d)`` and ``(C, d)`` prompt pairs
        -> ``(..., C)``."""
        t = self.cfg.loss.classify_temperature if temperature is None else temperature
        f = F.normalize(features, dim=-1)
        return torch.sigmoid((f @ F.normalize(positive, dim=-1).T - f @ F.normalize(negative, dim=-1).T) / t)

    def presence(self, features: Tensor, positive: Sequence[str], negative: Sequence[str]) -> Tensor:
        """P(present) ``(..., K)`` of each query's detector ROI token ``(..., K, d)`` against its own prompt pair:
        calibrated where :attr:`presence_calibration` has the pair, else sigmoid(margin / pathology temperature)."""
        margin = paired_margin(features, self.encode_prompts(positive), self.encode_prompts(negative))
        keys = [pair_key(p, n) for p, n in zip(positive, negative)]
        return self.calibrated(margin, keys, torch.sigmoid(margin / self.cfg.loss.pathology_temperature))

    def calibrated(self, margin: Tensor, keys: Sequence[str], fallback: Tensor) -> Tensor:
        """sigmoid(scale * margin + shift) ``(..., K)`` for the K calibrated keys, ``fallback`` where a key has none."""
        known = margin.new_tensor([k in self.presence_calibration for k in keys], dtype=torch.bool)
        scale, shift = (margin.new_tensor(v) for v in zip(*(self.presence_calibration.get(k, (0.0, 0.0)) for k in keys)))
        return torch.where(known, torch.sigmoid(scale * margin + shift), fallback)

    def save_calibration(self, directory: Path | str) -> None:
        """Write :attr:`presence_calibration` next to the weights (or remove a stale file when it is empty)."""
        path = Path(directory) / CALIBRATION_FILE
        if self.presence_calibration:
            path.write_text(json.dumps({k: list(v) for k, v in sorted(self.presence_calibration.items())}, indent=1))
        else:
            path.unlink(missing_ok=True)

    def generate(self, features: Tensor, max_new_tokens: int | None = None, num_beams: int = 1) -> list[str]:
        """One sentence per ROI token ``(K, d)``."""
        return self.generator.generate(features, max_new_tokens, num_beams)

    def forward(self, batch, region_encoding: str = "prompts", generate: bool = True, post_decoder: bool = True) -> dict[str, Tensor]:
        """Training: every loss term of a :class:`~chex_model.multitask.Batch` by name (so engines such as DeepSpeed,
        which wrap ``forward``, see the whole step)."""
        out = multitask_losses(self, batch, region_encoding, generate, post_decoder)
        if torch.is_grad_enabled():
            # zero-valued, but it puts every trainable parameter into every rank's graph: data-parallel engines then
            # reduce the same gradients on all ranks even when a batch lacks some targets (or all of them)
            out[ANCHOR] = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        return out

    # ---- interactive use (see chex_model.inference) -------------------------------------------------------------
    def query(self, image, prompts: Sequence[str] = (), boxes: Sequence[Sequence[float]] = (), **kwargs):
        """Text / box / box + text queries on one image -> one :class:`~chex_model.inference.QueryResult` each."""
        from chex_model.inference import query

        return query(self, image, prompts, boxes, **kwargs)

    def report(self, image, prompt_set="report", **kwargs):
        """A grounded report (:class:`~chex_model.inference.Report`) from a YAML prompt set."""
        from chex_model.inference import report

        return report(self, image, prompt_set, **kwargs)
