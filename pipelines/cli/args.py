"""What every subcommand shares: the one-line argument parser, UsageError, and argument types."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn


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
