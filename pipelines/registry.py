"""The MLflow Model Registry side of the pipeline: a ChEX model as a pyfunc that answers queries, registered with the
alias ``candidate`` and promoted to ``champion`` only when its evaluation beats the current champion's."""
from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)
CANDIDATE, CHAMPION = "candidate", "champion"
METRIC_TAG, EVAL_RUN_TAG = "eval_metric", "evaluation_run_id"


def _image(value: Any) -> np.ndarray:
    """PNG/JPEG bytes, or base64 text of them (what a REST client sends) -> pixels. Never a path: a served pyfunc
    would otherwise read whatever server file a request names."""
    from PIL import Image

    try:
        data = base64.b64decode(value, validate=True) if isinstance(value, str) else bytes(value)
    except ValueError:
        raise ValueError("image: send the file's bytes or their base64 text (a path is never read)") from None
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"))


class ChexPyfunc(mlflow.pyfunc.PythonModel):
    """Rows with ``image`` (bytes or base64), optional ``prompts`` (list of text queries), ``boxes`` (list of
    normalized cx, cy, w, h) and ``report`` (bool) -> one dict per row: ``answers`` (box + sentence per query) and,
    when asked, the grounded ``report``."""

    def load_context(self, context) -> None:
        from chex_model.chex import ChEX

        self.model = ChEX.from_pretrained(context.artifacts["chex"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        rows = model_input.to_dict("records")
        out = []
        for row in rows:
            image = _image(row["image"])
            prompts = [str(p) for p in (row.get("prompts") if row.get("prompts") is not None else [])]
            boxes = [list(map(float, b)) for b in (row.get("boxes") if row.get("boxes") is not None else [])]
            answer: dict[str, Any] = {"answers": []}
            if prompts or boxes:
                answer["answers"] = [r.to_dict() for r in self.model.query(image, prompts, boxes)]
            if row.get("report"):
                answer["report"] = self.model.report(image).to_dict()
            out.append(answer)
        return out


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
    """Log the model folder as a pyfunc in the active run; returns its model URI."""
    info = mlflow.pyfunc.log_model(
        name="chex", python_model=ChexPyfunc(), artifacts={"chex": str(Path(model_dir).resolve())},
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
