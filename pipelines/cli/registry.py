"""`chex register` (an evaluated model into the MLflow Model Registry) and `chex lineage` (its chain back to raw data)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pipelines.cli.args import UsageError, existing, model_folder


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("register", help="register an evaluated model in the MLflow Model Registry (candidate; champion if better)")
    p.add_argument("--model", type=Path, required=True, help="model folder (save_pretrained)")
    p.add_argument("--results", type=Path, required=True, help="the results.json of its chex evaluate run")
    p.add_argument("--name", default="chex", help="registered model name (default chex)")
    p.add_argument("--metric", default="rg_mimic/METEOR", help="task/metric that decides champion (default rg_mimic/METEOR)")
    p.add_argument("--lower-is-better", action="store_true", help="the metric improves downwards")
    p.set_defaults(run=run_register)

    lin = sub.add_parser("lineage", help="registered model -> evaluation -> training runs -> dataset digests -> raw inputs")
    lin.add_argument("model_uri", help="models:/<name>@<alias> or models:/<name>/<version>")
    lin.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"), help="MLflow store (default $MLFLOW_TRACKING_URI)")
    lin.add_argument("--json", action="store_true", help="print the chain as JSON")
    lin.set_defaults(run=run_lineage)


def run_register(args: argparse.Namespace) -> None:
    import mlflow

    from pipelines.registry import register, results_metric
    from pipelines.tracking import Tracking, code_tags

    model_folder(args.model)
    try:
        results = json.loads(existing(args.results, "--results").read_text())
        value = results_metric(results, args.metric)
    except (KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"--results {args.results} has no value for --metric {args.metric} ({exc})") from None
    if value != value:
        raise UsageError(f"--metric {args.metric} is NaN in {args.results}: pick a task that had samples")
    Tracking(results["tracking_uri"], "chex-registry").activate()
    with mlflow.start_run(run_name=f"register-{args.name}", tags={**code_tags(), "model_dir": str(args.model.resolve())}):
        reg = register(args.model, args.name, args.metric, value, results.get("mlflow_run_id"), not args.lower_is_better)
    print(f"registered {reg.name} v{reg.version} ({args.metric} = {value:.4g}) with aliases {', '.join(reg.aliases)}; "
          f"champion: v{reg.champion_version}")


def run_lineage(args: argparse.Namespace) -> None:
    from mlflow.exceptions import MlflowException

    from pipelines.lineage import format_lineage, model_lineage

    if not args.tracking_uri:
        raise UsageError("give --tracking-uri (or set MLFLOW_TRACKING_URI)")
    try:
        chain = model_lineage(args.model_uri, args.tracking_uri)
    except (ValueError, MlflowException) as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    print(json.dumps(chain, indent=2) if args.json else format_lineage(chain))
