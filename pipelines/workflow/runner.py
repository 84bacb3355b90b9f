"""``chex pipeline run``: the stages in order under one MLflow parent run, with a child run per stage.

A stage whose key matches its last successful run in ``<workdir>/pipeline_state.json`` and whose outputs still
exist is skipped, so a rerun only does what changed; ``from_stage`` forces a rerun from there on. A failing stage
stops the run with its error and leaves every earlier stage's outputs and state in place. A stage that did not
finish (the pipeline was killed during it, or it failed) continues its attempt when rerun with the same key: a
training stage resumes from its last registered checkpoint, in the same MLflow run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from chex_model.typed_config import ConfigError, from_dict, load_config
from pipelines.console.logs import Session, log_name
from pipelines.tracking import Tracking
from pipelines.training.config import StageConfig
from pipelines.workflow.config import PipelineConfig
from pipelines.workflow.stages import (
    Context,
    DeployStage,
    EvaluateStage,
    IngestStage,
    PretrainStage,
    RegisterStage,
    Stage,
    SweepStage,
    SynthStage,
    TrainStage,
)
from pipelines.workflow.state import PipelineState, StageFailed, attempt_of

log = logging.getLogger(__name__)
LOG_DIR = "logs"  # <workdir>/logs/<stage>.log: each stage's library output (Ray, MLflow, DeepSpeed, workers)


@dataclass
class StageRecord:
    name: str
    key: str
    outputs: dict[str, Any]
    skipped: bool


class Pipeline:
    """The resolved configs of one pipeline and its stages, in order."""

    def __init__(self, cfg: PipelineConfig) -> None:
        from evaluation.config import EvalConfig
        from pipelines.ingest.config import IngestConfig
        from pipelines.training.config import load_train_config

        self.cfg = cfg
        self.workdir = Path(cfg.workdir).resolve()
        self.ingest_cfg = load_config(IngestConfig, Path(cfg.ingest))
        if cfg.image_size:
            self.ingest_cfg.image_size = cfg.image_size
        self.train_cfg = load_train_config(Path(cfg.train))
        self.eval_cfg = load_config(EvalConfig, Path(cfg.evaluate))
        self.train_cfg.workdir = str(self.workdir / "train")
        self.train_cfg.data.tables = str(self.workdir / "ingested")
        self.train_cfg.mlflow.tracking_uri = cfg.tracking()
        self.train_cfg.mlflow.experiment = cfg.experiment
        if self.train_cfg.deepspeed and not Path(self.train_cfg.deepspeed).is_absolute():
            self.train_cfg.deepspeed = str(Path(self.train_cfg.deepspeed).resolve())
        self.train_cfg.accumulation()
        self.own_backbones = [k for k, on in self.train_cfg.pretrained_backbones().items() if on]
        self.sweep_cfg = None
        if cfg.sweep:
            from pipelines.training.sweep import load_sweep_config

            self.sweep_cfg = load_sweep_config(Path(cfg.sweep))
            self.sweep_cfg.train, self.sweep_cfg.workdir = cfg.train, str(self.workdir / "sweep")
            if self.sweep_cfg.stage not in {s.name for s in self.train_cfg.stage_configs()}:
                raise ConfigError(f"{cfg.sweep}: stage {self.sweep_cfg.stage!r} is not a stage of {cfg.train}")
        self.stages = self._stages()

    def _stages(self) -> list[Stage]:
        stages: list[Stage] = ([] if self.cfg.raw else [SynthStage()]) + [IngestStage()]
        stages += [PretrainStage(k) for k in self.own_backbones]
        for s in self.train_cfg.stage_configs():
            if self.sweep_cfg is not None and s.name == self.sweep_cfg.stage:
                stages.append(SweepStage())
            stages.append(TrainStage(s.name))
        return stages + [EvaluateStage(), RegisterStage()] + ([DeployStage()] if self.cfg.deploy.enabled else [])

    def resolved(self) -> dict[str, Any]:
        """Every setting the run uses: the configs as loaded, the model preset's full config and each training
        stage with its defaults filled in (logged to MLflow as ``resolved_config.json``)."""
        from chex_model.config import preset

        train = asdict(self.train_cfg)
        train["stages"] = [asdict(s) for s in self.train_cfg.stage_configs()]
        return {"pipeline": asdict(self.cfg), "ingest": asdict(self.ingest_cfg), "train": train,
                "model": preset(self.train_cfg.model_preset).to_dict(), "evaluate": asdict(self.eval_cfg)}

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def last_train(self) -> str:
        return [s.name for s in self.stages if isinstance(s, TrainStage)][-1]

    def stage_config(self, name: str, up: dict[str, Any]) -> StageConfig:
        """A training stage's config, with the sweep's best values applied to the swept stage."""
        from pipelines.training.sweep import apply_params

        stage = next(s for s in self.train_cfg.stage_configs() if s.name == name)
        if "sweep" in up and stage.name == self.sweep_cfg.stage:
            stage = from_dict(StageConfig, apply_params(asdict(stage), up["sweep"]["params"]))
        return stage

    def previous_weights(self, name: str, up: dict[str, Any]) -> str | dict[str, str] | None:
        """The weights digest of the last training stage before ``name``; for the first, those of the backbones the
        pipeline pre-trained (None without)."""
        before = self.stage_names[: self.stage_names.index(name)]
        trained = [n for n in before if n.startswith("train:")]
        if trained:
            return up[trained[-1]]["weights_sha256"]
        return {k: up[f"{k}_pretrain"]["weights_sha256"] for k in self.own_backbones} or None

    def use_backbones(self, up: dict[str, Any]) -> None:
        """Point the training config at the backbones the pipeline pre-trained (before a ChEX stage builds its model)."""
        for k in self.own_backbones:
            setattr(self.train_cfg, f"{k}_dir", up[f"{k}_pretrain"]["model_dir"])

    def run(self, from_stage: str | None = None, only: str | None = None, address: str | None = None,
            session: Session | None = None) -> list[StageRecord]:
        """Run the stages; with a console ``session``, each stage's library output goes to ``logs/<stage>.log`` and
        its progress to the session's display."""
        import ray

        names = self.stage_names
        for s in (from_stage, only):
            if s is not None and s not in names:
                raise ConfigError(f"unknown stage {s!r}; this pipeline has {names}")
        if self.cfg.deploy.enabled and not address:
            raise ConfigError("deploy: enabled needs a long-lived Ray cluster to serve on: pass --address (a local "
                              "instance ends with the pipeline; `chex serve` serves without one)")
        if "evaluate" in (self.stage_names[: names.index(only) + 1] if only else names):
            self.eval_cfg.preflight()  # e.g. the CheXbert files: one line now, not after the training stages
        self.workdir.mkdir(parents=True, exist_ok=True)
        forced = set(names[names.index(from_stage):]) if from_stage else set()
        runs = _Runs(self, session, forced, only, address)
        with runs.log("pipeline"):
            ours = not ray.is_initialized()
            try:
                return self._run_all(runs, address, self.stages[: names.index(only) + 1] if only else self.stages)
            finally:
                if ours:  # workers' last lines land in the log, not on the console after the summary
                    ray.shutdown()

    def _run_all(self, runs: _Runs, address: str | None, stages: list[Stage]) -> list[StageRecord]:
        import mlflow

        from pipelines.redact import redact
        from pipelines.tracking import code_tags, flatten

        exp = Tracking(self.cfg.tracking(), self.cfg.experiment).activate()  # nested stage runs land in it too
        with mlflow.start_run(experiment_id=exp, run_name="pipeline", tags=code_tags()) as parent:
            (self.workdir / "resolved_config.json").write_text(json.dumps(redact(self.resolved()), indent=2, default=str))
            mlflow.log_artifact(str(self.workdir / "resolved_config.json"))
            mlflow.log_params(flatten({"pipeline": asdict(self.cfg)}))
            ctx = Context(self, {}, parent.info.run_id, address)
            records = [runs.run_or_skip(stage, ctx, PipelineState(self.workdir)) for stage in stages]
            mlflow.set_tags({f"stage.{r.name}": "skipped" if r.skipped else "ran" for r in records})
        return records


