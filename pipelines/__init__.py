"""Ray jobs of the pipeline (ingestion, later training and evaluation)."""
