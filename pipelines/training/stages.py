"""Training driver: one stage = one Ray Train ``TorchTrainer`` run; the workflow chains stages through exported
models. Runs locally or on a cluster (``address``), with MLflow lineage (parent run per workflow, child per stage)."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from chex_model.typed_config import ConfigError
from pipelines.tracking import code_tags, dataset_inputs
from pipelines.training.config import StageConfig, TrainConfig
from pipelines.training.data import build_dataset, epoch_steps, ms_cxr_image_ids
from pipelines.training.trainer import MODEL_DIR, STATE_FILE, LoopConfig, Trainer, train_worker
from preprocessing.records import TABLES

FEATURE_PARTS = ("image_encoder", "image_encoder_top", "detector")  # trainable parts that move the presence margin

INIT_DIR = "init_model"


@dataclass
class StageResult:
    name: str
    model_dir: Path
    metrics: dict[str, Any]
    checkpoint: str


def initial_model(cfg: TrainConfig) -> Path:
    """The model the first stage starts from: ``init_model`` if given, else built from the preset (and pretrained
    backbones when ``clip_dir``/``lm_dir`` are set) and saved once under the workdir."""
    if cfg.init_model:
        return Path(cfg.init_model)
    out = Path(cfg.workdir) / INIT_DIR
    if not (out / "config.json").is_file():
        import torch

        from chex_model.chex import ChEX
        from chex_model.config import preset

        dirs = (Path(cfg.clip_dir), Path(cfg.lm_dir)) if cfg.clip_dir else (None, None)
        torch.manual_seed(cfg.data.seed)  # the same config builds the same starting weights
        ChEX.build(preset(cfg.model_preset), *dirs).save_pretrained(out)
    return out


def _image_size(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["chex"]["clip"]["image_size"]


def run_stage(cfg: TrainConfig, stage: StageConfig, init_model: Path, parent_run_id: str | None = None,
              trainer: type[Trainer] = Trainer, callbacks: tuple = (), run_name: str | None = None) -> StageResult:
    """Train one stage with a ``TorchTrainer`` and export its selected checkpoint's model to ``<workdir>/<stage>/model``.

    ``callbacks`` go to the Train ``RunConfig`` (a sweep passes Tune's report callback); ``run_name`` names the MLflow
    run (default: the stage); ``trainer`` is the per-worker class (a subclass can hook each step, e.g. a fault drill)."""
    import ray.data

    from pipelines.ray_runtime import init_ray

    init_ray(None)
    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.execution_options.preserve_order
    ctx.enable_progress_bars = False  # the workers' feed; Ray Train reports progress
    ctx.execution_options.preserve_order = cfg.data.reproducible  # also for the rows cached here on the driver
    try:
        return _run_stage(cfg, stage, init_model, parent_run_id, trainer, callbacks, run_name)
    finally:
        ctx.enable_progress_bars, ctx.execution_options.preserve_order = saved


def _run_stage(cfg: TrainConfig, stage: StageConfig, init_model: Path, parent_run_id: str | None,
               trainer: type[Trainer], callbacks: tuple, run_name: str | None) -> StageResult:
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    tables = Path(cfg.data.tables)
    if not (tables / TABLES).is_dir():
        raise FileNotFoundError(f"no ingested tables under {tables} (run `chex ingest` first)")
    size = cfg.data.image_size or _image_size(init_model)
    exclude = ms_cxr_image_ids(tables) if cfg.data.exclude_ms_cxr else set()
    train_ds, info = build_dataset(tables, "train", size, cfg.data.augment, cfg.data.seed, cfg.data.vindr_factor, exclude,
                                   reproducible_augment=cfg.data.reproducible, cache_rows=cfg.data.cache_rows,
                                   sources=tuple(stage.sources), frontal_only=cfg.data.frontal_only)
    if stage.epochs > 0:
        per_epoch = info["counts"]["mimic_cxr"] + info["counts"]["vindr_cxr"] * info["vindr_factor"]
        stage = replace(stage, steps=epoch_steps(round(stage.epochs * per_epoch), cfg.batch_size))
    # small and fixed: computed once here, so the workers only fetch blocks
    val_ds = build_dataset(tables, "val", size, None, cfg.data.seed, 1, exclude, limit=cfg.data.val_max_images,
                           sources=tuple(stage.sources), frontal_only=cfg.data.frontal_only)[0].materialize()
    workdir = Path(cfg.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tags = {**code_tags(), "stage": stage.name, "vindr_factor": str(info["vindr_factor"])}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    inputs = [f"{source}/{split}" for split in ("train", "val") for source in stage.sources]
    loop = LoopConfig(
        train=cfg, stage=stage, init_model=str(Path(init_model).resolve()), workdir=str(workdir), tracking=cfg.tracking(),
        run_name=run_name or stage.name, tags=tags, t0=time.time(),
        inputs=dataset_inputs(tables, [n for n in inputs if n.endswith("/train")], "training")
        + dataset_inputs(tables, [n for n in inputs if n.endswith("/val")], "validation"),
        deepspeed=cfg.deepspeed_config() if cfg.engine == "deepspeed" else {},
    )
    fit = TorchTrainer(
        train_worker,
        train_loop_config={"loop": loop, "trainer": trainer},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=DataConfig(datasets_to_split=["train"],
                                  execution_options=_execution_options(cfg.data.reproducible)),
        run_config=RunConfig(
            # a fresh name per fit: Train V2 would otherwise restore a finished earlier run of the same stage
            name=f"{stage.name}_{time.strftime('%Y%m%d-%H%M%S')}", storage_path=cfg.ray_storage(),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute=stage.select_metric,
                                               checkpoint_score_order=stage.select_mode),
            failure_config=FailureConfig(max_failures=cfg.max_failures), callbacks=list(callbacks),
        ),
    )
    result = fit.fit()
    ranked = [(c, m) for c, m in result.best_checkpoints if stage.select_metric in m]
    if not ranked:
        raise RuntimeError(f"stage {stage.name}: no checkpoint reported {stage.select_metric!r}")
    sign = 1 if stage.select_mode == "min" else -1
    best, metrics = min(ranked, key=lambda cm: sign * cm[1][stage.select_metric])
    out = workdir / stage.name / MODEL_DIR
    with best.as_directory() as d:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(Path(d) / MODEL_DIR, out)
        state = json.loads((Path(d) / STATE_FILE).read_text())
    if set(stage.trains) & set(FEATURE_PARTS):
        _calibrate(cfg, out, state.get("mlflow_run_id"))
    _log_export(cfg, state.get("mlflow_run_id"), out, best.path, state["step"])
    return StageResult(stage.name, out, dict(metrics), best.path)


def _calibrate(cfg: TrainConfig, model_dir: Path, run_id: str | None) -> None:
    """Refit the presence calibration of a stage that moved the detector's ROI tokens (or drop the stale one it
    inherited), and log its per-query statistics to the stage's run."""
    from chex_model.presence import CALIBRATION_FILE
    from pipelines.training.calibrate import calibrate_model_dir

    if not cfg.calibration.enabled:
        (model_dir / CALIBRATION_FILE).unlink(missing_ok=True)
        return
    stats = calibrate_model_dir(model_dir, Path(cfg.data.tables), cfg.calibration, cfg.data.exclude_ms_cxr)
    if run_id:
        import mlflow

        client = mlflow.MlflowClient(cfg.tracking_uri())
        for query, s in stats.items():
            name = query.lower().replace(" ", "_")
            for key in ("auroc", "scale", "positives"):
                if s[key] == s[key]:  # NaN AUROC: a query without both classes
                    client.log_metric(run_id, f"calibration/{name}/{key}", s[key])


