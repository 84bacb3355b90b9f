"""MLflow tracking: where runs go and what they record.

One object (:class:`Tracking`) owns the tracking URI and the experiment and is passed explicitly (to Ray workers
too: it is plain data); it is the only place in the packages that points MLflow at a store. The helpers below
record lineage in a run: flattened params, code tags, and ingest datasets as MLflow inputs with their digests.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pipelines.ingest.manifest import code_version, read_manifest
from pipelines.redact import redact_text, redact_uri

STORE = "mlflow.db"


def default_uri(folder: Path | str) -> str:
    """A SQLite store in ``folder`` (absolute, so every process and worker finds the same file)."""
    return f"sqlite:///{Path(folder).resolve() / STORE}"


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """The experiment's id, creating it with its artifacts beside a SQLite store (``<store dir>/mlartifacts``)
    rather than in ``./mlruns`` of whatever folder the job was started from."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def client_uri(uri: str) -> str:
    """The URI MLflow is given: basic-auth userinfo in an http(s) URI moves to ``MLFLOW_TRACKING_USERNAME`` /
    ``MLFLOW_TRACKING_PASSWORD`` (how MLflow takes credentials; local Ray workers inherit them), so MLflow never
    prints or records the secret ("View run at ..." lines, run links)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or parts.username is None:
        return uri
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username))
    if parts.password is not None:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password))
    return redact_uri(uri)


@dataclass(frozen=True)
class Tracking:
    uri: str
    experiment: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "uri", client_uri(self.uri))

    @classmethod
    def in_folder(cls, folder: Path | str, experiment: str, uri: str = "") -> Tracking:
        """``uri`` when given, else the default store in ``folder``."""
        return cls(uri or default_uri(folder), experiment)

    def activate(self) -> str:
        """Point this process's MLflow at the store and the experiment (created if new); returns its id."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        experiment_id = ensure_experiment(self.uri, self.experiment)
        mlflow.set_experiment(experiment_id=experiment_id)
        return experiment_id


REPO = Path(__file__).resolve().parent.parent


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}} -> {"a.b": "1"}`` (MLflow params are flat strings, at most 6000 characters), every URI in
    a value redacted: the one road from a config to MLflow params carries no credential."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = redact_text(str(v))[:6000]
    return out


def code_tags() -> dict[str, str]:
    code = code_version(REPO)
    return {"mlflow.source.git.commit": str(code.get("git_commit")), "git_dirty": str(code.get("git_dirty")),
            "package_version": str(code.get("package_version"))}


def dataset_inputs(tables: Path, names: list[str], context: str) -> list[dict[str, Any]]:
    """The ingest manifest's entries for ``names`` (e.g. "mimic_cxr/train") as loggable dataset specs."""
    manifest = read_manifest(Path(tables)) or {}
    out = []
    for name in names:
        entry = manifest.get("datasets", {}).get(name)
        if entry:
            out.append({"name": name, "path": str((Path(tables) / entry["path"]).resolve()), "digest": entry["digest"],
                        "rows": entry["rows"], "context": context})
    return out


def log_dataset(spec: dict[str, Any]) -> None:
    """``mlflow.log_input`` of a small manifest frame (path, rows) carrying the ingest digest, not the images
    (MLflow keeps 16 characters of a dataset digest; the full sha256 goes into the input's tags)."""
    import mlflow
    import pandas as pd

    frame = pd.DataFrame([{"path": spec["path"], "rows": spec["rows"]}])
    with warnings.catch_warnings():
        # a local folder matches two equivalent source types, and a one-row frame's int column triggers a schema
        # hint meant for model signatures: both are noise for a lineage record
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted", category=UserWarning)
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        ds = mlflow.data.from_pandas(frame, source=spec["path"], name=spec["name"], digest=spec["digest"][:16])
        mlflow.log_input(ds, context=spec["context"], tags={"sha256": spec["digest"], "rows": str(spec["rows"])})


def metric_key(task: str, name: str) -> str:
    """MLflow metric names allow letters, digits, ``_-./ :`` only (``AP@0.5`` -> ``AP_at_0.5``)."""
    return re.sub(r"[^\w\-./ :]", "_", f"{task}/{name.replace('@', '_at_')}")
