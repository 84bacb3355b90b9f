"""Reading members of a dataset that ships as a zip or as an extracted folder, through one call.

MIMIC-CXR reports (`mimic-cxr-reports.zip`) and Chest ImaGenome scene graphs (`scene_graph.zip`) are distributed
as zips with hundreds of thousands of members; users often extract them, sometimes not.
"""
from __future__ import annotations

import zipfile
from functools import lru_cache
from pathlib import Path

from preprocessing.records import relative


@lru_cache(maxsize=8)
def _open_zip(path: str, mtime_ns: int, size: int) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


def read_member(container: str, member: str) -> bytes:
    """Bytes of `member` inside a zip or a folder. Open zips are cached per process (parsing a 242k-entry central
    directory per read would dominate), keyed on mtime and size so a rewritten archive is never read stale."""
    if container.endswith(".zip"):
        st = Path(container).stat()
        return _open_zip(container, st.st_mtime_ns, st.st_size).read(member)
    return (Path(container) / member).read_bytes()


def location(container: str, member: str, raw_root: Path) -> str:
    """How rejects name a member: `<container relative to raw>::<member>` for zips, a plain relative path otherwise."""
    if container.endswith(".zip"):
        return f"{relative(Path(container), raw_root)}::{member}"
    return relative(Path(container) / member, raw_root)
