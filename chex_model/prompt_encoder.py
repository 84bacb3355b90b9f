"""Frozen CLIP text encoder turning prompt strings into prompt tokens, with a bounded per-string cache."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerBase


class PromptEncoder(nn.Module):
    """``encode(["Pleural effusion", ...]) -> (Q, d)``; always frozen and in eval mode.

    Embeddings are cached per string (least recently used out first), since training and inference re-encode the
    same class, anatomy and sentence prompts over and over. Texts are encoded in fixed-size chunks of equal token
    length (no padding tokens; a short chunk repeats its last row), so every matrix product has the same shape and a
    text's embedding never depends on which texts first shared its batch. Otherwise it would come out a few ulps
    different, and a resumed run, whose cache starts empty, would drift from an uninterrupted one.
    """

    def __init__(self, text: CLIPTextModelWithProjection, tokenizer: PreTrainedTokenizerBase, cache_size: int,
                 chunk: int = 8) -> None:
        super().__init__()
        self.text = text
        self.tokenizer = tokenizer
        self.cache_size, self.chunk = cache_size, chunk
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self.text.requires_grad_(False)
        self.text.eval()

    def train(self, mode: bool = True) -> "PromptEncoder":
        super().train(mode)
        self.text.eval()
        return self

    def clear_cache(self) -> None:
        self._cache.clear()

    def _apply(self, fn, recurse: bool = True) -> "PromptEncoder":
        """A move or cast (``.to``, ``.bfloat16()``, DeepSpeed's bf16 wrap) drops the cache: its embeddings were made
        by the weights as they were, in their dtype and on their device."""
        self._cache.clear()
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> dict[str, Tensor]:
        max_len = self.text.config.max_position_embeddings
        ids = self.tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]
        by_length: dict[int, list[int]] = {}
        for i, row in enumerate(ids):
            by_length.setdefault(len(row), []).append(i)
        device = self.text.text_projection.weight.device
        out = {}
        for group in by_length.values():
            for start in range(0, len(group), self.chunk):
                chunk = group[start: start + self.chunk]
                rows = [ids[i] for i in chunk] + [ids[chunk[-1]]] * (self.chunk - len(chunk))
                batch = torch.tensor(rows, device=device)
                embs = self.text(input_ids=batch, attention_mask=torch.ones_like(batch)).text_embeds
                out.update((texts[i], emb) for i, emb in zip(chunk, embs))
        return out

    def encode(self, texts: Sequence[str]) -> Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            self._cache.update(self._encode(missing))
        rows = []
        for text in texts:
            self._cache.move_to_end(text)
            rows.append(self._cache[text])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        if not rows:
            return torch.zeros(0, self.text.config.projection_dim, device=self.text.text_projection.weight.device)
        return torch.stack(rows)

    def encode_padded(self, texts: Sequence[Sequence[str]]) -> tuple[Tensor, Tensor]:
        """Per-image prompt lists -> ``(N, Q_max, d)`` embeddings and a ``(N, Q_max)`` validity mask."""
        flat = [t for row in texts for t in row]
        emb = self.encode(flat)
        q = max((len(row) for row in texts), default=0)
        out = emb.new_zeros(len(texts), q, emb.shape[-1])
        mask = torch.zeros(len(texts), q, dtype=torch.bool, device=emb.device)
        i = 0
        for n, row in enumerate(texts):
            out[n, : len(row)] = emb[i : i + len(row)]
            mask[n, : len(row)] = True
            i += len(row)
        return out, mask
