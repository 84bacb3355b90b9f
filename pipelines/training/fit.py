"""Fitting one stage on Ray Train: a ``TorchTrainer`` of :class:`~pipelines.training.trainer.StageTrainer` workers
over the stage's datasets, the best checkpoint's model exported, and the export recorded on the stage's MLflow run.
Shared by the ChEX stages (:mod:`pipelines.training.stages`) and the backbone pre-training stages
(:mod:`pipelines.training.pretrain`)."""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.tracking import code_tags, dataset_inputs
from pipelines.training.progress import relayed
from pipelines.training.config import StageConfig, TrainConfig
from pipelines.training.trainer import MODEL_DIR, STATE_FILE, LoopConfig, StageTrainer, train_worker


@dataclass
class StageResult:
    name: str
    model_dir: Path
    metrics: dict[str, Any]
    checkpoint: str


@contextlib.contextmanager
def quiet_data(cfg: TrainConfig) -> Iterator[None]:
    """Ray up, and Ray Data in the order the run asks for. Its bars stay off a terminal, where the run's own display
    draws; elsewhere (a pipeline's stage log, a log file) Ray Data logs its progress instead of drawing it."""
    import ray.data

    from pipelines.ray_runtime import data_bars_off_terminal, init_ray

    init_ray(None)
    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.execution_options.preserve_order
    data_bars_off_terminal()
    ctx.execution_options.preserve_order = cfg.data.reproducible  # also for the rows cached here on the driver
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.execution_options.preserve_order = saved


def fit_stage(cfg: TrainConfig, stage: StageConfig, init_model: Path, datasets: dict[str, Any], parent_run_id: str | None,
              trainer: type[StageTrainer], callbacks: tuple = (), run_name: str | None = None,
              tags: dict[str, str] | None = None, attempt: str | None = None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Fit one stage on ``datasets`` (``train`` split across the workers, ``val``) with a ``TorchTrainer`` of
    ``trainer`` workers, and copy the selected checkpoint's model to ``<workdir>/<stage>/model``.

    The Ray Train run is ``<stage>_<attempt>`` under the storage path: Train V2 restores a run of the same name from
    its latest registered checkpoint, so the pipeline passes the attempt of an interrupted stage to resume it, and a
    new attempt (default: the current time) to start afresh. Returns the checkpoint's path, its reported metrics and
    its loop state."""
    tables = Path(cfg.data.tables)
    workdir = Path(cfg.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tags = {**code_tags(), "stage": stage.name, **(tags or {})}
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
    with relayed(run_name or stage.name, stage.steps) as loop.progress:
        result = _trainer(cfg, stage, loop, trainer, datasets, callbacks, attempt).fit()
    return _select(result, stage, workdir / stage.name / MODEL_DIR)


def _trainer(cfg: TrainConfig, stage: StageConfig, loop: LoopConfig, trainer: type[StageTrainer],
             datasets: dict[str, Any], callbacks: tuple, attempt: str | None):
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        train_worker,
        train_loop_config={"loop": loop, "trainer": trainer},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"],
                                  execution_options=_execution_options(cfg.data.reproducible)),
        run_config=RunConfig(
            name=f"{stage.name}_{attempt or time.strftime('%Y%m%d-%H%M%S')}", storage_path=cfg.ray_storage(),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute=stage.select_metric,
                                               checkpoint_score_order=stage.select_mode),
            failure_config=FailureConfig(max_failures=cfg.max_failures), callbacks=list(callbacks),
        ),
    )


def _select(result, stage: StageConfig, out: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The best reported checkpoint by the stage's ``select_metric``: its model copied to ``out``."""
    ranked = [(c, m) for c, m in result.best_checkpoints if stage.select_metric in m]
    if not ranked:
        raise RuntimeError(f"stage {stage.name}: no checkpoint reported {stage.select_metric!r}")
    sign = 1 if stage.select_mode == "min" else -1
    best, metrics = min(ranked, key=lambda cm: sign * cm[1][stage.select_metric])
    with best.as_directory() as d:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(Path(d) / MODEL_DIR, out)
        state = json.loads((Path(d) / STATE_FILE).read_text())
    return best.path, dict(metrics), state


def _execution_options(ordered: bool):
    from ray.data import ExecutionOptions

    options = ExecutionOptions()
    options.preserve_order = ordered
    return options


EXPORT_TAG = "exported_model"  # absolute path of the exported model: how evaluation finds the run that made it


def log_export(cfg: TrainConfig, run_id: str | None, model_dir: Path, checkpoint: str, step: int) -> None:
    """The stage's MLflow run gets the exported model and which checkpoint it came from."""
    if not run_id:
        return
    import mlflow

    client = mlflow.MlflowClient(cfg.tracking_uri())
    client.log_artifacts(run_id, str(model_dir), artifact_path="model")
    client.set_tag(run_id, "selected_checkpoint", checkpoint)
    client.set_tag(run_id, "selected_step", str(step))
    client.set_tag(run_id, EXPORT_TAG, str(Path(model_dir).resolve()))
