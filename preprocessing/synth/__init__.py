"""Synthetic generator that writes every raw source in its real on-disk layout from one shared ground truth."""
