"""The one way the datasets' CSV tables are read, as users have them: ``.csv`` or ``.csv.gz``, LF or CRLF line
ends, with or without a UTF-8 byte-order mark, quoted fields. Every cell is a string so odd values never abort a
whole file; typed parsing happens per row, where a bad cell can become a reject.

The bytes are normalized once (gunzip, BOM, CRLF), so a table and its re-saved copy give the same cells.
"""
from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
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


def _csv_rows(path: Path) -> list[list[str]]:
    """Every non-blank row, header included, as cells (no column names needed)."""
    try:
        return [row for row in csv.reader(io.StringIO(table_bytes(path).decode("utf-8"))) if row]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TableError(path, f"not a readable UTF-8 CSV ({exc})") from exc


def read_csv_rows(path: Path) -> list[list[str]]:
    """The data rows of a table read by position (the header is skipped). Blank lines are not rows."""
    return _csv_rows(path)[1:]


_BRACKETS = re.compile(r"\[([^\]]*)\]")


def span_columns(header: list[str]) -> list[tuple[str, slice]]:
    """Header cells -> (column name, the data cells it covers), in order. NIH names a group of values with a
    bracketed list (``OriginalImage[Width,Height]``, ``Bbox [x,y,w,h]``): such a name covers one data cell per list
    item, whether the file splits it at its commas (as shipped) or quotes it whole. Empty names (NIH's trailing
    commas) cover one cell each and are left out."""
    out: list[tuple[str, slice]] = []
    i = pos = 0
    while i < len(header):
        name, i = header[i], i + 1
        opened = name.rfind("[")
        if opened >= 0 and "]" not in name[opened:]:   # split at its commas: re-join it up to the closing bracket
            end = next((j for j in range(i, len(header)) if "]" in header[j]), None)
            if end is not None:
                name, i = ",".join([name, *header[i:end + 1]]), end + 1
        group = _BRACKETS.search(name)
        width = group.group(1).count(",") + 1 if group else 1
        if name.strip():
            out.append((name.strip(), slice(pos, pos + width)))
        pos += width
    return out


@dataclass(frozen=True)
class SpanTable:
    """A table read by column name where a name may cover several cells (see :func:`span_columns`)."""

    columns: dict[str, slice]
    rows: list[list[str]]

    def has(self, row: list[str], names: Sequence[str]) -> bool:
        """Whether the row reaches every cell of these columns (a short row does not)."""
        return all(self.columns[n].stop <= len(row) for n in names)

    def cell(self, row: list[str], name: str) -> str:
        start = self.columns[name].start
        return row[start] if start < len(row) else ""

    def cells(self, row: list[str], name: str) -> list[str]:
        return row[self.columns[name]]


def read_span_table(path: Path, required: Sequence[str]) -> SpanTable:
    """A table whose header :func:`span_columns` can name, so re-saved copies with reordered or extra columns read
    the same; TableError when a ``required`` column is missing or named twice."""
    header, *rows = _csv_rows(path) or [[]]
    spans = span_columns(header)
    names = [n for n, _ in spans]
    missing = [c for c in required if c not in names]
    if missing:
        raise TableError(path, f"missing column(s) {missing}; it has {names[:12]}")
    twice = [c for c in required if names.count(c) > 1]
    if twice:
        raise TableError(path, f"column(s) {twice} appear more than once, so which to read is unclear")
    return SpanTable(dict(reversed(spans)), rows)   # reversed: a repeated optional name keeps its first place


def parse_float(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    return float(value)
