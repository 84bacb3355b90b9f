"""The whole pipeline as stages: synth -> ingest -> training stages -> evaluation -> registry, skipping what has not changed."""
