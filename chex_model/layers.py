"""Transformer building blocks shared by the prompt detector and the post decoder: pre-LN blocks with LayerScale and
DropPath on the residual branches, attention with an explicit boolean mask (True = may attend)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp(d_in: int, d_hidden: int, d_out: int, dropout: float, dropout_last: bool = False) -> nn.Sequential:
    """Linear -> GELU -> Dropout -> Linear (-> Dropout): the reference's two-layer MLP helper."""
    layers: list[nn.Module] = [nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out)]
    if dropout_last:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample during training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class LayerScale(nn.Module):
    def __init__(self, d: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((d,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head attention (same parameter count as ``nn.MultiheadAttention``) on PyTorch's SDPA kernel."""

    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: Tensor, source: Tensor, mask: Tensor | None = None) -> Tensor:
        n, lq, d = x.shape
        h = self.n_heads
        q = self.q(x).view(n, lq, h, d // h).transpose(1, 2)
        k, v = self.kv(source).view(n, source.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if mask is None else mask[:, None], dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(out.transpose(1, 2).reshape(n, lq, d))


class DecoderLayer(nn.Module):
    """[LN -> masked self-attention] -> [LN(query), LN(source) -> cross-attention] -> [LN -> FF], each a residual
    branch with LayerScale; DropPath on self-attention and FF (and cross-attention when ``cross_droppath``)."""

    def __init__(
        self, d: int, n_heads: int, ff_mult: int, dropout: float, attn_dropout: float, droppath: float,
        layer_scale: float, cross_droppath: bool,
    ) -> None:
        super().__init__()
        self.norm_sa = nn.LayerNorm(d)
        self.self_attn = Attention(d, n_heads, attn_dropout)
        self.scale_sa = LayerScale(d, layer_scale)
        self.norm_q = nn.LayerNorm(d)
        self.norm_src = nn.LayerNorm(d)
        self.cross_attn = Attention(d, n_heads, attn_dropout)
        self.scale_ca = LayerScale(d, layer_scale)
        self.norm_ff = nn.LayerNorm(d)
        self.ff = mlp(d, ff_mult * d, d, dropout)
        self.scale_ff = LayerScale(d, layer_scale)
        self.drop_path = DropPath(droppath)
        self.drop_path_ca = DropPath(droppath if cross_droppath else 0.0)

    def forward(self, x: Tensor, source: Tensor, self_mask: Tensor, source_mask: Tensor | None = None) -> Tensor:
        h = self.norm_sa(x)
        x = x + self.drop_path(self.scale_sa(self.self_attn(h, h, self_mask)))
        x = x + self.drop_path_ca(self.scale_ca(self.cross_attn(self.norm_q(x), self.norm_src(source), source_mask)))
        return x + self.drop_path(self.scale_ff(self.ff(self.norm_ff(x))))


def block_mask(group: Tensor, valid: Tensor) -> Tensor:
    """Self-attention mask ``(N, L, L)``: token i may attend token j iff both belong to the same group and j is valid.

    Every token may attend itself, so padded rows never see an all-masked softmax (their outputs are ignored).
    """
    same = group[:, :, None] == group[:, None, :]
    allowed = same & valid[:, None, :]
    eye = torch.eye(group.shape[1], dtype=torch.bool, device=group.device)
    return allowed | eye
