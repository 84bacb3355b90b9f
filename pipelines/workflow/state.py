"""``<workdir>/pipeline_state.json``: each stage's key, status, inputs and outputs from its last run; and the error a
failed stage ends the run with."""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

STATE_FILE = "pipeline_state.json"


class PipelineState:
    """The state file, rewritten atomically after every change so a killed run leaves a readable file."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / STATE_FILE
        try:
            self.stages: dict[str, dict[str, Any]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.stages = {}

    def get(self, name: str) -> dict[str, Any]:
        return self.stages.get(name, {})

    def set(self, name: str, **entry: Any) -> None:
        self.stages[name] = entry
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.stages, indent=2, sort_keys=True))
        tmp.replace(self.path)


def attempt_of(prev: dict[str, Any], key: str, forced: bool) -> str:
    """The id of this run of a stage. A stage rerun with the key of an attempt that did not succeed (the pipeline was
    killed during it, or it failed) continues that attempt: a training stage resumes from its last checkpoint.
    Anything else (a new key, ``--from``, a success before) starts a new attempt."""
    if not forced and prev.get("key") == key and prev.get("status") in ("running", "failed") and prev.get("attempt"):
        return prev["attempt"]
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


class StageFailed(RuntimeError):
    """A stage raised: the run stops, and every earlier stage's outputs and state stay in place."""

    def __init__(self, stage: str, exc: BaseException, log_file: str = "") -> None:
        where = f" (its log: {log_file})" if log_file else ""
        super().__init__(f"stage {stage} failed: {type(exc).__name__}: {exc}{where}")
        self.stage, self.log_file = stage, log_file
