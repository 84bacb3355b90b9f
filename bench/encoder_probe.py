"""Can an image encoder learn to find lesions from scratch on the synthetic data? A probe without the detector: regress
the centre of each VinDr image's largest box from the encoder's patch tokens through one learned attention query,
training encoder and readout together, and compare the L1 error with always answering the mean centre.

Prints a table per encoder: the tiny preset's encoder as shipped (CLIP ViT + conv branch), its CLIP ViT alone, the ViT
with a convolutional patch stem, a plain-PyTorch ViT of the same geometry, a small CNN.
Usage: ``python bench/encoder_probe.py --tables INGEST_DIR [--steps 800] [--lr 2e-3] [--encoders vit cnn ...]``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KINDS = ["tiny", "vit", "vit-stem", "vit-plain", "cnn"]


def lesion_images(tables: Path, splits: tuple[str, ...], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, S, S)`` of the VinDr rows with boxes and the centre of each image's largest box ``(N, 2)``."""
    import pyarrow.parquet as pq

    from pipelines.training.data import encode_row, table_paths

    images, centres = [], []
    for split in splits:
        for path in table_paths(tables, "vindr_cxr", split):
            for row in pq.read_table(path).to_pylist():
                if not row["boxes"]:
                    continue
                row.update(copy=0, source="vindr_cxr")
                images.append(encode_row(row, size, None, None)["image"])
                box = max(row["boxes"], key=lambda b: b["w"] * b["h"])
                centres.append((box["cx"], box["cy"]))
    return torch.from_numpy(np.stack(images))[:, None].float(), torch.tensor(centres)


class ConvEncoder(nn.Module):
    """Four stride-2 conv blocks: 128 px -> 8 x 8 tokens of width ``d`` (the ViT's grid)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        widths = [1, 16, 32, 48, d]
        self.net = nn.Sequential(*(nn.Sequential(nn.Conv2d(a, b, 3, 2, 1), nn.GroupNorm(8, b), nn.GELU())
                                   for a, b in zip(widths, widths[1:])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).permute(0, 2, 3, 1)


class PlainViT(nn.Module):
    """The tiny ViT's geometry (16 px patches, width ``d``, 2 pre-LN layers, 4 heads) in plain PyTorch, to tell the
    architecture apart from the Hugging Face CLIP configuration and initialization."""

    def __init__(self, d: int, grid: int = 8, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, d, 16, 16)
        self.pos = nn.Parameter(torch.randn(grid * grid, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x)
        n, d, h, w = t.shape
        return self.norm(self.blocks(t.flatten(2).transpose(1, 2) + self.pos)).view(n, h, w, d)


class ConvStem(nn.Sequential):
    """A conv patch stem for the CLIP ViT; Hugging Face's CLIP embeddings read ``patch_embedding.weight.dtype``."""

    @property
    def weight(self) -> torch.Tensor:
        return self[-1].weight


def encoder(kind: str) -> tuple[nn.Module, int, float, float]:
    """(module mapping normalized images to (N, h, w, d) tokens, d, normalization mean, std)."""
    from chex_model.chex import ChEX
    from chex_model.config import preset

    cfg = preset("tiny")
    if kind != "tiny":
        cfg.image.conv_widths = []
    model = ChEX.build(cfg)
    vit = model.image_encoder
    vit.freeze(0, False)
    d, mean, std = model.cfg.d_model, model.cfg.image.mean, model.cfg.image.std
    if kind == "cnn":
        return ConvEncoder(d), d, mean, std
    if kind == "vit-plain":
        return PlainViT(d), d, mean, std
    if kind == "vit-stem":
        width = vit.clip.vision_model.config.hidden_size
        block = [nn.Sequential(nn.Conv2d(a, b, 3, 2, 1, bias=False), nn.GroupNorm(8, b), nn.ReLU())
                 for a, b in ((3, 16), (16, 32), (32, 64))]
        vit.clip.vision_model.embeddings.patch_embedding = ConvStem(*block, nn.Conv2d(64, width, 2, 2))
    return _Tokens(vit), d, mean, std


class _Tokens(nn.Module):
    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)[0]


def probe(kind: str, train: tuple, val: tuple, steps: int, lr: float, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    net, d, mean, std = encoder(kind)
    query = nn.Parameter(torch.randn(d) / d**0.5)
    keys = nn.Linear(d, d)
    params = [*net.parameters(), query, *keys.parameters()]
    opt = torch.optim.AdamW(params, lr=lr)

    def predict(x: torch.Tensor) -> torch.Tensor:
        tokens = net((x - mean) / std)
        n, h, w, _ = tokens.shape
        ys, xs = (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
        attn = (keys(tokens.reshape(n, h * w, d)) @ query / d**0.5).softmax(-1)
        return attn @ grid

    (xt, yt), (xv, yv) = train, val
    rng = np.random.default_rng(seed)
    net.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(xt), 8, replace=False))
        loss = (predict(xt[idx]) - yt[idx]).abs().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        return {"train": float((predict(xt[:256]) - yt[:256]).abs().sum(-1).mean()),
                "val": float((predict(xv) - yv).abs().sum(-1).mean()),
                "mean_centre": float((yv - yt.mean(0)).abs().sum(-1).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=Path, required=True, help="ingest output with VinDr-CXR tables")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--encoders", nargs="+", default=["tiny", "vit", "cnn"], choices=KINDS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    train = lesion_images(args.tables, ("train",), 128)
    val = lesion_images(args.tables, ("val", "test"), 128)
    print(f"{len(train[0])} training / {len(val[0])} held-out images with boxes; {args.steps} steps of 8, lr {args.lr}")
    print(f"{'encoder':<10} | {'train L1':>8} | {'held-out L1':>11} | {'mean centre L1':>14}")
    print("-" * 54)
    for kind in args.encoders:
        r = probe(kind, train, val, args.steps, args.lr)
        print(f"{kind:<10} | {r['train']:>8.3f} | {r['val']:>11.3f} | {r['mean_centre']:>14.3f}", flush=True)


if __name__ == "__main__":
    main()
