"""CLIP ViT image encoder: all patch tokens (and their positions) in the shared image-text space, optionally summed with
a convolutional branch for models trained from scratch."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from transformers import CLIPVisionModelWithProjection

from chex_model.config import ImageEncoderConfig
from chex_model.conv_branch import ConvBranch
from preprocessing.image_io import resize_center_crop


class ImageEncoder(nn.Module):
    """Grayscale image -> patch features ``(N, h, w, d)``, projected positions ``(h, w, d)``, global feature ``(N, d)``.

    Every token goes through the post layer norm and the visual projection, as CLIP does for its CLS token, so patch
    features live in the space the frozen text encoder's prompts live in. Frozen parts run in eval mode. With
    ``cfg.conv_widths`` a :class:`ConvBranch` on the same grid adds to every patch token (and its mean to the global one);
    it trains whenever any part of the encoder does.
    """

    def __init__(self, clip: CLIPVisionModelWithProjection, cfg: ImageEncoderConfig) -> None:
        super().__init__()
        self.clip = clip
        self.cfg = cfg
        vc = clip.config
        self.grid = vc.image_size // vc.patch_size
        self.image_size = vc.image_size
        if cfg.conv_widths and 2 ** len(cfg.conv_widths) != vc.patch_size:
            raise ValueError(f"{len(cfg.conv_widths)} conv stages do not land on the {vc.patch_size} px patch grid")
        self.conv = ConvBranch(cfg.conv_widths, vc.projection_dim) if cfg.conv_widths else None
        self._frozen: list[nn.Module] = []
        self.freeze(cfg.freeze_layers, cfg.freeze_projection)

    def freeze(self, n_layers: int, projection: bool) -> None:
        """Freeze the first ``n_layers`` of [embeddings + pre-LN, block 0, ...] and, if asked, the output head; the conv
        branch freezes only with every stage."""
        vm = self.clip.vision_model
        stages: list[nn.Module] = [nn.ModuleList([vm.embeddings, vm.pre_layrnorm]), *vm.encoder.layers]
        head = nn.ModuleList([vm.post_layernorm, self.clip.visual_projection])
        self._frozen = stages[:n_layers] + ([head] if projection else [])
        for p in self.clip.parameters():
            p.requires_grad_(True)
        for module in self._frozen:
            module.requires_grad_(False)
        if self.conv is not None:
            self.conv.requires_grad_(n_layers <= len(vm.encoder.layers))
            if n_layers > len(vm.encoder.layers):
                self._frozen.append(self.conv)
        self.train(self.training)

    def freeze_all(self) -> None:
        self.freeze(len(self.clip.vision_model.encoder.layers) + 1, True)

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def positions(self) -> Tensor:
        pos = self.clip.vision_model.embeddings.position_embedding.weight[1:]
        return self.clip.visual_projection(pos).view(self.grid, self.grid, -1)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"expected normalized grayscale images (N, 1, H, W), got {tuple(images.shape)}")
        hidden = self.clip.vision_model(pixel_values=images.expand(-1, 3, -1, -1)).last_hidden_state
        tokens = self.clip.visual_projection(self.clip.vision_model.post_layernorm(hidden))
        n = images.shape[0]
        patches, glob = tokens[:, 1:].reshape(n, self.grid, self.grid, -1), tokens[:, 0]
        if self.conv is not None:
            local, mean = self.conv(images)
            patches, glob = patches + local, glob + mean
        return patches, self.positions(), glob


def normalize(images: Tensor, cfg: ImageEncoderConfig) -> Tensor:
    """Pixels in [0, 1] -> the single-channel normalization the encoder was trained with."""
    return (images - cfg.mean) / cfg.std


def encoder_input(images: Sequence[np.ndarray], size: int, cfg: ImageEncoderConfig,
                  device: torch.device | str = "cpu") -> Tensor:
    """uint8 grayscale images -> the encoder's normalized ``(N, 1, size, size)`` input; an image that is not yet
    the square is resized and centre cropped as ingest stores them."""
    squares = [img if img.shape == (size, size) else resize_center_crop(img, size) for img in images]
    pixels = torch.from_numpy(np.stack(squares).astype(np.float32) / 255.0)[:, None]
    return normalize(pixels.to(device), cfg)


def as_batch(images: Tensor) -> Tensor:
    """(H, W), (N, H, W) or (N, 1, H, W) -> (N, 1, H, W) float."""
    images = images.float()
    if images.dim() == 2:
        images = images[None]
    if images.dim() == 3:
        images = images[:, None]
    return images

