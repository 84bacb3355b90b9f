"""Training driver: one stage = one Ray Train ``TorchTrainer`` run; the workflow chains stages through exported
models. Runs locally or on a cluster (``address``), with MLflow lineage (parent run per workflow, child per stage)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from chex_model.typed_config import ConfigError
from pipelines.tracking import code_tags
from pipelines.training.config import StageConfig, TrainConfig
from pipelines.training.data import build_dataset, epoch_steps, ms_cxr_image_ids
from pipelines.training.fit import StageResult, fit_stage, log_export, quiet_data
from pipelines.training.trainer import MODEL_DIR, Trainer
from preprocessing.records import TABLES

FEATURE_PARTS = ("image_encoder", "image_encoder_top", "detector")  # trainable parts that move the presence margin

INIT_DIR = "init_model"
INIT_MARKER = "built_from.json"  # what the initial model was built from


def initial_model(cfg: TrainConfig) -> Path:
    """The model the first stage starts from: ``init_model`` if given, else built from the preset (and pretrained
    backbones when ``clip_dir``/``lm_dir`` are set) and saved under the workdir; rebuilt when what it is built
    from changed (other backbone weights, preset or seed)."""
    if cfg.init_model:
        return Path(cfg.init_model)
    out = Path(cfg.workdir) / INIT_DIR
    made_from = json.dumps(_init_inputs(cfg), sort_keys=True)
    marker = out / INIT_MARKER
    if not (out / "config.json").is_file() or not marker.is_file() or marker.read_text() != made_from:
        import torch

        from chex_model.chex import ChEX
        from chex_model.config import preset

        dirs = (Path(cfg.clip_dir), Path(cfg.lm_dir)) if cfg.clip_dir else (None, None)
        torch.manual_seed(cfg.data.seed)  # the same config builds the same starting weights
        ChEX.build(preset(cfg.model_preset), *dirs).save_pretrained(out)
        marker.write_text(made_from)
    return out


def _init_inputs(cfg: TrainConfig) -> dict[str, Any]:
    from pipelines.digests import file_sha256

    def weights(folder: str) -> str | None:
        files = sorted(Path(folder).glob("*.safetensors")) if folder else []
        return ",".join(file_sha256(f) for f in files) or (folder or None)

    return {"preset": cfg.model_preset, "seed": cfg.data.seed, "clip": weights(cfg.clip_dir), "lm": weights(cfg.lm_dir)}


def _image_size(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["chex"]["clip"]["image_size"]


def run_stage(cfg: TrainConfig, stage: StageConfig, init_model: Path, parent_run_id: str | None = None,
              trainer: type[Trainer] = Trainer, callbacks: tuple = (), run_name: str | None = None,
              attempt: str | None = None) -> StageResult:
    """Train one stage with a ``TorchTrainer`` and export its selected checkpoint's model to ``<workdir>/<stage>/model``.

    ``callbacks`` go to the Train ``RunConfig`` (a sweep passes Tune's report callback); ``run_name`` names the MLflow
    run (default: the stage); ``trainer`` is the per-worker class (a subclass can hook each step, e.g. a fault drill);
    ``attempt`` names the Ray Train run (see :func:`~pipelines.training.fit.fit_stage`)."""
    with quiet_data(cfg):
        return _run_stage(cfg, stage, init_model, parent_run_id, trainer, callbacks, run_name, attempt)


def _run_stage(cfg: TrainConfig, stage: StageConfig, init_model: Path, parent_run_id: str | None,
               trainer: type[Trainer], callbacks: tuple, run_name: str | None, attempt: str | None) -> StageResult:
    tables = Path(cfg.data.tables)
    if not (tables / TABLES).is_dir():
        raise FileNotFoundError(f"no ingested tables under {tables} (run `chex ingest` first)")
    cfg = cfg.for_stage(stage)
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
    best, metrics, state = fit_stage(cfg, stage, init_model, {"train": train_ds, "val": val_ds}, parent_run_id, trainer,
                                     callbacks, run_name, {"vindr_factor": str(info["vindr_factor"])}, attempt)
    out = Path(cfg.workdir).resolve() / stage.name / MODEL_DIR
    if set(stage.trains) & set(FEATURE_PARTS):
        _calibrate(cfg, out, state.get("mlflow_run_id"))
    log_export(cfg, state.get("mlflow_run_id"), out, best, state["step"])
    return StageResult(stage.name, out, metrics, best)


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
    """Run the backbone pre-training stages the config enables, then the ChEX stages in order (or just ``only``),
    each starting from the previous stage's exported model, under one parent MLflow run ("workflow") with a child
    run per stage."""
    import mlflow

    from pipelines.training.pretrain import KINDS, run_pretrain, use_own_backbones

    stages = cfg.stage_configs()
    if not stages:
        raise ConfigError("the training config has no stages")
    own = [k for k, on in cfg.pretrained_backbones().items() if on]
    names = [KINDS[k] for k in own] + [s.name for s in stages]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; this config has {names}")
    Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    cfg.tracking().activate()
    results = []
    with mlflow.start_run(run_name="workflow", tags=code_tags()) as parent:
        mlflow.log_params({"stages": ",".join(n for n in names if not only or n in only)})
        results += [run_pretrain(cfg, k, parent.info.run_id) for k in own if not only or KINDS[k] in only]
        use_own_backbones(cfg)
        for stage in stages:
            if only and stage.name not in only:
                continue
            res = run_stage(cfg, stage, stage_input(cfg, stage.name), parent.info.run_id)
            mlflow.log_metrics({f"{stage.name}/{k}": v for k, v in res.metrics.items()
                                if isinstance(v, (int, float)) and k.startswith("val/")})
            results.append(res)
    return results
