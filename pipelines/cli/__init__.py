"""The `chex` command: one entry point, one module per subcommand (each adds its parser and its ``run``)."""
from __future__ import annotations

import logging
import os
import sys

from pipelines.cli import convert, evaluate, ingest, pipeline, query, registry, serve, synth, train
from pipelines.cli.args import Parser, UsageError

SUBCOMMANDS = (synth, ingest, train, evaluate, pipeline, registry, query, serve, convert)


def build_parser() -> Parser:
    parser = Parser(prog="chex", description="ChEX pipeline: synthetic data, ingestion, queries against a trained model.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs (Ray, MLflow, DeepSpeed) on the console")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pipelines.console.logs import console_session

    # `pipeline` has its display and log files: our info lines and every library's go there, our warnings to the
    # console; the other commands show our info and libraries' warnings
    levels = (logging.WARNING, None) if args.command == "pipeline" else (logging.INFO, logging.WARNING)
    with console_session(args.verbose, *levels) as session:
        args.session = session
        logging.getLogger("openjpeg").setLevel(logging.WARNING)
        return _run(args)


def _run(args) -> int:
    from chex_model.checkpoint import CheckpointError
    from chex_model.typed_config import ConfigError
    from evaluation.meteor import MissingJavaError
    from pipelines.ingest.checks import IngestError
    from pipelines.ray_runtime import RayUnavailable
    from pipelines.workflow.state import StageFailed

    try:
        args.run(args)
    except UsageError as exc:
        print(f"chex {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except StageFailed as exc:
        print(f"chex {args.command}: error: {exc}; earlier stages' results are kept: rerun to continue from there",
              file=sys.stderr)
        return 1
    except (ConfigError, CheckpointError, FileNotFoundError, MissingJavaError, RayUnavailable,
            IngestError) as exc:
        print(f"chex {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
