"""Reading the datasets' CSVs: plain or gzip, all columns as strings so odd values never abort a whole file."""
from __future__ import annotations

from pathlib import Path

import polars as pl


def find_table(root: Path, name: str) -> Path | None:
    """`name` (e.g. `x.csv.gz`) or its uncompressed `x.csv` under root (users often keep uncompressed copies)."""
    for candidate in (root / name, root / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def read_csv_strings(path: Path) -> pl.DataFrame:
    """All cells as strings (empty -> null); typed parsing happens per row where a bad cell can be rejected."""
    return pl.read_csv(path, infer_schema=False, truncate_ragged_lines=True)


def parse_float(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    return float(value)
