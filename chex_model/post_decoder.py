"""Post decoder: ROI tokens look at the whole image (patches + global token) before classification and generation."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from chex_model.config import DetectorConfig, PostDecoderConfig
from chex_model.detector import source_tokens
from chex_model.layers import DecoderLayer, block_mask


class PostDecoder(nn.Module):
    """Tokens ``(N, Q, T, d)`` (per prompt: the ROI token first, then optionally its M box tokens) -> same shape.

    Self-attention stays within a prompt's tokens; box tokens are randomly hidden during training (the ROI token
    never is). The residual is gated by a scalar initialised at 0, so training starts from the detector's features.
    """

    def __init__(self, d: int, cfg: PostDecoderConfig, block: DetectorConfig, dropout: float) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(
            DecoderLayer(d, cfg.n_heads, block.ff_mult, dropout, block.attn_dropout, block.droppath, block.layer_scale, True)
            for _ in range(cfg.n_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.gate = nn.Parameter(torch.zeros(1))  # 1-d: DeepSpeed broadcasts parameters as byte views
        self.token_drop = cfg.box_token_drop  # a training stage may set its own (the reference: 0.3, then 0.1)

    def forward(self, tokens: Tensor, mask: Tensor, patches: Tensor, pos: Tensor, global_token: Tensor) -> Tensor:
        n, q, t, d = tokens.shape
        valid = mask.clone()
        if self.training and t > 1 and self.token_drop > 0:
            dropped = torch.rand(n, q, t, device=tokens.device) < self.token_drop
            dropped[..., 0] = False
            valid &= ~dropped
        group = torch.arange(q, device=tokens.device).repeat_interleave(t).expand(n, -1)
        sa_mask = block_mask(group, valid.reshape(n, q * t))
        source = torch.cat((source_tokens(patches, pos), global_token[:, None]), dim=1)
        x = tokens.reshape(n, q * t, d)
        h = x
        for layer in self.layers:
            h = layer(h, source, sa_mask)
        return self.norm(x + self.gate * h).view(n, q, t, d)
