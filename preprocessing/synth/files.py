"""Byte-deterministic file writers: the same seed must give identical raw files (no timestamps in gzip/zip)."""
from __future__ import annotations

import csv
import gzip
import io
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

ZIP_DATE = (2024, 1, 1, 0, 0, 0)


def csv_text(header: Sequence[str] | str, rows: Iterable[Sequence[object]]) -> str:
    """CSV with '\\n' line ends; a str header is written verbatim (NIH's odd headers need that)."""
    buf = io.StringIO()
    if isinstance(header, str):
        buf.write(header + "\n")
    else:
        csv.writer(buf, lineterminator="\n").writerow(header)
    writer = csv.writer(buf, lineterminator="\n")
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")


def write_gzip_text(path: Path, text: str) -> None:
    """gzip with mtime 0 and no embedded file name, so output bytes depend on content only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(text.encode("utf-8"))


def write_zip(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    """Zip with a fixed member date, sorted member names and deflate compression."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
