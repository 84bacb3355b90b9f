"""`chex query`: text prompts, boxes, box + text, or a full grounded report on one X-ray; JSON out, a picture drawn."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.cli.args import UsageError, positive

PRECISIONS = ("auto", "fp32", "bf16", "int8")  # chex_model.precision.PRECISIONS, kept here so --help imports no torch


def _box(text: str) -> tuple[float, float, float, float]:
    from chex_model.box_input import validate_box

    try:
        return validate_box([float(v) for v in text.split(",")])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad box {text!r}: {exc}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("query", help="ask a trained model about one X-ray: text prompts, boxes, or a full report")
    q.add_argument("image", type=Path, help="JPEG, PNG or DICOM file")
    q.add_argument("--prompt", action="append", default=[], help="text query (repeatable), e.g. 'Pleural effusion'")
    q.add_argument("--box", action="append", type=_box, default=[], help="box query cx,cy,w,h normalized to the image (repeatable)")
    q.add_argument("--box-prompt", nargs=2, action="append", default=[], metavar=("CX,CY,W,H", "TEXT"),
                   help="box + text query: the box's ROI fused with the prompt (repeatable)")
    q.add_argument("--classify", nargs=2, action="append", default=[], metavar=("POSITIVE", "NEGATIVE"),
                   help="also give P(POSITIVE) vs NEGATIVE for every answer (repeatable)")
    q.add_argument("--report", nargs="?", const="report", default=None, metavar="PROMPT_SET",
                   help="write a full grounded report (built-in set name or YAML path; default 'report')")
    q.add_argument("--model", default=None, help="models:/NAME@ALIAS, models:/NAME/VERSION or a model folder "
                   "(default: $CHEX_MODEL, else the champion of the last `make demo`)")
    q.add_argument("--tracking-uri", default=None, help="MLflow store of a models:/ URI (default $MLFLOW_TRACKING_URI, "
                                                       "else the demo's)")
    q.add_argument("--out", type=Path, default=None, help="also draw the answers on the X-ray into this PNG")
    q.add_argument("--beams", type=positive, default=1, help="beam width (1 = greedy)")
    q.add_argument("--max-tokens", type=positive, default=None, help="longest sentence in tokens")
    q.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="weights for inference: auto (int8 on an x86 CPU, bf16 on a GPU), fp32, bf16 or int8")
    q.set_defaults(run=run_query)


def _checked_inputs(args: argparse.Namespace):
    """The box + text pairs and the resolved model, or a UsageError naming the bad argument."""
    try:
        box_prompts = [(_box(b), t) for b, t in args.box_prompt]
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"argument --box-prompt: {exc}") from None
    if not (args.prompt or args.box or box_prompts or args.report):
        raise UsageError("give --prompt, --box, --box-prompt or --report")
    if args.image.is_dir():
        raise UsageError(f"image {args.image} is a directory, not an image file")
    if not args.image.is_file():
        raise UsageError(f"image {args.image} not found")
    from pipelines.serving.model_source import ModelNotFound, resolve_model

    try:
        return box_prompts, resolve_model(args.model, args.tracking_uri)
    except ModelNotFound as exc:
        raise UsageError(f"{exc} (pass --model)") from None


def run_query(args: argparse.Namespace) -> None:
    box_prompts, source = _checked_inputs(args)  # before the heavy imports: a bad argument answers at once
    model_dir = source.folder
    from chex_model.chex import ChEX
    from chex_model.draw import Annotation, render
    from chex_model.inference import prepare_image
    from chex_model.precision import apply_precision
    from preprocessing.image_io import ImageDecodeError

    model = ChEX.from_pretrained(model_dir)
    try:  # the very pixels ingest would store for this file (same decode, same resize)
        prepared = prepare_image(args.image, model.image_encoder.image_size)
    except (ImageDecodeError, ValueError, OSError) as exc:
        raise UsageError(f"cannot read image {args.image}: {exc}") from None
    try:
        apply_precision(model, args.precision)
    except ValueError as exc:
        raise UsageError(f"argument --precision: {exc}") from None
    out: dict = {"image": str(args.image), "model": {"name": source.name, "version": source.version,
                                                     "folder": str(model_dir)}}
    notes: list[Annotation] = []
    gen = {"max_new_tokens": args.max_tokens, "num_beams": args.beams}
    if args.prompt or args.box or box_prompts:
        results = model.query(prepared, args.prompt, args.box, box_prompts=box_prompts,
                              classes=[tuple(c) for c in args.classify], **gen)
        out["results"] = [r.to_dict() for r in results]
        notes += [Annotation(r.prompt or "box", r.box, r.sentence) for r in results]
    if args.report:
        rep = model.report(prepared, args.report, **gen)
        out["report"] = rep.to_dict()
        notes += [Annotation(s.query, s.box if s.finding else None, s.sentence) for s in rep.sentences]
        if rep.undetermined:
            notes.append(Annotation("cannot tell", None, ", ".join(rep.undetermined)))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        render(prepared.original, notes).save(args.out)
        out["picture"] = str(args.out)
    print(json.dumps(out, indent=2))
