"""`chex pipeline run`: the whole workflow, skipping every stage whose inputs did not change."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pipelines.cli.args import Parser, add_ray_address, existing, tracking_hint
from pipelines.cli.pipeline_status import add_status_parser
from pipelines.redact import redact_uri


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="the whole workflow: synth -> ingest -> train -> evaluate -> register")
    actions = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    run = actions.add_parser("run", help="run the stages whose inputs changed (a stage with the same inputs is skipped)")
    run.add_argument("--config", type=Path, default=Path("configs/pipeline/demo.yaml"), help="pipeline YAML")
    run.add_argument("--from", dest="from_stage", default=None, help="rerun from this stage on (e.g. ingest, train:detection)")
    run.add_argument("--only", default=None, help="run just this stage (its inputs must be up to date)")
    add_ray_address(run)
    run.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                     help="also show Ray's, MLflow's and the workers' own logs on the console (always in <workdir>/logs)")
    run.set_defaults(run=run_pipeline)
    add_status_parser(actions)


def run_pipeline(args: argparse.Namespace) -> None:
    from pipelines.workflow.config import load_pipeline_config
    from pipelines.workflow.runner import Pipeline

    cfg = load_pipeline_config(existing(args.config, "--config"))
    session, t0 = args.session, time.monotonic()
    try:
        records = Pipeline(cfg).run(args.from_stage, args.only, args.address, session)
    finally:
        session.display.close()  # the summary prints below the display, not into it
    print(closing_summary(cfg, records, time.monotonic() - t0), file=session.out)


def closing_summary(cfg, records: list, seconds: float) -> str:
    """What a run ends with: the stages, the evaluation's headline table with where everything else is, one showcase
    image, the registered version and how to serve it, and where the tracking UI is."""
    from pipelines.console.rows import clock

    work = Path(cfg.workdir)
    ran = sum(not r.skipped for r in records)
    lines = [f"Pipeline: {len(records)} stages, {ran} ran, {len(records) - ran} skipped (unchanged), {clock(seconds)}; "
             f"logs: {_shown(work / 'logs')}/"]
    outputs = {r.name: r.outputs for r in records}
    if "evaluate" in outputs:
        lines += _evaluation(outputs["evaluate"])
    if "register" in outputs:
        reg = outputs["register"]
        venv_chex = Path(sys.executable).parent / "chex"
        lines += [f"Registered {reg['name']} v{reg['version']} ({', '.join(reg['aliases'])}); champion v{reg['champion']}",
                  f"Serve the champion (then open http://127.0.0.1:8000): {venv_chex if venv_chex.is_file() else 'chex'} "
                  f"serve models:/{reg['name']}@champion --tracking-uri {redact_uri(cfg.tracking())}"]
    if "deploy" in outputs and outputs["deploy"].get("url"):
        lines.append(f"Served at {outputs['deploy']['url']}")
    return "\n".join([*lines, tracking_hint(cfg.tracking())])


def _evaluation(ev: dict) -> list[str]:
    """The headline metric of each task (the full table, figures and showcase are files), and the first showcase
    image."""
    from evaluation.table import headline_rows

    results = json.loads(Path(ev["results_file"]).read_text())
    folder = Path(ev["table_file"]).parent
    lines = [f"Evaluation on the {results.get('split', 'test')} split (every metric: {_shown(Path(ev['table_file']))}; "
             f"figures: {_shown(folder / 'figures')}/):", headline_rows(results["tasks"], results.get("baselines"))]
    show = Path(ev.get("showcase_file", ""))
    text = show.read_text().splitlines() if show.is_file() else []
    if len(text) > 1:
        cut = next((i for i, ln in enumerate(text[2:], 2) if ln.startswith("[")), len(text))
        block = text[1:cut]
        lines += [f"{text[0]} (the first; all: {_shown(folder / 'showcase.md')}):", *block]
    return lines


def _shown(path: Path) -> str:
    """A path as short as it reads: relative to the working folder when under it."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
