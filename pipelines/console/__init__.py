"""The console of a run: the progress display, quiet logging and per-stage log files."""