class _Runs:
    """Running or skipping each stage of one ``Pipeline.run``: the state file, the display and the log files."""

    def __init__(self, pipeline: Pipeline, session: Session | None, forced: set[str], only: str | None,
                 address: str | None) -> None:
        from pipelines.ingest.manifest import code_version

        self.pipeline, self.session, self.forced, self.only = pipeline, session, forced, only
        self.logs = pipeline.workdir / LOG_DIR
        self.code = code_version(Path(__file__).resolve().parents[2])
        self.address = address

    def ray(self) -> None:
        """Ray up before the first stage that runs (a run that reuses every stage starts none); workers' output
        reaches the stage's log file through the driver."""
        from pipelines.ray_runtime import init_ray

        init_ray(self.address, log_to_driver=True)

    def log(self, name: str):
        return self.session.log_to(self.logs / log_name(name)) if self.session else contextlib.nullcontext()

    def show(self, name: str, state: str, note: str = "") -> None:
        if self.session is not None:
            (self.session.display.stage_started(name) if state == "running" else
             self.session.display.stage_finished(name, state, note))

    def run_or_skip(self, stage: Stage, ctx: Context, state: PipelineState) -> StageRecord:
        """Reuse the stage's last result when its key and outputs still hold, else run it and record the result."""
        key, inputs = stage.key(ctx)
        prev = state.get(stage.name)
        reusable = prev.get("key") == key and prev.get("status") == "succeeded" and stage.outputs_exist(prev.get("outputs", {}))
        if (self.only and stage.name != self.only) or (reusable and stage.name not in self.forced):
            if not reusable:
                raise ConfigError(f"--only {self.only}: stage {stage.name} has no up-to-date result to build on; run it first")
            ctx.upstream[stage.name] = prev["outputs"]
            log.info("stage %s: unchanged, skipped", stage.name)
            self.show(stage.name, "skipped")
            return StageRecord(stage.name, key, prev["outputs"], True)
        attempt = attempt_of(prev, key, stage.name in self.forced)
        if attempt == prev.get("attempt"):
            log.info("stage %s: continuing its %s attempt %s (--from %s starts it afresh)", stage.name,
                     "interrupted" if prev["status"] == "running" else "failed", attempt, stage.name)
        entry = {"key": key, "inputs": inputs, "attempt": attempt, "log": f"{LOG_DIR}/{log_name(stage.name)}"}
        self.ray()
        state.set(stage.name, status="running", **entry)
        self.show(stage.name, "running")
        t0 = time.monotonic()
        try:
            with self.log(stage.name):
                log.info("stage %s: running (attempt %s)", stage.name, attempt)
                try:
                    outputs = stage.run(replace(ctx, attempt=attempt))
                except Exception:  # the traceback for the log file; the console gets the one-line error
                    log.exception("stage %s failed", stage.name, extra={"console": False})
                    raise
        except Exception as exc:
            import mlflow

            state.set(stage.name, status="failed", error=f"{type(exc).__name__}: {exc}", **entry)
            mlflow.set_tag("failed_stage", stage.name)
            self.show(stage.name, "failed")
            raise StageFailed(stage.name, exc, str(self.pipeline.workdir / entry["log"])) from exc
        state.set(stage.name, status="succeeded", outputs=outputs, code=self.code, pipeline_run=ctx.parent_run_id,
                  finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  seconds=round(time.monotonic() - t0, 1), **entry)
        ctx.upstream[stage.name] = outputs
        self.show(stage.name, "done", stage.summary(outputs))
        return StageRecord(stage.name, key, outputs, False)
