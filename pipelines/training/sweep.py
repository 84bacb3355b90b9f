"""Hyper-parameter sweeps of one training stage with Ray Tune (Train V2 pattern).

Each trial is a Tune function that builds and fits its own ``TorchTrainer`` (:func:`pipelines.training.stages.run_stage`) with
Tune's report callback, so ASHA sees every validation report and stops weak trials early. Every trial is an MLflow
child run of one sweep run; the best trial's values are written into a copy of the training config (and logged).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chex_model.typed_config import ConfigError, from_dict, load_config, read_yaml
from evaluation.config import ALL_TASKS
from pipelines.tracking import code_tags, default_uri
from pipelines.training.config import StageConfig, TrainConfig, load_train_config

KINDS = ("loguniform", "uniform", "choice")
RANK_REPORTS = 5  # trials are ranked by the mean of their last this many validation reports


@dataclass
class ParamSpace:
    kind: str = "loguniform"
    low: float = 0.0
    high: float = 0.0
    values: list[Any] = field(default_factory=list)


@dataclass
class AshaConfig:
    grace_period: int = 1  # validation reports a trial gets before it can be stopped
    reduction_factor: int = 2


@dataclass
class SweepConfig:
    train: str = "configs/train/demo.yaml"  # the training workflow whose stage is swept
    stage: str = "detection"
    workdir: str = "runs/tune"
    num_samples: int = 4
    max_concurrent: int = 1  # trials at once (cluster GPUs / GPUs per trial)
    metric: str = "val/loss"
    mode: str = "min"
    seed: int = 0
    steps: int = 0  # override the stage's steps (0 = keep)
    val_every: int = 0  # override the stage's validation interval (0 = keep); ASHA decides at each validation
    workers: int = 0  # override the training workers per trial (0 = keep)
    space: dict[str, ParamSpace] = field(default_factory=dict)  # "lr", "weight_decay", "loss_weights.<term>", ...
    asha: AshaConfig = field(default_factory=AshaConfig)


def load_sweep_config(path: Path | None) -> SweepConfig:
    cfg = load_config(SweepConfig, path)
    if not cfg.space:
        raise ConfigError("the sweep has an empty search space")
    for name, spec in cfg.space.items():
        if spec.kind not in KINDS:
            raise ConfigError(f"space.{name}: kind must be one of {list(KINDS)}")
        if spec.kind == "choice" and not spec.values:
            raise ConfigError(f"space.{name}: a choice needs values")
        bad_range = spec.low >= spec.high or (spec.kind == "loguniform" and spec.low <= 0)
        if spec.kind != "choice" and bad_range:
            raise ConfigError(f"space.{name}: needs low < high (and low > 0 for loguniform)")
        _set(asdict(StageConfig()), name, 1.0)  # the name must address a stage field
    if cfg.mode not in ("min", "max"):
        raise ConfigError("mode must be 'min' or 'max'")
    return cfg


def _set(stage: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """``stage`` with ``dotted`` ("lr", "loss_weights.patho_box_l1") set; unknown top-level fields are refused."""
    head, _, rest = dotted.partition(".")
    if head not in stage:
        raise ConfigError(f"space: {dotted!r} is not a stage setting (known: {sorted(stage)})")
    if rest:
        if not isinstance(stage[head], dict):
            raise ConfigError(f"space: {head!r} has no sub-settings")
        stage[head] = {**stage[head], rest: value}
    else:
        stage[head] = value
    return stage


def apply_params(stage: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(stage)
    for name, value in params.items():
        _set(out, name, value)
    return out


def _domain(spec: ParamSpace):
    from ray import tune

    if spec.kind == "loguniform":
        return tune.loguniform(spec.low, spec.high)
    if spec.kind == "uniform":
        return tune.uniform(spec.low, spec.high)
    return tune.choice(spec.values)


def _trial(config: dict[str, Any]) -> None:
    """One trial: the stage with this trial's values, trained by its own ``TorchTrainer``."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.training.stages import run_stage

    name = tune.get_context().get_trial_name()
    cfg = from_dict(TrainConfig, config["train"])
    cfg.workdir = str(Path(config["workdir"]) / "trials" / name)
    if cfg.storage_path:  # a shared store: each trial its own folder there too
        cfg.storage_path = f"{cfg.storage_path.rstrip('/')}/trials/{name}"
    stage = from_dict(StageConfig, apply_params(config["stage"], config["params"]))
    if config["sole_trial"]:  # with trials in parallel, another trial's live group must not be touched
        release_leftover_groups(Path(config["workdir"]))
    run_stage(cfg, stage, Path(config["init_model"]), config["parent_run_id"], callbacks=(TuneReportCallback(),),
              run_name=name)


