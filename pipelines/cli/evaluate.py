"""`chex evaluate`: the paper's nine tasks on a model (results JSON, table, figures, MLflow)."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.cli.args import UsageError, existing, model_folder, positive
from pipelines.redact import redact_uri


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a model on the paper's nine tasks (results JSON, table, figures, MLflow)")
    p.add_argument("--model", type=Path, default=None, help="model folder (save_pretrained); not needed for --predictor oracle / random")
    p.add_argument("--data", type=Path, required=True, help="ingest output folder (holds manifest.json and tables/)")
    p.add_argument("--config", type=Path, default=None, help="evaluation YAML (default: configs/evaluate/default.yaml settings)")
    p.add_argument("--tasks", default=None, help="comma-separated tasks or groups: all, od, sg, rc, re, rg, od_vindr, ...")
    p.add_argument("--split", default=None, help="split to score (default test); the search uses val")
    p.add_argument("--predictor", choices=("model", "oracle", "random", "shuffled"), default=None,
                   help="oracle = ground truth (the metrics' ceiling), random = chance level, shuffled = the model's "
                        "answer for another image")
    p.add_argument("--max-images", type=positive, default=None, help="at most this many images per task and split")
    p.add_argument("--no-search", action="store_true", help="keep the configured post-processing (no validation search)")
    p.add_argument("--report-policy", default=None, metavar="SET",
                   help="report prompt set for rg_mimic: 'report' (ours), 'reference' (the paper's) or a YAML file")
    p.add_argument("--labeler", default=None, help="'rules' or 'chexbert:<chexbert.pth>[,<bert-base-uncased folder>]'")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <model>/../evaluation or runs/evaluate)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: the training workdir's, else <out>/mlflow.db)")
    p.set_defaults(run=run_evaluate)




def run_evaluate(args: argparse.Namespace) -> None:
    from chex_model.typed_config import load_config
    from evaluation.config import EvalConfig
    from pipelines.evaluation_run import RESULTS, TABLE, run_evaluation
    from preprocessing.records import TABLES

    cfg = load_config(EvalConfig, existing(args.config, "--config") if args.config else None)
    overrides = {"tasks": args.tasks.split(",") if args.tasks else None, "split": args.split, "predictor": args.predictor,
                 "max_images": args.max_images, "report_prompt_set": args.report_policy, "labeler": args.labeler}
    cfg = EvalConfig(**{**cfg.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    if args.no_search:
        cfg.search = False
    if cfg.runs_model and args.model is None:
        raise UsageError(f"--model is required for --predictor {cfg.predictor} (or --predictor oracle / random)")
    if args.model is not None:
        model_folder(args.model)
    if not (args.data / TABLES).is_dir():
        raise UsageError(f"--data {args.data} has no tables/ folder: give the ingest output folder")
    cfg.preflight()
    out = args.out or (args.model.resolve().parent / "evaluation" if args.model else Path("runs/evaluate") / cfg.predictor)
    payload = run_evaluation(args.data, cfg, out, args.model, args.tracking_uri)
    print((Path(out) / TABLE).read_text())
    print(f"results: {Path(out) / RESULTS}; MLflow run {payload['mlflow_run_id']} in {redact_uri(payload['tracking_uri'])}")
