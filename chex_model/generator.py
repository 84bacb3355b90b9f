"""Sentence generator: GPT-2 conditioned on one ROI token per sentence through a P-tuning v2 key/value prefix."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache, GPT2LMHeadModel, PreTrainedTokenizerBase, StaticCache

from chex_model.config import GeneratorConfig
from chex_model.layers import mlp


class PrefixEncoder(nn.Module):
    """ROI token ``(B, d)`` -> per-layer key/value prefixes, each ``(B, heads, P, head_dim)``.

    ``mlp``: the reference's d -> hidden -> P*L*2*E MLP (~505M parameters at GPT-2 medium size).
    ``factorized``: d -> hidden -> P*r codes, then one learned r -> E map per layer and key/value (~17M).
    """

    def __init__(self, d: int, cfg: GeneratorConfig, n_layer: int, n_head: int, n_embd: int) -> None:
        super().__init__()
        self.cfg, self.n_layer, self.n_head, self.n_embd = cfg, n_layer, n_head, n_embd
        p = cfg.prefix_length
        if cfg.prefix_mode == "mlp":
            self.net = mlp(d, cfg.prefix_hidden, p * n_layer * 2 * n_embd, cfg.prefix_dropout, dropout_last=True)
        else:
            self.net = mlp(d, cfg.prefix_hidden, p * cfg.prefix_rank, cfg.prefix_dropout, dropout_last=True)
            self.up = nn.Parameter(torch.randn(n_layer * 2, cfg.prefix_rank, n_embd) / cfg.prefix_rank**0.5)
            self.up_bias = nn.Parameter(torch.zeros(n_layer * 2, n_embd))

    def forward(self, features: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``(B, d)``, or ``(B, R, d)``: R features per text, their prefixes one after the other (R x P tokens)."""
        b, p, lay, h = features.shape[0], self.cfg.prefix_length, self.n_layer, self.n_head
        p *= features.shape[1] if features.dim() == 3 else 1
        out = self.net(features).reshape(b, -1)
        if self.cfg.prefix_mode == "mlp":
            kv = out.view(b, p, lay * 2, self.n_embd)
        else:
            codes = out.view(b, p, self.cfg.prefix_rank)
            kv = torch.einsum("bpr,lre->bple", codes, self.up) + self.up_bias
        kv = kv.view(b, p, lay, 2, h, self.n_embd // h).permute(2, 3, 0, 4, 1, 5)  # (L, 2, B, H, P, hd)
        return [(kv[i, 0], kv[i, 1]) for i in range(lay)]


def ban_repeated_ngrams(history: Tensor, logits: Tensor, n: int) -> Tensor:
    """``logits`` ``(B, V)`` with -inf on every token that would repeat an ``n``-gram of ``history`` ``(B, T)``.

    Tensor operations only, so the guard costs no Python work that grows with the sentence (Hugging Face's
    ``NoRepeatNGramLogitsProcessor`` rebuilds a Python dict of every n-gram at every step)."""
    if history.shape[1] < n:
        return logits
    windows = history.unfold(1, n, 1)  # (B, T - n + 1, n)
    tail = history[:, history.shape[1] - n + 1:]
    rows, cols = (windows[..., :-1] == tail[:, None]).all(-1).nonzero(as_tuple=True)
    return logits.index_put((rows, windows[rows, cols, -1]), logits.new_tensor(float("-inf")))


class SentenceGenerator(nn.Module):
    def __init__(self, lm: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase, d: int, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.lm, self.tokenizer, self.cfg = lm, tokenizer, cfg
        c = lm.config
        self.prefix = PrefixEncoder(d, cfg, c.n_layer, c.n_head, c.n_embd)
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eos_id
        if self.eos_id is None:
            raise ValueError("the language-model tokenizer needs an end-of-text token")
        self.max_length = min(cfg.max_length, c.n_positions)

    def _cache(self, features: Tensor) -> DynamicCache:
        return DynamicCache(ddp_cache_data=self.prefix(features), config=self.lm.config)

    def _static_cache(self, features: Tensor, steps: int) -> StaticCache:
        """A key/value cache allocated once for prefix + ``steps`` tokens, the prefix projected into it once."""
        prefix = self.prefix(features)
        cache = StaticCache(config=self.lm.config, max_cache_len=prefix[0][0].shape[2] + steps)
        where = {"cache_position": torch.arange(prefix[0][0].shape[2], device=features.device)}
        for i, (k, v) in enumerate(prefix):
            cache.update(k, v, i, where)
        return cache

    def encode_targets(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``bos + sentence + eos`` token ids (right-padded) and their mask; long sentences are truncated."""
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        rows = [[self.bos_id, *row[: self.max_length - 2], self.eos_id] for row in ids]
        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), self.eos_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        return out, mask

    def loss(self, features: Tensor, texts: Sequence[str]) -> Tensor:
        """Mean next-token cross-entropy of each text given its ROI token ``(B, d)`` (or ``R`` tokens, ``(B, R, d)``);
        padding is never a target."""
        if len(texts) != features.shape[0]:
            raise ValueError(f"{features.shape[0]} features but {len(texts)} target texts")
        if len(texts) > self.cfg.max_sentences:
            keep = torch.randperm(len(texts))[: self.cfg.max_sentences]
            features, texts = features[keep.to(features.device)], [texts[i] for i in keep.tolist()]
        ids, mask = (t.to(features.device) for t in self.encode_targets(texts))
        b, t = ids.shape
        p = self.cfg.prefix_length * (features.shape[1] if features.dim() == 3 else 1)
        attn = torch.cat((mask.new_ones(b, p), mask), dim=1).long()
        pos = torch.arange(t, device=ids.device).expand(b, t)
        logits = self.lm(input_ids=ids, cache=self._cache(features), attention_mask=attn, position_ids=pos, use_cache=False).logits
        targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

    @torch.no_grad()
    def generate(self, features: Tensor, max_new_tokens: int | None = None, num_beams: int = 1) -> list[str]:
        """One sentence per ROI token, all in one batch; greedy (``num_beams=1``) or beam search."""
        if features.shape[0] == 0:
            return []
        steps = min(max_new_tokens or self.max_length, self.max_length - 1)
        # the language model runs in its own weights' precision (fp32 beside int8 layers, or bf16), whatever the
        # precision of the vision side that made the ROI tokens
        features = features.to(self.lm.transformer.wte.weight.dtype)
        with torch.autocast(features.device.type, enabled=False):
            tokens = self._beam(features, steps, num_beams) if num_beams > 1 else self._greedy(features, steps)
        return [s.strip() for s in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    def _step(self, ids: Tensor, history: Tensor, cache: StaticCache, mask: Tensor, step: int) -> Tensor:
        """Next-token logits after ``history`` (``bos`` + tokens so far; its last column is ``ids``), with the
        repetition guard's banned tokens at -inf. ``mask`` ``(B, P + steps)`` marks the cache slots in use."""
        slot = step + self.cfg.prefix_length
        mask[:, slot] = 1
        out = self.lm(input_ids=ids, cache=cache, use_cache=True, attention_mask=mask,
                      position_ids=ids.new_full((ids.shape[0], 1), step), cache_position=ids.new_tensor([slot]))
        logits = out.logits[:, -1].float()
        n = self.cfg.no_repeat_ngram
        return ban_repeated_ngrams(history, logits, n) if n > 0 else logits

    def _start(self, features: Tensor, steps: int) -> tuple[StaticCache, Tensor, Tensor]:
        """The filled static cache, its slot mask (prefix slots on) and the ``bos`` column, for ``features`` ``(B, d)``."""
        b, p = features.shape[0], self.cfg.prefix_length
        mask = torch.zeros(b, p + steps, dtype=torch.long, device=features.device)
        mask[:, :p] = 1
        return self._static_cache(features, steps), mask, mask.new_full((b, 1), self.bos_id)

    def _greedy(self, features: Tensor, steps: int) -> list[list[int]]:
        cache, mask, ids = self._start(features, steps)
        history = ids
        done = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
        for step in range(steps):
            logits = self._step(ids, history, cache, mask, step)
            ids = logits.argmax(-1, keepdim=True).masked_fill(done[:, None], self.eos_id)
            history = torch.cat((history, ids), dim=1)
            done |= ids[:, 0] == self.eos_id
            if done.all():
                break
        seq = history[:, 1:].tolist()
        return [row[: row.index(self.eos_id)] if self.eos_id in row else row for row in seq]

    def _beam(self, features: Tensor, steps: int, k: int) -> list[list[int]]:
        """Beam search with length-normalized final choice; finished beams carry their score unchanged."""
        b, dev = features.shape[0], features.device
        cache, mask, ids = self._start(features.repeat_interleave(k, dim=0), steps)
        scores = torch.full((b, k), float("-inf"), device=dev)
        scores[:, 0] = 0.0
        scores = scores.view(-1)
        done = torch.zeros(b * k, dtype=torch.bool, device=dev)
        lengths = torch.zeros(b * k, device=dev)
        seqs = torch.zeros(b * k, 0, dtype=torch.long, device=dev)
        for step in range(steps):
            history = torch.cat((torch.full_like(ids, self.bos_id), seqs), dim=1)
            logp = torch.log_softmax(self._step(ids, history, cache, mask, step), dim=-1)
            logp[done] = float("-inf")
            logp[done, self.eos_id] = 0.0
            cand = (scores[:, None] + logp).view(b, -1)
            top, flat = cand.topk(k, dim=-1)
            vocab = logp.shape[-1]
            src = (flat // vocab + torch.arange(b, device=dev)[:, None] * k).view(-1)
            tok = (flat % vocab).view(-1)
            cache.reorder_cache(src)
            was_done = done[src]
            seqs = torch.cat((seqs[src], tok[:, None]), dim=1)
            lengths = lengths[src] + (~was_done).float()
            done = was_done | (tok == self.eos_id)
            scores = top.view(-1)
            ids = tok[:, None]
            if done.all():
                break
        best = (scores / lengths.clamp(min=1)).view(b, k).argmax(-1) + torch.arange(b, device=dev) * k
        rows = seqs[best].tolist()
        return [row[: row.index(self.eos_id)] if self.eos_id in row else row for row in rows]
