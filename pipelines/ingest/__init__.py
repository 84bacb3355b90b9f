"""raw files -> records -> Parquet: the Ray Data ingest job, its per-record work, schema, manifest and summary."""
