"""What every subcommand shares: the one-line argument parser, UsageError, argument types, and where to look at
the runs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from pipelines.redact import redact_uri


class Parser(argparse.ArgumentParser):
    """Bad arguments end in one clear line (no usage dump, no traceback)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class UsageError(Exception):
    """A bad argument found after parsing (missing file, unreadable image): one line, exit code 2."""


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def image_scale(text: str) -> float:
    value = float(text)
    if not 0.02 <= value <= 2.0:
        raise argparse.ArgumentTypeError(f"must be within [0.02, 2], got {text}")
    return value


def existing(path: Path, flag: str) -> Path:
    if not path.is_file():
        raise UsageError(f"{flag} {path} does not exist")
    return path


def model_folder(path: Path, flag: str = "--model") -> Path:
    """A folder that at least looks like a checkpoint; ChEX.from_pretrained checks the rest."""
    if not (path / "config.json").is_file():
        raise UsageError(f"{flag} {path} is not a ChEX model folder (no config.json)")
    return path


def add_ray_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="Ray cluster: host:port, ray://host:port, 'auto' (the one `ray start` "
                   "ran here) or 'local' (a private instance); default: $RAY_ADDRESS, else a running local cluster, "
                   "else a private instance")


def tracking_hint(uri: str) -> str:
    """Where to look at the runs: the server's own URL for a remote store (credentials stripped), `mlflow ui` only
    for a local one (a SQLite file or a folder)."""
    if urlsplit(uri).scheme in ("http", "https", "databricks"):
        return f"MLflow: open {redact_uri(uri)} (sign in with your tracking-server user)"
    venv_mlflow = Path(sys.executable).parent / "mlflow"
    ui = f"{venv_mlflow if venv_mlflow.is_file() else 'mlflow'} ui --backend-store-uri {redact_uri(uri)}"
    return f"MLflow UI (then open http://127.0.0.1:5000): {ui}"
