"""`chex pipeline run`: the whole workflow, skipping every stage whose inputs did not change."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import urlsplit

from pipelines.cli.args import Parser, add_ray_address, existing
from pipelines.redact import redact_uri


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="the whole workflow: synth -> ingest -> train -> evaluate -> register")
    actions = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    run = actions.add_parser("run", help="run the stages whose inputs changed (a stage with the same inputs is skipped)")
    run.add_argument("--config", type=Path, default=Path("configs/pipeline/demo.yaml"), help="pipeline YAML")
    run.add_argument("--from", dest="from_stage", default=None, help="rerun from this stage on (e.g. ingest, train:detection)")
    run.add_argument("--only", default=None, help="run just this stage (its inputs must be up to date)")
    add_ray_address(run)
    run.set_defaults(run=run_pipeline)


def run_pipeline(args: argparse.Namespace) -> None:
    from pipelines.workflow.config import load_pipeline_config
    from pipelines.workflow.runner import Pipeline

    cfg = load_pipeline_config(existing(args.config, "--config"))
    records = Pipeline(cfg).run(args.from_stage, args.only, args.address)
    for r in records:
        print(f"stage {r.name}: {'skipped (unchanged)' if r.skipped else 'ran'}")
    outputs = {r.name: r.outputs for r in records}
    if "evaluate" in outputs:
        print(Path(outputs["evaluate"]["table_file"]).read_text())
        show = Path(outputs["evaluate"].get("showcase_file", ""))
        if show.is_file():
            print(show.read_text())
    if "register" in outputs:
        reg = outputs["register"]
        print(f"registered {reg['name']} v{reg['version']} ({', '.join(reg['aliases'])}); champion v{reg['champion']}")
        venv_chex = Path(sys.executable).parent / "chex"
        print(f"Serve the champion (then open http://127.0.0.1:8000): {venv_chex if venv_chex.is_file() else 'chex'} "
              f"serve models:/{reg['name']}@champion --tracking-uri {redact_uri(cfg.tracking())}")
    print(tracking_hint(cfg.tracking()))


def tracking_hint(uri: str) -> str:
    """Where to look at the runs: the server's own URL for a remote store (credentials stripped), `mlflow ui` only
    for a local one (a SQLite file or a folder)."""
    if urlsplit(uri).scheme in ("http", "https", "databricks"):
        return f"MLflow: open {redact_uri(uri)} (sign in with your tracking-server user)"
    venv_mlflow = Path(sys.executable).parent / "mlflow"
    ui = f"{venv_mlflow if venv_mlflow.is_file() else 'mlflow'} ui --backend-store-uri {redact_uri(uri)}"
    return f"MLflow UI (then open http://127.0.0.1:5000): {ui}"
