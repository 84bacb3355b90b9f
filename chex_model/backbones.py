"""The pretrained parts (CLIP towers, GPT-2, their tokenizers): load them from local Hugging Face folders, or build
random ones of a given geometry with tokenizers trained offline (tests, benchmarks and the synthetic demo)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from chex_model.config import ChexConfig, ClipGeometry, Gpt2Geometry
from chex_model.conv_branch import ConvBranch

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# beside a CLIP folder of our pre-training: the conv branch of a preset that has one, trained with the ViT
CONV_BRANCH_FILE = "conv_branch.safetensors"


@dataclass
class Backbones:
    vision: CLIPVisionModelWithProjection
    text: CLIPTextModelWithProjection
    clip_tokenizer: PreTrainedTokenizerBase
    lm: GPT2LMHeadModel
    lm_tokenizer: PreTrainedTokenizerBase


def _bpe(corpus: list[str], vocab_size: int, specials: list[str], lowercase: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    return tok


def train_tokenizers(corpus: Iterable[str], vocab_size: int) -> tuple[PreTrainedTokenizerFast, PreTrainedTokenizerFast]:
    """Byte-level BPE tokenizers for the CLIP text tower (lower-cased, wraps prompts in start/end tokens, as CLIP's
    does) and for GPT-2 (``<|endoftext|>`` is bos, eos and pad, as GPT-2's is). Deterministic for a given corpus."""
    lines = [line for line in corpus if line.strip()]
    clip = _bpe(lines, vocab_size, [BOS, EOS], lowercase=True)
    clip.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, clip.token_to_id(BOS)), (EOS, clip.token_to_id(EOS))]
    )
    clip_tok = PreTrainedTokenizerFast(tokenizer_object=clip, bos_token=BOS, eos_token=EOS, pad_token=EOS)
    lm = _bpe(lines, vocab_size, [EOS], lowercase=False)
    lm_tok = PreTrainedTokenizerFast(tokenizer_object=lm, bos_token=EOS, eos_token=EOS, pad_token=EOS)
    return clip_tok, lm_tok


def clip_config(g: ClipGeometry, d_model: int, tokenizer: PreTrainedTokenizerBase) -> CLIPConfig:
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    text = CLIPTextConfig(
        vocab_size=g.text_vocab, hidden_size=g.text_width, intermediate_size=4 * g.text_width, num_hidden_layers=g.text_layers,
        num_attention_heads=g.text_heads, max_position_embeddings=g.text_context, projection_dim=d_model, **special,
    )
    vision = CLIPVisionConfig(
        hidden_size=g.vision_width, intermediate_size=4 * g.vision_width, num_hidden_layers=g.vision_layers,
        num_attention_heads=g.vision_heads, image_size=g.image_size, patch_size=g.patch_size, projection_dim=d_model,
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=d_model)


def gpt2_config(g: Gpt2Geometry, tokenizer: PreTrainedTokenizerBase) -> GPT2Config:
    return GPT2Config(
        n_layer=g.n_layer, n_embd=g.n_embd, n_head=g.n_head, vocab_size=g.vocab_size, n_positions=g.n_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def random_backbones(cfg: ChexConfig, clip_tokenizer: PreTrainedTokenizerBase, lm_tokenizer: PreTrainedTokenizerBase) -> Backbones:
    """Randomly initialised backbones with the geometry of ``cfg`` (honours an enclosing ``torch.device`` context)."""
    cc = clip_config(cfg.clip, cfg.d_model, clip_tokenizer)
    return Backbones(
        CLIPVisionModelWithProjection(cc.vision_config), CLIPTextModelWithProjection(cc.text_config), clip_tokenizer,
        GPT2LMHeadModel(gpt2_config(cfg.lm, lm_tokenizer)), lm_tokenizer,
    )


def load_backbones(clip_dir: Path, lm_dir: Path) -> Backbones:
    """Pretrained CLIP (a ``CLIPModel`` folder) and GPT-2 (a ``GPT2LMHeadModel`` folder) from local directories."""
    for name, path in (("CLIP", clip_dir), ("GPT-2", lm_dir)):
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"{name} weights: {path} has no config.json (expected a Hugging Face model folder)")
    vision, text, _ = clip_towers(clip_dir)
    return Backbones(vision, text, AutoTokenizer.from_pretrained(clip_dir), GPT2LMHeadModel.from_pretrained(lm_dir),
                     AutoTokenizer.from_pretrained(lm_dir))


def clip_towers(directory: Path | str) -> tuple[CLIPVisionModelWithProjection, CLIPTextModelWithProjection, CLIPModel]:
    """The two towers ChEX uses, from one ``CLIPModel`` folder read once as the model it is (loading each tower's
    class from it reads the file twice and reports the other tower's weights as unexpected); and that model."""
    clip = CLIPModel.from_pretrained(directory)
    vc, tc = clip.config.vision_config, clip.config.text_config
    vc.projection_dim = tc.projection_dim = clip.config.projection_dim
    with torch.device("meta"):  # shells only: both of their modules are replaced by the loaded ones
        vision, text = CLIPVisionModelWithProjection(vc), CLIPTextModelWithProjection(tc)
    vision.vision_model, vision.visual_projection = clip.vision_model, clip.visual_projection
    text.text_model, text.text_projection = clip.text_model, clip.text_projection
    return vision, text, clip


def load_conv_branch(clip_dir: Path, widths: list[int], d: int) -> ConvBranch | None:
    """The conv branch saved beside a CLIP folder, or None when it has none; one line when it does not fit."""
    from safetensors.torch import load_model

    path = Path(clip_dir) / CONV_BRANCH_FILE
    if not path.is_file():
        return None
    conv = ConvBranch(widths, d)
    try:
        load_model(conv, str(path))
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: the conv branch does not fit image.conv_widths {widths} and d_model {d}") from exc
    return conv


def save_clip(vision: CLIPVisionModelWithProjection, text: CLIPTextModelWithProjection, tokenizer: PreTrainedTokenizerBase,
              clip_dir: Path, logit_scale: float | None = None) -> None:
    """The two towers (and the tokenizer) as one ``CLIPModel`` folder, with ``logit_scale`` when given."""
    import torch
    from transformers import CLIPModel

    cc = CLIPConfig(text_config=text.config.to_dict(), vision_config=vision.config.to_dict(),
                    projection_dim=vision.config.projection_dim)
    clip = CLIPModel(cc)
    clip.vision_model.load_state_dict(vision.vision_model.state_dict())
    clip.visual_projection.load_state_dict(vision.visual_projection.state_dict())
    clip.text_model.load_state_dict(text.text_model.state_dict())
    clip.text_projection.load_state_dict(text.text_projection.state_dict())
    if logit_scale is not None:
        with torch.no_grad():
            clip.logit_scale.fill_(logit_scale)
    clip.save_pretrained(clip_dir)
    tokenizer.save_pretrained(clip_dir)


def save_backbones(b: Backbones, clip_dir: Path, lm_dir: Path) -> None:
    """Write backbones as ordinary Hugging Face folders (a ``CLIPModel`` and a ``GPT2LMHeadModel``)."""
    save_clip(b.vision, b.text, b.clip_tokenizer, clip_dir)
    b.lm.save_pretrained(lm_dir)
    b.lm_tokenizer.save_pretrained(lm_dir)
