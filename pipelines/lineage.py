"""``chex lineage``: from a registered model version back to the raw data, using only what MLflow recorded
(registered version -> evaluation run and its scores -> training runs and their configs -> dataset digests -> the
ingest manifest's raw inputs)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow

from pipelines.registry import EVAL_RUN_TAG
from pipelines.training.fit import EXPORT_TAG

TRAIN_KEYS = {"train.model_preset", "train.batch_size", "train.engine", "train.workers", "train.data.tables", "train.init_model"}


def _version(client: mlflow.MlflowClient, model_uri: str):
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>``."""
    if not model_uri.startswith("models:/"):
        raise ValueError(f"{model_uri!r} is not a registered model URI (models:/<name>@<alias> or models:/<name>/<version>)")
    ref = model_uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, version = ref.rpartition("/")
    if not name or not version:
        raise ValueError(f"{model_uri!r} names no version or alias (models:/<name>@<alias> or models:/<name>/<version>)")
    return client.get_model_version(name, version)


def _inputs(run) -> list[dict[str, Any]]:
    out = []
    for di in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in di.tags}
        out.append({"name": di.dataset.name, "digest": tags.get("sha256", di.dataset.digest), "rows": tags.get("rows"),
                    "source": json.loads(di.dataset.source).get("uri", di.dataset.source) if di.dataset.source.startswith("{") else di.dataset.source,
                    "context": tags.get("mlflow.data.context")})
    return out


def _raw_inputs(datasets: list[dict[str, Any]]) -> dict[str, Any]:
    """The raw inputs of the ingest manifests the datasets came from (``<ingest>/tables/source=../split=..``)."""
    raw: dict[str, Any] = {}
    for ds in datasets:
        path = Path(str(ds["source"]).removeprefix("file://"))
        manifest = path.parents[2] / "manifest.json" if len(path.parents) > 2 else None
        if manifest is not None and manifest.is_file():
            for source, entry in json.loads(manifest.read_text()).get("raw_inputs", {}).items():
                raw[source] = {"root": entry.get("root"), "digest": entry.get("digest"), "files": entry.get("files"),
                               "manifest": str(manifest)}
    return raw


def _backbone_runs(client: mlflow.MlflowClient, stages: list) -> list:
    """The runs that exported the backbone folders the training started from (``clip_dir`` / ``lm_dir``), when this
    store has them: a pipeline rerun reuses its pre-training stages, whose runs then hang under an earlier pipeline."""
    ids = {r.info.run_id for r in stages}
    found = []
    for key in ("train.clip_dir", "train.lm_dir"):
        folder = next((r.data.params[key] for r in stages if r.data.params.get(key)), "")
        if not folder:
            continue
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string=f"tags.{EXPORT_TAG} = '{Path(folder).resolve()}'", max_results=1)
        found += [r for r in runs if r.info.run_id not in ids]
    return found


def model_lineage(model_uri: str, tracking_uri: str) -> dict[str, Any]:
    client = mlflow.MlflowClient(tracking_uri)
    mv = _version(client, model_uri)
    chain: dict[str, Any] = {"model": {"name": mv.name, "version": str(mv.version), "aliases": list(mv.aliases),
                                       "run_id": mv.run_id, "tags": dict(mv.tags)}}
    datasets: list[dict[str, Any]] = []
    eval_id = mv.tags.get(EVAL_RUN_TAG)
    training_id = None
    if eval_id:
        run = client.get_run(eval_id)
        scores = {k: v for k, v in sorted(run.data.metrics.items()) if not k.endswith(("/std", "/mean", "/seconds"))
                  and "/AP/" not in k}
        chain["evaluation"] = {"run_id": eval_id, "name": run.info.run_name, "scores": scores,
                               "model_sha256": run.data.tags.get("model_sha256"), "inputs": _inputs(run),
                               "protocol": {k: v for k, v in sorted(run.data.tags.items()) if k.split(".")[0] == "protocol"}}
        datasets += chain["evaluation"]["inputs"]
        training_id = run.data.tags.get("training_run_id")
    if training_id:
        run = client.get_run(training_id)
        parent = run.data.tags.get("mlflow.parentRunId")
        stages = [run]
        if parent:
            stages = client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                        order_by=["attributes.start_time ASC"])
        stages = _backbone_runs(client, stages) + stages
        chain["training"] = [{"run_id": r.info.run_id, "name": r.info.run_name, "git_commit": r.data.tags.get("mlflow.source.git.commit"),
                              "git_dirty": r.data.tags.get("git_dirty"),
                              "config": {k: v for k, v in sorted(r.data.params.items())
                                         if k in TRAIN_KEYS or (k.startswith("stage.") and not k.startswith("stage.loss_weights"))},
                              "inputs": _inputs(r)} for r in stages]
        chain["workflow_run_id"] = parent
        for r in chain["training"]:
            datasets += r["inputs"]
    unique = {(d["name"], d["digest"]): d for d in datasets}
    chain["datasets"] = sorted(unique.values(), key=lambda d: d["name"])
    chain["raw_inputs"] = _raw_inputs(chain["datasets"])
    return chain


def format_lineage(chain: dict[str, Any]) -> str:
    m = chain["model"]
    lines = [f"model {m['name']} v{m['version']} (aliases: {', '.join(m['aliases']) or '-'}; run {m['run_id']})"]
    ev = chain.get("evaluation")
    if ev:
        lines.append(f"└ evaluation run {ev['run_id']} ({ev['name']}), model sha256 {str(ev['model_sha256'])[:16]}…")
        for k, v in ev.get("protocol", {}).items():
            lines.append(f"    {k}: {v}")
        for k, v in ev["scores"].items():
            lines.append(f"    {k} = {v:.4f}")
    else:
        lines.append("└ no evaluation run recorded for this version")
    for t in chain.get("training", []):
        lines.append(f"  └ training run {t['run_id']} ({t['name']}), git {str(t['git_commit'])[:12]} dirty={t['git_dirty']}")
        for k, v in t["config"].items():
            lines.append(f"      {k} = {v}")
    lines.append("    └ datasets")
    for d in chain["datasets"]:
        lines.append(f"        {d['name']}: sha256 {d['digest']} ({d['rows']} rows) {d['source']}")
    lines.append("      └ raw inputs")
    for source, r in sorted(chain["raw_inputs"].items()):
        lines.append(f"          {source}: sha256 {r['digest']} ({r['files']} files) {r['root']}")
    return "\n".join(lines)
