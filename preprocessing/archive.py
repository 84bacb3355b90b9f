"""Reading members of a dataset that ships as a zip or as an extracted folder, through one call.

MIMIC-CXR reports (`mimic-cxr-reports.zip`) and Chest ImaGenome scene graphs (`scene_graph.zip`) are distributed
as zips with hundreds of thousands of members; users often extract them, sometimes not.
"""
from __future__ import annotations

import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

from preprocessing.records import relative

# what zipfile raises on a bad member: a bad CRC or header (BadZipFile), a broken deflate stream (zlib.error), a
# cut stream (EOFError), an encrypted member (RuntimeError) or a method it lacks, such as the Deflate64 of
# Windows' own zip tool for large archives (NotImplementedError, a RuntimeError)
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError)


class ArchiveError(OSError):
    """A zip member that cannot be read: bad data, to be rejected like an unreadable file, never a crash."""


@lru_cache(maxsize=8)
def _open_zip(path: str, mtime_ns: int, size: int) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


def read_member(container: str, member: str) -> bytes:
    """Bytes of `member` inside a zip or a folder. Open zips are cached per process (parsing a 242k-entry central
    directory per read would dominate), keyed on mtime and size so a rewritten archive is never read stale.
    A member that is there but cannot be read raises ArchiveError (an OSError); a missing one KeyError."""
    if container.endswith(".zip"):
        st = Path(container).stat()
        try:
            return _open_zip(container, st.st_mtime_ns, st.st_size).read(member)
        except _ZIP_ERRORS as exc:
            raise ArchiveError(f"zip member {member} cannot be read ({type(exc).__name__}: {exc})") from exc
    return (Path(container) / member).read_bytes()


def location(container: str, member: str, raw_root: Path) -> str:
    """How rejects name a member: `<container relative to raw>::<member>` for zips, a plain relative path otherwise."""
    if container.endswith(".zip"):
        return f"{relative(Path(container), raw_root)}::{member}"
    return relative(Path(container) / member, raw_root)
