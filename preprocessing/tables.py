"""The one way the datasets' CSV tables are read, as users have them: ``.csv`` or ``.csv.gz``, LF or CRLF line
ends, with or without a UTF-8 byte-order mark, quoted fields. Every cell is a string so odd values never abort a
whole file; typed parsing happens per row, where a bad cell can become a reject.

The bytes are normalized once (gunzip, BOM, CRLF), so a table and its re-saved copy give the same cells.
"""
from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Sequence
from pathlib import Path

import polars as pl

_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"


class TableError(ValueError):
    """A table that cannot be used: unreadable, not CSV, not UTF-8, or without a column the reader needs."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"table {path}: {reason}")


def table_candidates(name: str) -> tuple[str, str]:
    """``x.csv`` -> (``x.csv``, ``x.csv.gz``); ``x.csv.gz`` -> (``x.csv.gz``, ``x.csv``): the shipped name first."""
    plain = name.removesuffix(".gz")
    return (name, plain) if name.endswith(".gz") else (name, f"{name}.gz")


def find_table(root: Path, *names: str) -> Path | None:
    """The first of ``names`` under root, each as shipped or (un)compressed (users keep both kinds of copy)."""
    for name in names:
        for candidate in table_candidates(name):
            if (root / candidate).is_file():
                return root / candidate
    return None


def glob_tables(root: Path, pattern: str) -> list[Path]:
    """Tables matching ``pattern`` (a ``*.csv`` glob) below root, compressed or not, sorted by path."""
    return sorted({*root.rglob(pattern), *root.rglob(f"{pattern}.gz")})


def table_bytes(path: Path) -> bytes:
    """The file's text as UTF-8 bytes: decompressed (gzip by its magic number, whatever the name), without a
    byte-order mark, with LF line ends."""
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise TableError(path, f"broken gzip data ({exc})") from exc
    return data.removeprefix(_BOM).replace(b"\r\n", b"\n")


def read_csv_strings(path: Path, required: Sequence[str] = ()) -> pl.DataFrame:
    """A table with a header, all cells as strings (empty -> null); TableError when it cannot be parsed or lacks
    one of the ``required`` columns."""
    try:
        frame = pl.read_csv(io.BytesIO(table_bytes(path)), infer_schema=False, truncate_ragged_lines=True)
    except pl.exceptions.PolarsError as exc:
        raise TableError(path, f"not a readable CSV ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise TableError(path, f"missing column(s) {missing}; it has {frame.columns[:12]}")
    return frame


def read_csv_rows(path: Path) -> list[list[str]]:
    """The data rows of a table read by position (the header is skipped): for headers a CSV parser cannot name,
    such as NIH's ``OriginalImage[Width,Height]`` with commas inside the brackets. Blank lines are not rows."""
    try:
        return [row for row in csv.reader(io.StringIO(table_bytes(path).decode("utf-8"))) if row][1:]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TableError(path, f"not a readable UTF-8 CSV ({exc})") from exc


def parse_float(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    return float(value)
