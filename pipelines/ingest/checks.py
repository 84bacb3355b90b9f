"""When an ingest must fail rather than write tables: a configured source that is absent, yields nothing, or loses
too much of itself to rejects. Every failure names the source and ends with a per-source summary, so a pipeline
learns that its data vanished instead of training on what is left."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

MISSING = "missing"   # the reject stage of an image file the metadata lists but the mirror lacks


class IngestError(RuntimeError):
    """The job cannot produce trustworthy tables: a reader failed unexpectedly (a bug: the cause is chained), a
    configured source is absent, yielded nothing, or lost too much to rejects."""


@dataclass
class SourceTally:
    """What became of one source's records."""

    source: str
    read: int = 0
    kept: int = 0
    missing: int = 0

    @property
    def rejected(self) -> int:
        """Records dropped for a reason other than a missing image file (corrupt, unreadable, not a radiograph)."""
        return self.read - self.kept - self.missing


def tally(read: Counter, kept: Counter, rejects: list[dict]) -> dict[str, SourceTally]:
    """Per source: records planned, rows written and images missing (a record is missing at most once)."""
    missing = Counter(r["source"] for r in rejects if r["stage"] == MISSING)
    return {s: SourceTally(s, read[s], kept[s], missing[s]) for s in sorted(set(read) | set(kept) | set(missing))}


def top_reasons(rejects: list[dict], source: str, n: int = 3) -> str:
    counts = Counter(r["reason"] for r in rejects if r["source"] == source)
    return "; ".join(f"{k} (x{v})" for k, v in counts.most_common(n)) or "no reject says why"


def summary(tallies: dict[str, SourceTally], rejects: list[dict]) -> str:
    """One line per source: records, rows kept, images missing, records rejected, and the commonest reasons."""
    lines = []
    for t in tallies.values():
        lines.append(f"  {t.source}: {t.read} records, {t.kept} kept, {t.missing} images missing, "
                     f"{t.rejected} rejected; commonest reasons: {top_reasons(rejects, t.source)}")
    return "\n".join(lines)


def check_missing(read: Counter, rejects: list[dict], max_fraction: float, allow_missing: bool) -> None:
    """Before any pixel is decoded: fail when a source lacks more than ``max_fraction`` of its image files and no
    partial mirror was declared (the planner knows from the file listing)."""
    if allow_missing:
        return
    missing = Counter(r["source"] for r in rejects if r["stage"] == MISSING)
    tallies = {s: SourceTally(s, read[s], read[s] - missing[s], missing[s]) for s in sorted(read)}
    check_outcome(tallies, rejects, max_fraction, False, "per source, before any image was decoded")


def check_outcome(tallies: dict[str, SourceTally], rejects: list[dict], max_fraction: float,
                  allow_missing: bool, heading: str = "per source") -> None:
    """Fail when a source kept no row, rejected more than ``max_fraction`` of its records, or (unless a partial
    mirror is declared with ``allow_missing_images``) lacks more than that fraction of its image files."""
    problems = []
    for t in tallies.values():
        if t.read and not t.kept:
            problems.append(f"source {t.source} kept none of its {t.read} records")
        elif t.rejected > max_fraction * t.read:
            problems.append(f"source {t.source}: {t.rejected} of {t.read} records rejected "
                            f"({t.rejected / t.read:.0%} > max_reject_fraction {max_fraction:.0%})")
        elif not allow_missing and t.missing > max_fraction * t.read:
            problems.append(f"source {t.source}: {t.missing} of {t.read} image files are missing "
                            f"({t.missing / t.read:.0%} > max_reject_fraction {max_fraction:.0%}); for a partial "
                            "mirror set allow_missing_images: true")
    if problems:
        raise IngestError("; ".join(problems) + f"\n{heading}:\n" + summary(tallies, rejects))
