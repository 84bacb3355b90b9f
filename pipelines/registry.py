"""The MLflow Model Registry side of the pipeline: a ChEX model as a pyfunc that answers queries (logged from code,
``pipelines/pyfunc_model.py``), registered with the alias ``candidate`` and promoted to ``champion`` only when its
evaluation beats the current champion's."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

log = logging.getLogger(__name__)
CANDIDATE, CHAMPION = "candidate", "champion"
METRIC_TAG, EVAL_RUN_TAG = "eval_metric", "evaluation_run_id"
# the wrapper's source, logged as text and run on load (not imported here: it calls mlflow.models.set_model)
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")


@dataclass
class Registration:
    name: str
    version: str
    aliases: list[str]
    champion_version: str | None


def results_metric(results: dict[str, Any], metric: str) -> float:
    """The value of ``task/metric`` (e.g. ``rg_mimic/METEOR``) in an evaluation's results; KeyError when absent."""
    task, _, key = metric.partition("/")
    return float(results["tasks"][task]["metrics"][key]["value"])


def log_pyfunc(model_dir: Path) -> str:
    """Log the model folder as a pyfunc in the active run; returns its model URI. The wrapper is logged as code
    (``pipelines/pyfunc_model.py``, models from code), not pickled: loading a registered version unpickles nothing."""
    info = mlflow.pyfunc.log_model(
        name="chex", python_model=MODEL_CODE,
        artifacts={"chex": str(Path(model_dir).resolve())},  # the key pyfunc_model.ARTIFACT reads
        pip_requirements=["chex-pipeline", f"mlflow=={mlflow.__version__}"],
    )
    return info.model_uri


def register(model_dir: Path, name: str, metric: str, value: float, evaluation_run_id: str | None = None,
             higher_is_better: bool = True) -> Registration:
    """Log + register the model in the active run, alias it ``candidate``, and move ``champion`` to it when
    ``value`` beats the champion's recorded value of ``metric`` (or there is no champion yet)."""
    client = mlflow.MlflowClient()
    uri = log_pyfunc(model_dir)
    mv = mlflow.register_model(uri, name, tags={METRIC_TAG: f"{metric}={value!r}",
                                                 **({EVAL_RUN_TAG: evaluation_run_id} if evaluation_run_id else {})})
    client.set_registered_model_alias(name, CANDIDATE, mv.version)
    champion = champion_value(client, name, metric)
    better = champion is None or (value > champion[1] if higher_is_better else value < champion[1])
    if better:
        client.set_registered_model_alias(name, CHAMPION, mv.version)
        log.info("%s v%s is the new champion (%s %s vs %s)", name, mv.version, metric, value, champion and champion[1])
    aliases = [CANDIDATE] + ([CHAMPION] if better else [])
    return Registration(name, str(mv.version), aliases, str(mv.version) if better else champion[0] if champion else None)


def champion_value(client: mlflow.MlflowClient, name: str, metric: str) -> tuple[str, float] | None:
    """(version, value of ``metric``) of the current champion; None without a champion or a comparable record."""
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None
    recorded = mv.tags.get(METRIC_TAG, "")
    key, _, value = recorded.partition("=")
    if key != metric or not value:
        return None
    return str(mv.version), float(value)
