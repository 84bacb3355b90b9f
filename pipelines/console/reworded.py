"""Library warnings that matter to the user, said once on the console in our words with what to do (the original
stays in the stage's log file). Warnings that come from our own choices are not here: they are fixed where they
arise."""
from __future__ import annotations

import logging
import re
from typing import TextIO

# (logger prefix, pattern in the message, what we say)
REWORDED: tuple[tuple[str, re.Pattern, str], ...] = (
    ("ray", re.compile(r"killed due to the node running low on memory|OutOfMemoryError|ray memory monitor", re.I),
     "Ray killed a task or worker for lack of memory; it retries, but a stage that keeps failing needs more memory "
     "per worker: lower micro_batch (training) or batch_size (ingest), or give the nodes more memory."),
    ("ray", re.compile(r"Spilled \d+ MiB|spilling objects", re.I),
     "Ray is spilling objects to disk (the object store is full): the run goes on, slower; give Ray more memory "
     "(ray start --object-store-memory) or lower the ingest batch_size."),
    ("mlflow", re.compile(r"Failed to (log|upload)|Connection.*(refused|reset)|Max retries exceeded", re.I),
     "MLflow could not reach the tracking server or artifact store; results are kept locally in the workdir, "
     "check the tracking URI and credentials (docs/pipeline.md)."),
)


class Reworder:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.said: set[int] = set()

    def check(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            return
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return
        for i, (prefix, pattern, ours) in enumerate(REWORDED):
            if i not in self.said and record.name.split(".")[0] == prefix and pattern.search(message):
                self.said.add(i)
                self.stream.write(f"warning: {ours} (details: the stage's log file)\n")
                self.stream.flush()