def release_leftover_groups(sweep_dir: Path) -> None:
    """Remove the worker groups of trials that Tune stopped mid-fit (ASHA, max_t). Stopping kills the trial before
    its trainer tears down; Ray Train's own cleaner needs the State API (absent without the dashboard), and the next
    trial's data tasks would wait forever for those CPUs. Each trainer's rank 0 records its group's id in
    ``<trial>/placement_group`` (:data:`pipelines.training.trainer.GROUP_FILE`); only those ids are touched."""
    import ray
    from ray.util import placement_group_table
    from ray.util.placement_group import PlacementGroup, get_current_placement_group, remove_placement_group

    from pipelines.training.trainer import GROUP_FILE  # here: reading a sweep config must not import the model

    own = get_current_placement_group()
    live = {pg_id for pg_id, info in placement_group_table().items() if info["state"] == "CREATED"}
    for record in sweep_dir.glob(f"trials/*/{GROUP_FILE}"):
        pg_id = record.read_text().strip()
        if pg_id in live and (own is None or own.id.hex() != pg_id):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
        record.unlink(missing_ok=True)


def end_stopped_runs(tracking_uri: str, parent_run_id: str) -> None:
    """Mark the MLflow runs of trials that ASHA stopped (or that failed) as ended: their process was killed before
    it could close its run, which would otherwise stay RUNNING forever."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_run(parent_run_id).info.experiment_id
    for run in client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, "KILLED")


@dataclass
class SweepResult:
    best_params: dict[str, Any]
    best_metrics: dict[str, Any]
    best_config: Path
    trials: int
    parent_run_id: str


def _trial_config(sweep: SweepConfig, train_cfg: TrainConfig | None) -> tuple[TrainConfig, StageConfig]:
    """The training config every trial starts from (the sweep's overrides applied, every path absolute: trials run
    in their own folders) and the swept stage's config."""
    from pipelines.training.pretrain import use_own_backbones

    train_cfg = copy.deepcopy(train_cfg) if train_cfg is not None else load_train_config(Path(sweep.train))
    use_own_backbones(train_cfg)  # a sweep on its own builds on the backbones the training run pre-trained
    stages = {s.name: s for s in train_cfg.stage_configs()}
    if sweep.stage not in stages:
        raise ConfigError(f"stage {sweep.stage!r} is not in {sweep.train} (has {list(stages)})")
    stage = stages[sweep.stage]
    if sweep.steps:
        stage.steps, stage.epochs = sweep.steps, 0.0
    if sweep.val_every:
        stage.val_every = sweep.val_every
    if sweep.workers:
        train_cfg.workers = sweep.workers
    task = sweep.metric.split("/")[1] if sweep.metric.count("/") >= 2 else ""
    if task in ALL_TASKS and task not in stage.val_tasks:  # ranked by an evaluation metric: score it at each report
        stage.val_tasks = [*stage.val_tasks, task]
    train_cfg.accumulation()
    train_cfg.data.tables = str(Path(train_cfg.data.tables).resolve())
    train_cfg.deepspeed = str(Path(train_cfg.deepspeed).resolve())
    for attr in ("clip_dir", "lm_dir", "init_model"):
        if getattr(train_cfg, attr):
            setattr(train_cfg, attr, str(Path(getattr(train_cfg, attr)).resolve()))
    return train_cfg, stage


