"""Parquet -> batches -> model: training config, data feed, augmentation, collate, engines, the Trainer, stages, calibration, sweeps."""
