"""Typed model configuration and its presets (`paper`, `factorized`, `tiny`).

Numbers follow the reference implementation (chex-reference.md §2); the backbone geometries are only used when a
model is built without pretrained weights (tests, benchmarks, the synthetic demo). With real weights the geometry
comes from the Hugging Face config in the weights' folder and is stored with every checkpoint.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chex_model.typed_config import ConfigError, from_dict

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "model"
PRESETS = ("paper", "factorized", "tiny")


@dataclass
class ClipGeometry:
    """CLIP ViT image tower + text tower shape (OpenAI ViT-B/32 by default)."""

    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_vocab: int = 49408
    text_context: int = 77


@dataclass
class Gpt2Geometry:
    """GPT-2 shape (medium by default, the geometry of `healx/gpt-2-pubmed-medium`)."""

    n_layer: int = 24
    n_embd: int = 1024
    n_head: int = 16
    vocab_size: int = 50257
    n_positions: int = 1024


@dataclass
class ImageEncoderConfig:
    freeze_layers: int = 9  # of [embeddings (+ ln_pre), block 0, ..., block 11]
    freeze_projection: bool = True  # post layer norm + visual projection (frozen in the reference's stage 1)
    conv_widths: list[int] = field(default_factory=list)  # a ConvBranch's stage widths, one stride-2 stage each; [] = none
    mean: float = 0.505
    std: float = 0.248


@dataclass
class DetectorConfig:
    n_layers: int = 6
    n_heads: int = 8
    n_boxes: int = 3  # M boxes per prompt
    ff_mult: int = 4
    dropout: float = 0.3
    attn_dropout: float = 0.1
    droppath: float = 0.2
    layer_scale: float = 0.1
    roi_beta: float = 2.0
    skip_roi_prob: float = 0.25  # training: chance a box feature also sees its query token
    skip_roi_dropout: float = 0.3
    skip_roi_inference: bool = True
    present_threshold: float = 0.5
    box_reference: bool = False  # box centres offset from an attention-weighted reference point (off = the reference)
    reference_shift: float = 0.15  # with box_reference: how far (image fraction) a centre may move from its reference
    projector_dropout: bool = True  # dropout after the patch and output projectors (the reference's MLP default)
    # ROI token = sum_m w_m f_m / norm: "max1" norm = max(1, sum w) (the reference), "sum" norm = sum w (ours: a
    # convex mean, so the token's scale does not shrink when no box is confident)
    feature_norm: str = "max1"
    # box + text query: the given box's ROI feature is averaged with the "decoded" query token of the prompt's box
    # that overlaps it most, as the skip connection pairs a box with its own query (the reference's intent), or with
    # the raw "prompt" embedding
    box_text_fusion: str = "decoded"


@dataclass
class PostDecoderConfig:
    n_layers: int = 3
    n_heads: int = 8
    box_token_drop: float = 0.3


@dataclass
class GeneratorConfig:
    prefix_length: int = 5  # prefix tokens per ROI token
    prefix_mode: str = "mlp"  # "mlp" (reference P-tuning v2 MLP) or "factorized" (low-rank per-layer projection)
    prefix_hidden: int = 2048
    prefix_rank: int = 256  # factorized mode only
    prefix_dropout: float = 0.3
    max_length: int = 128
    max_sentences: int = 32  # at most this many ROI tokens get a language-model loss per call
    no_repeat_ngram: int = 0  # decoding: no n-gram of this size twice in one text (0 = off, as the reference)
    pretrain_repeats: int = 4  # text pre-training: each sentence embedding fills R ~ U{1..this} prefix slots


@dataclass
class LossConfig:
    """Temperatures and matching costs; the per-term weights are applied by the trainer, not here."""

    match_l1: float = 5.0
    match_giou: float = 2.0
    match_cls: float = 1.0
    match_score: float = 3.0
    box_l1: float = 5.0
    box_giou: float = 2.0
    focal_gamma: float = 2.0
    pathology_temperature: float = 0.2
    anatomy_temperature: float = 0.25
    anatomy_negatives: int = 10
    # a multi-region prompt's box loss (the mean over its matched pairs) counts as this many terms beside each single
    # region's M box terms (reference: 1)
    multi_region_weight: float = 1.0
    # "reference": per region -mean(positive logits) + logsumexp(positives and negatives), absent classes subsampled
    # once per batch; "per_positive" (ours): each positive against the region's negatives, subsampled per region
    anatomy_cls: str = "reference"
    sentence_temperature: float = 0.25
    global_temperature: float = 0.2
    classify_temperature: float = 1.0  # inference: sigmoid(cos(f,pos)/T - cos(f,neg)/T)


@dataclass
class ChexConfig:
    preset: str = "paper"
    d_model: int = 512
    dropout: float = 0.3
    clip: ClipGeometry = field(default_factory=ClipGeometry)
    lm: Gpt2Geometry = field(default_factory=Gpt2Geometry)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    post_decoder: PostDecoderConfig = field(default_factory=PostDecoderConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    prompt_cache_size: int = 4096
    prompt_encode_chunk: int = 8  # texts per text-encoder call: fixed shapes keep an embedding bit-identical

    def __post_init__(self) -> None:
        if self.generator.prefix_mode not in ("mlp", "factorized"):
            raise ConfigError(f"generator.prefix_mode must be 'mlp' or 'factorized', got {self.generator.prefix_mode!r}")
        for name, value, allowed in (("detector.feature_norm", self.detector.feature_norm, ("max1", "sum")),
                                     ("detector.box_text_fusion", self.detector.box_text_fusion, ("decoded", "prompt")),
                                     ("loss.anatomy_cls", self.loss.anatomy_cls, ("reference", "per_positive"))):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")
        if self.generator.pretrain_repeats < 1:
            raise ConfigError("generator.pretrain_repeats must be >= 1")
        if self.d_model % self.detector.n_heads or self.d_model % self.post_decoder.n_heads:
            raise ConfigError(f"d_model {self.d_model} must be divisible by the detector and post-decoder head counts")
        if self.detector.n_boxes < 1:
            raise ConfigError("detector.n_boxes must be >= 1")
        if not 0 <= self.image.freeze_layers <= self.clip.vision_layers + 1:
            raise ConfigError(f"image.freeze_layers must be in [0, {self.clip.vision_layers + 1}]")
        if self.image.conv_widths and 2 ** len(self.image.conv_widths) != self.clip.patch_size:
            raise ConfigError(f"image.conv_widths needs log2(patch_size) = {self.clip.patch_size.bit_length() - 1} stages "
                              f"to land on the ViT's grid, got {len(self.image.conv_widths)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ChexConfig":
        return from_dict(cls, data)


def preset(name: str) -> ChexConfig:
    """One of :data:`PRESETS`, read from ``configs/model/<name>.yaml`` (plain data, overlaid on the defaults)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return load_model_config(PRESET_DIR / f"{name}.yaml")


def load_model_config(path: Path) -> ChexConfig:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read model config {path}: {exc}") from exc
    return ChexConfig.from_dict(data)
