"""`chex convert chexzero`: OpenAI-format CLIP weights (CheXzero) -> the Hugging Face folder training loads as clip_dir."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.cli.args import Parser, UsageError, existing

TOKENIZER_NOTE = (
    "note: {out} has no tokenizer files yet, and clip_dir needs them. CheXzero uses the standard OpenAI CLIP vocabulary: "
    "rerun with --tokenizer <local copy of openai/clip-vit-base-patch32> --force, or copy that folder's tokenizer files "
    "(vocab.json, merges.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json) into {out}"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert pretrained weights into the folders training loads")
    kinds = p.add_subparsers(dest="source", required=True, parser_class=Parser)
    c = kinds.add_parser("chexzero",
                         help="an OpenAI-format CLIP state dict (CheXzero's .pt) -> a Hugging Face CLIPModel folder")
    c.add_argument("--checkpoint", type=Path, required=True, metavar="FILE",
                   help="the .pt file (torch.save of the CLIP model's state_dict)")
    c.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder (e.g. pretrained/chexzero, the clip_dir of training)")
    c.add_argument("--tokenizer", type=Path, default=None, metavar="DIR",
                   help="a Hugging Face CLIP tokenizer folder to copy in (e.g. a local openai/clip-vit-base-patch32)")
    c.add_argument("--force", action="store_true",
                   help="write into a non-empty --out (files of the same names are replaced)")
    c.set_defaults(run=run_chexzero)


def _check_paths(args: argparse.Namespace) -> None:
    existing(args.checkpoint, "--checkpoint")
    if args.tokenizer is not None and not args.tokenizer.is_dir():
        raise UsageError(f"--tokenizer {args.tokenizer} is not a folder")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder")
    if args.out.is_dir() and any(args.out.iterdir()) and not args.force:
        raise UsageError(f"--out {args.out} is not empty (pass --force to write into it)")


def run_chexzero(args: argparse.Namespace) -> None:
    from chex_model.openai_clip import OpenAIClipError, convert_chexzero

    _check_paths(args)
    try:
        s = convert_chexzero(args.checkpoint, args.out, args.tokenizer)
    except OpenAIClipError as exc:
        raise UsageError(str(exc)) from None
    v, t = s["vision"], s["text"]
    print(f"wrote {args.out}: CLIPModel, {s['parameters']:,} parameters, {s['projection_dim']}-d embeddings; "
          f"vision ViT {v['layers']} layers x {v['width']} ({v['heads']} heads), patch {v['patch_size']}, "
          f"image {v['image_size']}; text {t['layers']} layers x {t['width']} ({t['heads']} heads), "
          f"context {t['context']}, vocabulary {t['vocab']}")
    if s["tokenizer"] is None:
        print(TOKENIZER_NOTE.format(out=args.out))
