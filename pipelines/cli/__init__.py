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
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pipelines.redact import RedactFilter

    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactFilter())   # no credential in a URI reaches the console or a log file
    logging.getLogger("openjpeg").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
        print(f"chex {args.command}: error: {exc} (earlier stages' results are kept: rerun to continue from there)", file=sys.stderr)
        return 1
    except (ConfigError, CheckpointError, FileNotFoundError, MissingJavaError, RayUnavailable,
            IngestError) as exc:
        print(f"chex {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
