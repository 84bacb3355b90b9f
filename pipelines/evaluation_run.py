"""The evaluation stage: score a model on the nine tasks, write results JSON + a Table-2 markdown table + figures,
and record it all in an MLflow run that names the evaluated model, the dataset digests and the protocol (paper or
ours per item, evaluation/protocol.py), with what each mean left out."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from evaluation.config import EvalConfig
from evaluation.evaluate import SOURCES, Evaluation, TaskResult
from evaluation.postprocess import BoxPostprocess
from evaluation.table import markdown
from pipelines.digests import file_sha256
from pipelines.redact import redact_uri
from pipelines.tracking import (
    STORE,
    Tracking,
    code_tags,
    dataset_inputs,
    default_uri,
    flatten,
    log_dataset,
    metric_key,
)
from pipelines.training.fit import EXPORT_TAG

log = logging.getLogger(__name__)
RESULTS, TABLE = "results.json", "table.md"
EXPERIMENT = "chex-evaluate"


def default_tracking_uri(model_dir: Path | None, out: Path) -> str:
    """The training workdir's store when the model is a training export (``<workdir>/<stage>/model``), so the
    evaluation run sits beside the runs that made the model; else a store in the output folder."""
    if model_dir is not None:
        workdir = Path(model_dir).resolve().parent.parent
        if (workdir / STORE).is_file():
            return default_uri(workdir)
    return default_uri(out)


def _training_run(client, model_dir: Path) -> str | None:
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.{EXPORT_TAG} = '{Path(model_dir).resolve()}'", max_results=1,
    )
    return runs[0].info.run_id if runs else None


TAG_LIMIT = 5000  # MLflow's tag value limit


def skipped_tags(prefix: str, res: TaskResult) -> dict[str, str]:
    """``skipped.<prefix><task>.<metric>`` = the classes (or region: class pairs) that metric's mean left out."""
    out = {}
    for metric, names in res.skipped.items():
        text = ", ".join(names)
        if len(text) > TAG_LIMIT:
            text = text[: TAG_LIMIT - 40].rsplit(", ", 1)[0] + f" ... ({len(names)} in all; results.json lists them)"
        out[f"skipped.{prefix.replace('/', '.')}{res.task}.{metric_key('', metric).lstrip('/')}"] = text
    return out


def _log_metrics(prefix: str = "") -> Callable[[TaskResult], None]:
    """A task's metrics as ``<prefix><task>/<metric>`` (plus ``/mean``, ``/std``) in the active run, as soon as it is
    scored, and what its means left out as tags."""
    import mlflow

    def on_result(res: TaskResult) -> None:
        task, metrics = prefix + res.task, {}
        for key, stat in res.metrics.items():
            for part, value in stat.items():  # value (full set), mean and std over the bootstrap resamples
                if value == value:
                    metrics[metric_key(task, key) + ("" if part == "value" else f"/{part}")] = value
        mlflow.log_metrics(metrics)
        mlflow.log_metric(metric_key(task, "seconds"), res.seconds)
        if res.skipped:
            mlflow.set_tags(skipped_tags(prefix, res))

    return on_result


def _baselines(evaluation: Evaluation, model: dict[str, TaskResult]) -> dict[str, dict[str, Any]]:
    """Each configured baseline on the model's tasks and split through the same scoring, so the model's numbers read
    against chance (random), the ceiling (oracle) and what it answers without looking at the image (shuffled). Boxes
    are post-processed as the model's were (the settings its validation search chose), not searched again."""
    chosen = {task: BoxPostprocess(**r.settings["postprocess"]) for task, r in model.items() if "postprocess" in r.settings}
    out = {}
    for predictor in evaluation.cfg.baselines:
        log.info("baseline %s on %s", predictor, ", ".join(evaluation.cfg.tasks))
        baseline = evaluation.for_predictor(predictor, chosen)
        results = baseline.run(on_result=_log_metrics(f"baseline/{predictor}/"))
        out[predictor] = {k: r.to_dict() for k, r in results.items()}
    return out


def run_evaluation(tables: Path, cfg: EvalConfig, out: Path, model_dir: Path | None = None, tracking_uri: str | None = None,
                   experiment: str = EXPERIMENT, parent_run_id: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Evaluate (and, for a model, its baselines) and log; returns the results dict also written to ``out/results.json``."""
    import mlflow

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runner = None
    if cfg.runs_model:
        if model_dir is None:
            raise ValueError(f"the {cfg.predictor} predictor needs --model")
        from chex_model.chex import ChEX
        from evaluation.runner import ModelRunner

        runner = ModelRunner(ChEX.from_pretrained(model_dir), cfg.batch_size, cfg.max_new_tokens, show_progress)
    uri = tracking_uri or default_tracking_uri(model_dir, out)
    client = mlflow.MlflowClient(uri)
    Tracking(uri, experiment).activate()
    tags = {**code_tags(), "predictor": cfg.predictor, "split": cfg.split, **cfg.protocol.tags()}
    if model_dir is not None:
        tags.update({"model_dir": str(Path(model_dir).resolve()), "model_sha256": file_sha256(Path(model_dir) / "model.safetensors")})
        train_run = _training_run(client, model_dir)
        if train_run:
            tags["training_run_id"] = train_run
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    name = f"evaluate-{cfg.predictor}" + (f"-{Path(model_dir).resolve().parent.name}" if model_dir is not None else "")
    with mlflow.start_run(run_name=name, tags=tags, nested=parent_run_id is not None) as run:
        mlflow.log_params(flatten({"eval": asdict(cfg)}))
        searched = {t for t in cfg.tasks if cfg.search and cfg.runs_model and t.startswith(("od_", "sg_"))}
        used = sorted({f"{SOURCES[t]}/{cfg.split}" for t in cfg.tasks} | {f"{SOURCES[t]}/{cfg.val_split}" for t in searched})
        for spec in dataset_inputs(Path(tables), used, "evaluation"):
            log_dataset(spec)
        evaluation = Evaluation(Path(tables), cfg, runner, out)
        log.info("evaluating %s on %s", model_dir or cfg.predictor, ", ".join(cfg.tasks))
        results = evaluation.run(on_result=_log_metrics())
        baselines = _baselines(evaluation, results) if cfg.predictor == "model" else {}
        payload = {"model": str(Path(model_dir).resolve()) if model_dir else None, "predictor": cfg.predictor,
                   "split": cfg.split, "mlflow_run_id": run.info.run_id, "tracking_uri": redact_uri(uri),
                   "protocol": {"name": cfg.protocol.name, **cfg.protocol.describe()},
                   "tasks": {k: r.to_dict() for k, r in results.items()}, "baselines": baselines}
        (out / RESULTS).write_text(json.dumps(payload, indent=2, default=float) + "\n")
        column = f"ChEX ({cfg.predictor})" if cfg.predictor != "model" else "ChEX (ours)"
        (out / TABLE).write_text(markdown(payload["tasks"], column, baselines, cfg.protocol.name))
        mlflow.log_artifact(str(out / RESULTS), artifact_path="evaluation")
        mlflow.log_artifact(str(out / TABLE), artifact_path="evaluation")
        if (out / "figures").is_dir():
            mlflow.log_artifacts(str(out / "figures"), artifact_path="evaluation/figures")
    return payload