def _tuner(sweep: SweepConfig, train_cfg: TrainConfig, stage: StageConfig, workdir: Path, init_model: Path,
           parent_run_id: str):
    """The Ray Tune run: one trial per sampled point, ASHA stopping on validation reports."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from pipelines.training.sweep_progress import SweepProgress

    return tune.Tuner(
        tune.with_resources(_trial, {"CPU": 0.01}),  # the trial driver only waits on its trainer's workers
        param_space={
            "train": asdict(train_cfg), "stage": asdict(stage), "workdir": str(workdir), "init_model": str(init_model),
            "parent_run_id": parent_run_id, "sole_trial": sweep.max_concurrent == 1,
            "params": {k: _domain(v) for k, v in sweep.space.items()},
        },
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
            # the generator holds trials back (Tune's own max_concurrent_trials alone let both start here, and it
            # is ignored, with a warning, beside a generator)
            search_alg=BasicVariantGenerator(random_state=sweep.seed, max_concurrent=sweep.max_concurrent),
            # time = validation reports; without a fixed step count (epochs) the bound is only a ceiling
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=_reports(stage),
                                    grace_period=sweep.asha.grace_period, reduction_factor=sweep.asha.reduction_factor),
        ),
        run_config=tune.RunConfig(name=f"sweep-{sweep.stage}", storage_path=train_cfg.storage_path or str(workdir / "ray"),
                                  callbacks=[SweepProgress("sweep", sweep.num_samples, sweep.metric, sweep.mode)]),
    )


def run_sweep(sweep: SweepConfig, address: str | None = None, train_cfg: TrainConfig | None = None,
              init_model: Path | None = None, nested: bool = False) -> SweepResult:
    """Sweep ``sweep.stage`` of ``train_cfg`` (default: the YAML ``sweep.train``), every trial starting from
    ``init_model`` (default: the stage's input under the training workdir). ``nested``: the sweep run is a child of
    the active MLflow run (a pipeline's)."""
    import mlflow

    from pipelines.ray_runtime import init_ray
    from pipelines.training.stages import stage_input

    train_cfg, stage = _trial_config(sweep, train_cfg)
    workdir = Path(sweep.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    train_cfg.mlflow.tracking_uri = train_cfg.mlflow.tracking_uri or default_uri(workdir)
    init_model = (init_model or stage_input(train_cfg, sweep.stage)).resolve()
    init_ray(address)
    if not nested:
        train_cfg.tracking().activate()
    with mlflow.start_run(run_name=f"sweep-{sweep.stage}", tags={**code_tags(), "sweep_stage": sweep.stage},
                          nested=nested) as parent:
        mlflow.log_params({"sweep.samples": sweep.num_samples, "sweep.metric": sweep.metric, "sweep.mode": sweep.mode,
                           **{f"space.{k}": f"{v.kind}({v.values or [v.low, v.high]})" for k, v in sweep.space.items()}})
        grid = _tuner(sweep, train_cfg, stage, workdir, init_model, parent.info.run_id).fit()
        release_leftover_groups(workdir)  # every trial has ended now
        end_stopped_runs(train_cfg.tracking_uri(), parent.info.run_id)
        # a trial's score: the mean of its last RANK_REPORTS validations, so one lucky early report (validation
        # metrics on a small val split are noisy) does not pick a trial that ASHA then stopped
        best = grid.get_best_result(metric=sweep.metric, mode=sweep.mode, scope=f"last-{RANK_REPORTS}-avg")
        if best.metrics is None or sweep.metric not in best.metrics:
            raise RuntimeError(f"no trial reported {sweep.metric!r}: {[r.error for r in grid if r.error]}")
        params = best.config["params"]
        out = workdir / f"best_{sweep.stage}.yaml"
        out.write_text(best_config_yaml(Path(sweep.train), sweep.stage, params))
        mlflow.log_params({f"best.{k}": v for k, v in params.items()})
        score = float(best.metrics_dataframe[sweep.metric].dropna().tail(RANK_REPORTS).mean())
        mlflow.log_metric(f"best_{sweep.metric.replace('/', '_')}", score)
        mlflow.log_artifact(str(out))
        return SweepResult(params, dict(best.metrics), out, len(grid), parent.info.run_id)


def _reports(stage: StageConfig) -> int:
    """Validation reports a full trial makes (ASHA's time budget)."""
    if stage.epochs > 0:
        return 10**6
    return -(-stage.steps // stage.val_every)


def best_config_yaml(train_yaml: Path, stage_name: str, params: dict[str, Any]) -> str:
    """The training YAML with the best values written into stage ``stage_name`` (other settings untouched)."""
    raw = read_yaml(train_yaml)  # its base chain merged in: the copy stands alone
    for i, s in enumerate(raw.get("stages", [])):
        if s.get("name") == stage_name:
            full = apply_params({**asdict(StageConfig()), **s}, params)
            raw["stages"][i] = {k: v for k, v in full.items() if k in s or k in {p.split(".")[0] for p in params}}
    header = f"# {train_yaml} with the best values of a sweep over stage {stage_name}: {params}\n"
    return header + yaml.safe_dump(raw, sort_keys=False)
