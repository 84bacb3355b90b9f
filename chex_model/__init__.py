"""ChEX model, CLI and shared utilities."""
