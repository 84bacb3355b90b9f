"""A human-readable table of what ingest produced, read back from the Parquet files with polars."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from pipelines.ingest.job import REJECTS
from preprocessing.records import TABLES


def load_tables(out: Path, columns: list[str] | None = None) -> pl.DataFrame:
    """All ingested rows with `source` and `split` restored from the hive partitions."""
    frame = pl.scan_parquet(out / TABLES / "**" / "*.parquet", hive_partitioning=True)
    return frame.select(columns).collect() if columns else frame.collect()


def summary_table(out: Path) -> str:
    """Per source/split: images, boxes, positive labels, sentences, anatomy boxes and labels, phrases; then rejects."""
    header = ["source", "split", "images", "boxes", "pos_labels", "sentences", "region_boxes", "region_labels", "phrases"]
    lines = [" ".join(f"{h:>13}" for h in header)]
    if any((out / TABLES).rglob("*.parquet")):
        cols = ["source", "split", "boxes", "labels", "report_sentences", "region_boxes", "region_labels", "grounded_phrases"]
        stats = load_tables(out, cols).group_by("source", "split").agg(
            pl.len().alias("images"),
            pl.col("boxes").list.len().sum().alias("boxes"),
            pl.col("labels").list.eval(pl.element().struct.field("value") == 1).list.sum().sum().alias("pos_labels"),
            pl.col("report_sentences").list.len().sum().alias("sentences"),
            pl.col("region_boxes").list.len().sum().alias("region_boxes"),
            pl.col("region_labels").list.len().sum().alias("region_labels"),
            pl.col("grounded_phrases").list.len().sum().alias("phrases"),
        ).sort("source", "split")
        lines += [" ".join(f"{str(v):>13}" for v in row) for row in stats.select(header).iter_rows()]
    else:
        lines.append("(no rows written)")
    rejects = pl.read_parquet(out / REJECTS / "rejects.parquet")
    by_stage = ", ".join(f"{stage}: {n}" for stage, n in rejects.group_by("stage").len().sort("stage").iter_rows())
    lines.append(f"rejects: {rejects.height}" + (f" ({by_stage})" if by_stage else ""))
    return "\n".join(lines)
