"""The backbones' own pre-training objectives, the way CheXzero and a report-text GPT-2 are made: contrastive
image-report CLIP (:class:`ContrastiveClip`) and next-token GPT-2 on report sentences (:class:`SentenceLm`).

Both wrap the Hugging Face model that ChEX later loads (``clip_dir`` / ``lm_dir``), take their inputs in the form
ChEX feeds them (normalized grayscale images expanded to three channels; ``bos + sentence + eos`` as the sentence
generator's targets), and return a dict of named loss terms like :class:`~chex_model.chex.ChEX`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import (
    AutoTokenizer,
    CLIPTextModelWithProjection,
    CLIPVisionModelWithProjection,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
)

from chex_model.backbones import CONV_BRANCH_FILE, clip_config, clip_towers, gpt2_config, load_conv_branch, save_clip
from chex_model.config import ChexConfig
from chex_model.conv_branch import ConvBranch


class ContrastiveClip(nn.Module):
    """CLIP's symmetric InfoNCE over a batch of (image, report text) pairs: each image's own report against the
    batch's other reports, and each report against the other images, at a learned temperature.

    The towers are the classes ChEX loads (``CLIPVisionModelWithProjection``, ``CLIPTextModelWithProjection``); the
    log temperature is a 1-element parameter (DeepSpeed cannot broadcast CLIPModel's 0-d one) and goes back into
    the ``CLIPModel`` folder :meth:`save_pretrained` writes. With a ``conv`` branch (a preset with
    ``image.conv_widths``) the image embedding is ChEX's global feature, CLS token plus the branch's mean, and the
    branch is saved beside the towers (:data:`~chex_model.backbones.CONV_BRANCH_FILE`): a ViT this small, trained
    from scratch, hardly learns from image-report pairs alone (docs/demo_model.md)."""

    def __init__(self, vision: CLIPVisionModelWithProjection, text: CLIPTextModelWithProjection,
                 tokenizer: PreTrainedTokenizerBase, log_scale: float = math.log(1 / 0.07), conv: ConvBranch | None = None) -> None:
        super().__init__()
        self.vision, self.text, self.tokenizer, self.conv = vision, text, tokenizer, conv
        self.log_scale = nn.Parameter(torch.tensor([log_scale]))

    @classmethod
    def build(cls, cfg: ChexConfig, tokenizer: PreTrainedTokenizerBase) -> "ContrastiveClip":
        """Random towers of ``cfg``'s geometry (projection to ``d_model``, as ChEX checks), and its conv branch."""
        cc = clip_config(cfg.clip, cfg.d_model, tokenizer)
        conv = ConvBranch(cfg.image.conv_widths, cfg.d_model) if cfg.image.conv_widths else None
        return cls(CLIPVisionModelWithProjection(cc.vision_config), CLIPTextModelWithProjection(cc.text_config), tokenizer,
                   conv=conv)

    @classmethod
    def from_pretrained(cls, directory: Path | str, conv_widths: Sequence[int] = ()) -> "ContrastiveClip":
        """A folder :meth:`save_pretrained` wrote (or any ``CLIPModel`` folder); ``conv_widths``: load its conv branch."""
        vision, text, clip = clip_towers(directory)
        conv = load_conv_branch(Path(directory), list(conv_widths), clip.projection_dim) if conv_widths else None
        return cls(vision, text, AutoTokenizer.from_pretrained(directory), float(clip.logit_scale.detach()), conv)

    def save_pretrained(self, directory: Path | str) -> None:
        """A ``CLIPModel`` folder with the tokenizer (and the conv branch): what ``clip_dir`` names."""
        save_clip(self.vision, self.text, self.tokenizer, Path(directory), float(self.log_scale.detach()))
        if self.conv is not None:
            save_file(self.conv.state_dict(), str(Path(directory) / CONV_BRANCH_FILE))

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp().clamp(max=100.0)

    def tokenize(self, texts: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]:
        n = self.text.config.max_position_embeddings
        enc = self.tokenizer(list(texts), truncation=True, max_length=n, padding=True, return_tensors="pt")
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    def embed_images(self, images: Tensor) -> Tensor:
        """Normalized ``(N, 1, H, W)`` -> unit ``(N, d)``: the CLS token through the post norm and the projection,
        the global feature ChEX's image encoder computes."""
        glob = self.vision(pixel_values=images.expand(-1, 3, -1, -1)).image_embeds
        return F.normalize(glob if self.conv is None else glob + self.conv(images)[1], dim=-1)

    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        ids, mask = self.tokenize(texts, self.log_scale.device)
        return F.normalize(self.text(input_ids=ids, attention_mask=mask).text_embeds, dim=-1)

    def forward(self, images: Tensor, texts: Sequence[str]) -> dict[str, Tensor]:
        if images.shape[0] != len(texts):
            raise ValueError(f"{images.shape[0]} images but {len(texts)} texts")
        img, txt = self.embed_images(images), self.embed_texts(texts)
        return {"clip_contr": contrastive_loss(self.scale * img.float() @ txt.float().T, texts)}


def contrastive_loss(logits: Tensor, texts: Sequence[str]) -> Tensor:
    """Symmetric InfoNCE of ``(N, N)`` image-text logits, where every pair with the same text counts as a positive
    (the target spreads evenly over them): a batch often holds identical normal reports, and calling one of them
    a negative asks for a distinction the text cannot make."""
    index = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    ids = torch.tensor([index[t] for t in texts], device=logits.device)
    same = (ids[:, None] == ids[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class SentenceLm(nn.Module):
    """GPT-2 trained on sentences framed as the sentence generator frames its targets (``bos + sentence + eos``,
    positions from 0), so the prefix-tuned generator starts from a model of exactly that text."""

    def __init__(self, lm: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        super().__init__()
        self.lm, self.tokenizer = lm, tokenizer
        self.max_length = min(max_length, lm.config.n_positions)
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eos_id

    @classmethod
    def build(cls, cfg: ChexConfig, tokenizer: PreTrainedTokenizerBase) -> "SentenceLm":
        return cls(GPT2LMHeadModel(gpt2_config(cfg.lm, tokenizer)), tokenizer, cfg.generator.max_length)

    @classmethod
    def from_pretrained(cls, directory: Path | str, max_length: int) -> "SentenceLm":
        return cls(GPT2LMHeadModel.from_pretrained(directory), AutoTokenizer.from_pretrained(directory), max_length)

    def save_pretrained(self, directory: Path | str) -> None:
        """A ``GPT2LMHeadModel`` folder with the tokenizer: what ``lm_dir`` names."""
        self.lm.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def encode(self, texts: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """Right-padded ``bos + sentence + eos`` ids and their mask, cut to the generator's ``max_length``."""
        rows = [[self.bos_id, *row[: self.max_length - 2], self.eos_id]
                for row in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.eos_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), True
        return ids.to(device), mask.to(device)

    def token_losses(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Per-token next-token cross-entropy ``(B, T-1)`` and which of them are real targets (not padding)."""
        ids, mask = self.encode(texts, self.lm.lm_head.weight.device)
        logits = self.lm(input_ids=ids, attention_mask=mask.long()).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        return nll, mask[:, 1:]

    def forward(self, texts: Sequence[str]) -> dict[str, Tensor]:
        nll, valid = self.token_losses(texts)
        return {"lm": nll[valid].mean()}