def _execution_options(ordered: bool):
    from ray.data import ExecutionOptions

    options = ExecutionOptions()
    options.preserve_order = ordered
    return options


EXPORT_TAG = "exported_model"  # absolute path of the exported model: how evaluation finds the run that made it


def _log_export(cfg: TrainConfig, run_id: str | None, model_dir: Path, checkpoint: str, step: int) -> None:
    """The stage's MLflow run gets the exported model and which checkpoint it came from."""
    if not run_id:
        return
    import mlflow

    client = mlflow.MlflowClient(cfg.tracking_uri())
    client.log_artifacts(run_id, str(model_dir), artifact_path="model")
    client.set_tag(run_id, "selected_checkpoint", checkpoint)
    client.set_tag(run_id, "selected_step", str(step))
    client.set_tag(run_id, EXPORT_TAG, str(Path(model_dir).resolve()))


def stage_input(cfg: TrainConfig, name: str) -> Path:
    """The model stage ``name`` starts from: the initial model for the first stage, else the previous stage's export."""
    names = [s.name for s in cfg.stage_configs()]
    if name not in names:
        raise ConfigError(f"unknown stage {name!r}; this config has {names}")
    i = names.index(name)
    if i == 0:
        return initial_model(cfg)
    prev = Path(cfg.workdir).resolve() / names[i - 1] / MODEL_DIR
    if not (prev / "config.json").is_file():
        raise ConfigError(f"stage {name} starts from stage {names[i - 1]}'s model, which is not at {prev}: run that stage first")
    return prev


def run_workflow(cfg: TrainConfig, only: list[str] | None = None) -> list[StageResult]:
    """Run the stages in order (or just ``only``), each starting from the previous stage's exported model, under
    one parent MLflow run ("workflow") with a child run per stage."""
    import mlflow

    stages = cfg.stage_configs()
    if not stages:
        raise ConfigError("the training config has no stages")
    names = [s.name for s in stages]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; this config has {names}")
    Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    cfg.tracking().activate()
    results = []
    with mlflow.start_run(run_name="workflow", tags=code_tags()) as parent:
        mlflow.log_params({"stages": ",".join(s.name for s in stages if not only or s.name in only)})
        for stage in stages:
            if only and stage.name not in only:
                continue
            res = run_stage(cfg, stage, stage_input(cfg, stage.name), parent.info.run_id)
            mlflow.log_metrics({f"{stage.name}/{k}": v for k, v in res.metrics.items()
                                if isinstance(v, (int, float)) and k.startswith("val/")})
            results.append(res)
    return results
