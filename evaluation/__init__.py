"""Scoring a trained ChEX on the paper's nine benchmark tasks (chex-reference.md §5)."""
