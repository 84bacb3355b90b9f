"""Which model answers: a registry URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``) or a model folder, turned
into a local folder plus what a person should see of it (name, version, aliases, weights digest, evaluation).

``chex query`` and ``chex serve`` resolve their model here. With nothing given: ``$CHEX_MODEL``, else the champion
of the last ``make demo`` in the demo's MLflow store.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_ENV = "CHEX_MODEL"
DEMO_MODEL = "models:/chex-demo@champion"
DEMO_PIPELINE = Path("configs/pipeline/demo.yaml")
CACHE_ENV = "CHEX_MODEL_CACHE"


class ModelNotFound(ValueError):
    """The model named cannot be found; the message says where it looked and what to do."""


@dataclass
class ModelSource:
    folder: Path
    name: str
    version: str | None = None
    aliases: list[str] = field(default_factory=list)
    source: str = ""
    evaluation_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    decided_by: str | None = None  # "metric=value" that made it champion
    tracking_uri: str | None = None  # the store a registry version came from

    @property
    def pinned(self) -> str:
        """What names exactly this model again: ``models:/NAME/VERSION`` (not an alias, which may move), or the
        folder."""
        return f"models:/{self.name}/{self.version}" if self.version else str(self.folder)

    def info(self) -> dict[str, Any]:
        from pipelines.digests import file_sha256

        weights = self.folder / "model.safetensors"
        return {"name": self.name, "version": self.version, "aliases": self.aliases, "source": self.source,
                "weights_sha256": file_sha256(weights) if weights.is_file() else None,
                "evaluation_run_id": self.evaluation_run_id, "decided_by": self.decided_by, "metrics": self.metrics}


def demo_tracking_uri() -> str:
    """The MLflow store ``make demo`` writes (configs/pipeline/demo.yaml's workdir)."""
    import yaml

    from pipelines.tracking import default_uri

    cfg = yaml.safe_load(DEMO_PIPELINE.read_text()) if DEMO_PIPELINE.is_file() else {}
    return cfg.get("tracking_uri") or default_uri(cfg.get("workdir", "runs/pipeline-demo"))


def is_registry_uri(spec: str) -> bool:
    return spec.startswith("models:/")


def check_folder(folder: Path) -> Path:
    if not (folder / "config.json").is_file():
        raise ModelNotFound(f"no ChEX checkpoint in {folder} (a folder written by save_pretrained holds config.json)")
    return folder


def resolve_model(spec: str | None, tracking_uri: str | None = None) -> ModelSource:
    """``spec`` (registry URI, folder, or None for the default) -> a local model folder and its description."""
    given = spec or os.environ.get(MODEL_ENV)
    spec = given or DEMO_MODEL
    if not is_registry_uri(spec):
        folder = check_folder(Path(spec))
        return ModelSource(folder.resolve(), folder.resolve().name, source=str(folder.resolve()))
    try:
        return _from_registry(spec, tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or demo_tracking_uri())
    except ModelNotFound as exc:
        if given:
            raise
        raise ModelNotFound(f"{exc}; without a model named, the default is the last `make demo`'s champion: run "
                            "`make demo` first") from None


def _parse(spec: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, ALIAS, None); ``models:/NAME/VERSION`` -> (NAME, None, VERSION)."""
    rest = spec.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias and "/" not in rest:
            return name, alias, None
    elif rest.count("/") == 1:
        name, version = rest.split("/")
        if name and version.isdigit():
            return name, None, version
    raise ModelNotFound(f"bad model URI {spec!r}: use models:/NAME@ALIAS or models:/NAME/VERSION")


def _from_registry(spec: str, tracking_uri: str) -> ModelSource:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias, version = _parse(spec)
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise ModelNotFound(f"no MLflow store at {tracking_uri} for {spec}")
    client = MlflowClient(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise ModelNotFound(f"{spec} is not in the registry at {tracking_uri}: {str(exc).splitlines()[0]}") from None
    from pipelines.registry import EVAL_RUN_TAG, METRIC_TAG

    eval_run = mv.tags.get(EVAL_RUN_TAG)
    metrics = {}
    if eval_run:
        try:
            metrics = {k: v for k, v in sorted(client.get_run(eval_run).data.metrics.items()) if _headline(k)}
        except MlflowException:
            metrics = {}
    return ModelSource(_download(client, tracking_uri, mv), name, str(mv.version), sorted(mv.aliases),
                       f"models:/{name}/{mv.version}", eval_run, metrics, mv.tags.get(METRIC_TAG), tracking_uri)


def _headline(key: str) -> bool:
    """A task-level metric (``od_vindr/mAP``): not a per-class value, a baseline's, or a timing."""
    return key.count("/") == 1 and not key.startswith("baseline/") and not key.endswith("/seconds")


def _download(client, tracking_uri: str, mv) -> Path:
    """The version's checkpoint folder, fetched once into the local cache (``$CHEX_MODEL_CACHE``, default
    ``~/.cache/chex-pipeline/models``) and reused after."""
    import mlflow

    store = hashlib.sha256(f"{tracking_uri}\n{mv.source}".encode()).hexdigest()[:12]  # versions of other stores differ
    cache = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache/chex-pipeline/models")) / f"{mv.name}-v{mv.version}-{store}"
    found = [p.parent for p in cache.glob("**/config.json")] if cache.is_dir() else []
    if not found:  # fetched beside the cache and renamed into it, so an interrupted fetch is never reused
        partial = cache.with_name(cache.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{mv.name}/{mv.version}", dst_path=str(partial))
        shutil.rmtree(cache, ignore_errors=True)
        partial.rename(cache)
        found = [p.parent for p in cache.glob("**/config.json")]
    if not found:
        raise ModelNotFound(f"models:/{mv.name}/{mv.version} holds no ChEX checkpoint (no config.json in its artifacts)")
    return found[0]
