"""Small helpers shared by test modules."""
from __future__ import annotations

from pathlib import Path


def write_csv(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path
