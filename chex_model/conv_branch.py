"""A small convolutional branch added to the ViT's patch tokens: local, translation-equivariant features that a model
trained from scratch on a CPU learns within minutes, where a tiny ViT does not (``bench/encoder_probe.py``)."""
from __future__ import annotations

from torch import Tensor, nn


class ConvStage(nn.Module):
    """Stride-2 conv, then a residual 3x3 conv; GroupNorm so small per-worker batches behave like large ones."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        groups = 8 if c_out % 8 == 0 else 1
        self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.GroupNorm(groups, c_out), nn.GELU())
        self.res = nn.Sequential(nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.GroupNorm(groups, c_out), nn.GELU())

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)
        return x + self.res(x)


class ConvBranch(nn.Module):
    """Grayscale ``(N, 1, S, S)`` -> ``(N, S / 2^k, S / 2^k, d)`` for ``k = len(widths)`` stride-2 stages, plus its mean
    over the grid ``(N, d)`` for the global token."""

    def __init__(self, widths: list[int], d: int) -> None:
        super().__init__()
        chans = [1, *widths]
        self.stages = nn.Sequential(*(ConvStage(a, b) for a, b in zip(chans, chans[1:])))
        self.proj = nn.Linear(widths[-1], d)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.proj(self.stages(images).permute(0, 2, 3, 1))
        return tokens, tokens.mean(dim=(1, 2))
