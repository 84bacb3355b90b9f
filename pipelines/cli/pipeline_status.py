"""`chex pipeline status`: which stages `chex pipeline run` would run now and why, without running anything."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from pipelines.cli.args import existing


def add_status_parser(actions: argparse._SubParsersAction) -> None:
    status = actions.add_parser("status", help="which stages `run` would run now, and why (runs nothing)")
    status.add_argument("--config", type=Path, default=Path("configs/pipeline/demo.yaml"), help="pipeline YAML")
    status.add_argument("--json", action="store_true", help="print one JSON document (stages and a summary) instead")
    status.set_defaults(run=show_status)


def show_status(args: argparse.Namespace) -> None:
    from pipelines.redact import redact_uri
    from pipelines.workflow.config import load_pipeline_config
    from pipelines.workflow.runner import Pipeline
    from pipelines.workflow.status import pipeline_status

    cfg = load_pipeline_config(existing(args.config, "--config"))
    pipeline = Pipeline(cfg)
    stages = pipeline_status(pipeline)
    if args.json:
        summary = {"stages": len(stages), "would_run": sum(s.would_run for s in stages),
                   "workdir": str(pipeline.workdir), "tracking_uri": redact_uri(cfg.tracking())}
        doc = {"stages": [{**asdict(s), "would_run": s.would_run} for s in stages], "summary": summary}
        print(json.dumps(doc, indent=2), file=args.session.out)
    else:
        print(status_table(stages, cfg.tracking()), file=args.session.out)


def status_table(stages: list, tracking_uri: str) -> str:
    """stage | state | why, aligned, a stage's further reasons on lines of their own under its first; then where the
    runs are and how many stages would run."""
    from pipelines.cli.args import tracking_hint

    rows = [(s.name, s.state, s.reasons if s.would_run else s.notes) for s in stages]
    w_name = max([len("stage")] + [len(r[0]) for r in rows])
    w_state = max([len("state")] + [len(r[1]) for r in rows])
    lines = [f"{'stage':<{w_name}}  {'state':<{w_state}}  why"]
    for name, state, why in rows:
        why = why or [""]
        lines.append(f"{name:<{w_name}}  {state:<{w_state}}  {why[0]}".rstrip())
        lines += [f"{'':<{w_name}}  {'':<{w_state}}  {w}" for w in why[1:]]
    ran = sum(s.would_run for s in stages)
    return "\n".join([*lines, tracking_hint(tracking_uri), f"{ran} of {len(stages)} stages would run"])
