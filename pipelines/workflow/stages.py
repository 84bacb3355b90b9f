"""The pipeline's stages, one small class each: what a stage's key is made of, how it runs, which outputs are paths.

A stage's key is the sha256 of its name and its inputs: its own config and the keys of what it consumes (ingest:
the raw inputs; training: the dataset digests and the previous stage's weights; evaluation: the weights and the
dataset digests). Adding a stage means one class here and one entry where :class:`~pipelines.workflow.runner.Pipeline`
lists its stages.
"""
from __future__ import annotations

import json
import shutil
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pipelines.digests import file_sha256, key_of
from pipelines.ingest.config import IngestConfig
from pipelines.training.config import StageConfig, TrainConfig
from pipelines.workflow.config import PipelineConfig

if TYPE_CHECKING:  # annotations only: `chex pipeline status` should not pay for torch and the trainer
    from evaluation.config import EvalConfig
    from pipelines.training.sweep import SweepConfig


class PipelineView(Protocol):
    """What stages read of the pipeline (:class:`~pipelines.workflow.runner.Pipeline`): its resolved configs."""

    cfg: PipelineConfig
    workdir: Path
    ingest_cfg: IngestConfig
    train_cfg: TrainConfig
    eval_cfg: EvalConfig
    sweep_cfg: SweepConfig | None
    own_backbones: list[str]

    @property
    def last_train(self) -> str: ...

    def stage_config(self, name: str, up: dict[str, Any]) -> StageConfig: ...

    def previous_weights(self, name: str, up: dict[str, Any]) -> str | dict[str, str] | None: ...

    def use_backbones(self, up: dict[str, Any]) -> None: ...


@dataclass
class Context:
    """What a stage sees: the pipeline (configs, workdir), the outputs of the stages before it, the parent run."""

    pipeline: PipelineView
    upstream: dict[str, dict[str, Any]]
    parent_run_id: str = ""
    address: str | None = None
    attempt: str = ""  # this run of the stage (state.attempt_of): a training stage's Ray Train run is named by it


class Stage(ABC):
    name: str
    paths: tuple[str, ...] = ()  # output keys naming files or folders that must still exist for a skip

    @abstractmethod
    def inputs(self, ctx: Context) -> dict[str, Any]:
        """Everything the stage's result depends on (plain data)."""

    @abstractmethod
    def run(self, ctx: Context) -> dict[str, Any]:
        """Do the work; the outputs later stages consume."""

    def key(self, ctx: Context) -> tuple[str, dict[str, Any]]:
        inputs = self.inputs(ctx)
        return key_of(self.name, inputs), inputs

    def outputs_exist(self, outputs: dict[str, Any]) -> bool:
        return all(k in outputs and Path(outputs[k]).exists() for k in self.paths)

    def summary(self, outputs: dict[str, Any]) -> str:
        """What the display's line for the finished stage says beyond its progress (empty: the progress says it)."""
        return ""


def _training_globals(ctx: Context) -> dict[str, Any]:
    """The training config's keys that change the ChEX stages' results (not the stage list, folders or tracking;
    backbones the pipeline pre-trains enter through their weights, see ``previous_weights``)."""
    own = {f"{k}_dir" for k in ctx.pipeline.own_backbones}
    return {k: v for k, v in asdict(ctx.pipeline.train_cfg).items()
            if k not in ("stages", "workdir", "mlflow", "pretrain", *own)}


class PretrainStage(Stage):
    """A backbone pre-training stage (``clip_pretrain``, ``lm_pretrain``); absent when the backbone's folder is given."""

    paths = ("model_dir",)
    GLOBALS = ("model_preset", "batch_size", "micro_batch", "workers", "engine", "deepspeed", "grad_clip", "data")

    def __init__(self, kind: str) -> None:
        self.kind, self.name = kind, f"{kind}_pretrain"

    def inputs(self, ctx: Context) -> dict[str, Any]:
        train = asdict(ctx.pipeline.train_cfg)
        return {"pretrain": train["pretrain"][self.kind], "train": {k: train[k] for k in self.GLOBALS},
                "datasets": ctx.upstream["ingest"]["datasets"]}

    def run(self, ctx: Context) -> dict[str, Any]:
        from pipelines.training.pretrain import run_pretrain

        res = run_pretrain(ctx.pipeline.train_cfg, self.kind, ctx.parent_run_id, attempt=ctx.attempt)
        return {"model_dir": str(res.model_dir), "weights_sha256": file_sha256(Path(res.model_dir) / "model.safetensors"),
                "checkpoint": res.checkpoint, "metrics": {k: v for k, v in res.metrics.items() if k.startswith("val/")}}


class SynthStage(Stage):
    name, paths = "synth", ("raw_dir",)

    def inputs(self, ctx: Context) -> dict[str, Any]:
        return {"synth": asdict(ctx.pipeline.cfg.synth)}

    def run(self, ctx: Context) -> dict[str, Any]:
        import mlflow

        from preprocessing.synth.generate import SynthConfig, synthesize

        settings = asdict(ctx.pipeline.cfg.synth)
        raw = ctx.pipeline.workdir / "raw"
        shutil.rmtree(raw, ignore_errors=True)  # a changed synth config must not leave files of the old one behind
        with mlflow.start_run(run_name="synth", nested=True):
            mlflow.log_params(settings)
            counts = synthesize(raw, SynthConfig(**settings))
            mlflow.log_metrics({f"files/{k}": v for k, v in counts.items()})
        return {"raw_dir": str(raw), "key": key_of(settings)}


class IngestStage(Stage):
    name, paths = "ingest", ("tables_dir", "manifest_file")

    @staticmethod
    def _raw(ctx: Context) -> Path:
        synth = ctx.upstream.get("synth")
        return Path(synth["raw_dir"]) if synth else Path(ctx.pipeline.cfg.raw).resolve()

    def inputs(self, ctx: Context) -> dict[str, Any]:
        from pipelines.ingest.plan import raw_fingerprints

        raw = self._raw(ctx)  # a new, changed or removed raw file changes the key (paths, sizes, mtimes; no reads)
        return {"ingest": asdict(ctx.pipeline.ingest_cfg), "raw": str(raw), "synth": ctx.upstream.get("synth", {}).get("key"),
                "raw_files": raw_fingerprints(raw, ctx.pipeline.ingest_cfg)}

    def run(self, ctx: Context) -> dict[str, Any]:
        import mlflow

        from pipelines.ingest.job import run_ingest
        from pipelines.tracking import dataset_inputs, log_dataset

        out = ctx.pipeline.workdir / "ingested"
        with mlflow.start_run(run_name="ingest", nested=True):
            manifest = run_ingest(self._raw(ctx), out, ctx.pipeline.ingest_cfg, address=ctx.address)
            for spec in dataset_inputs(out, sorted(manifest["datasets"]), "ingest"):
                log_dataset(spec)
        return {"tables_dir": str(out), "datasets": {k: v["digest"] for k, v in sorted(manifest["datasets"].items())},
                "manifest_file": str(out / "manifest.json")}


class SweepStage(Stage):
    """A Ray Tune sweep of one training stage, right before it: that stage and the later ones use its result."""

    name, paths = "sweep", ("best_config_file",)

    def inputs(self, ctx: Context) -> dict[str, Any]:
        sweep = ctx.pipeline.sweep_cfg
        return {"sweep": {k: v for k, v in asdict(sweep).items() if k not in ("train", "workdir")},
                "stage": asdict(ctx.pipeline.stage_config(sweep.stage, {})), "train": _training_globals(ctx),
                "datasets": ctx.upstream["ingest"]["datasets"], "init": ctx.pipeline.previous_weights(self.name, ctx.upstream)}

    def run(self, ctx: Context) -> dict[str, Any]:
        from pipelines.training.stages import stage_input
        from pipelines.training.sweep import run_sweep

        p = ctx.pipeline
        p.use_backbones(ctx.upstream)
        res = run_sweep(p.sweep_cfg, ctx.address, p.train_cfg, stage_input(p.train_cfg, p.sweep_cfg.stage), nested=True)
        return {"params": res.best_params, "best_config_file": str(res.best_config), "trials": res.trials,
                "run_id": res.parent_run_id}


class TrainStage(Stage):
    """One training stage of the training config (``train:<stage>``)."""

    paths = ("model_dir",)

    def __init__(self, stage: str) -> None:
        self.stage, self.name = stage, f"train:{stage}"

    def inputs(self, ctx: Context) -> dict[str, Any]:
        return {"stage": asdict(ctx.pipeline.stage_config(self.stage, ctx.upstream)), "train": _training_globals(ctx),
                "datasets": ctx.upstream["ingest"]["datasets"], "init": ctx.pipeline.previous_weights(self.name, ctx.upstream)}

    def run(self, ctx: Context) -> dict[str, Any]:
        from chex_model.presence import CALIBRATION_FILE
        from pipelines.training.stages import run_stage, stage_input

        p = ctx.pipeline
        p.use_backbones(ctx.upstream)
        stage = p.stage_config(self.stage, ctx.upstream)
        res = run_stage(p.train_cfg, stage, stage_input(p.train_cfg, stage.name), ctx.parent_run_id, attempt=ctx.attempt)
        calibration = Path(res.model_dir) / CALIBRATION_FILE
        return {"model_dir": str(res.model_dir), "weights_sha256": file_sha256(Path(res.model_dir) / "model.safetensors"),
                "calibration_sha256": file_sha256(calibration) if calibration.is_file() else None,
                "checkpoint": res.checkpoint}


class EvaluateStage(Stage):
    """The nine tasks on the last training stage's model."""

    name, paths = "evaluate", ("results_file", "table_file")

    def inputs(self, ctx: Context) -> dict[str, Any]:
        model = ctx.upstream[ctx.pipeline.last_train]
        return {"evaluate": asdict(ctx.pipeline.eval_cfg), "weights": model["weights_sha256"],
                "calibration": model.get("calibration_sha256"), "datasets": ctx.upstream["ingest"]["datasets"]}

    def run(self, ctx: Context) -> dict[str, Any]:
        from pipelines.evaluation_run import run_evaluation

        p, model = ctx.pipeline, ctx.upstream[ctx.pipeline.last_train]
        out = p.workdir / "evaluation"
        tables = Path(ctx.upstream["ingest"]["tables_dir"])
        payload = run_evaluation(tables, p.eval_cfg, out, Path(model["model_dir"]), p.cfg.tracking(), p.cfg.experiment,
                                 parent_run_id=ctx.parent_run_id)
        return {"results_file": str(out / "results.json"), "table_file": str(out / "table.md"),
                "run_id": payload["mlflow_run_id"], "key": key_of(payload["tasks"], model["weights_sha256"]),
                **self._showcase(ctx, tables, Path(model["model_dir"]), out, payload["mlflow_run_id"])}

    def summary(self, outputs: dict[str, Any]) -> str:
        results = json.loads(Path(outputs["results_file"]).read_text())
        baselines = list(results.get("baselines") or {})
        n = len(results["tasks"])
        return f"{n} task{'s' * (n != 1)}" + (f", beside {', '.join(baselines)}" if baselines else "")

    @staticmethod
    def _showcase(ctx: Context, tables: Path, model_dir: Path, out: Path, run_id: str) -> dict[str, str]:
        """Abnormal test images with their grounded reports and free-text prompts answered (pipelines/showcase.py),
        as console text and markdown beside the table, and artifacts of the evaluation run."""
        import mlflow

        from pipelines.showcase import render_markdown, render_text, showcase

        show = showcase(model_dir, tables, out / "showcase", max_new_tokens=ctx.pipeline.eval_cfg.max_new_tokens)
        (out / "showcase.txt").write_text(render_text(show))
        (out / "showcase.md").write_text(render_markdown(show, out))
        client = mlflow.MlflowClient(ctx.pipeline.cfg.tracking())
        for name in ("showcase.txt", "showcase.md"):
            client.log_artifact(run_id, str(out / name))
        client.log_artifacts(run_id, str(out / "showcase"), "showcase")
        return {"showcase_file": str(out / "showcase.txt")}


class RegisterStage(Stage):
    """The evaluated model into the registry: ``candidate``, and ``champion`` when it beats the current one."""

    name = "register"

    def inputs(self, ctx: Context) -> dict[str, Any]:
        return {"register": asdict(ctx.pipeline.cfg.register), "evaluation": ctx.upstream["evaluate"]["key"]}

    def run(self, ctx: Context) -> dict[str, Any]:
        import mlflow

        from pipelines.registry import register, results_metric

        settings = ctx.pipeline.cfg.register
        results = json.loads(Path(ctx.upstream["evaluate"]["results_file"]).read_text())
        value = results_metric(results, settings.metric)
        with mlflow.start_run(run_name="register", nested=True):
            reg = register(Path(ctx.upstream[ctx.pipeline.last_train]["model_dir"]), settings.name, settings.metric, value,
                           ctx.upstream["evaluate"]["run_id"], settings.higher_is_better)
        return {"name": reg.name, "version": reg.version, "aliases": reg.aliases, "champion": reg.champion_version}

    def summary(self, outputs: dict[str, Any]) -> str:
        return f"{outputs['name']} v{outputs['version']} ({', '.join(outputs['aliases'])})"


class DeployStage(Stage):
    """The champion online (``chex serve``'s application on the pipeline's Ray cluster). Its key is the champion
    version and the deploy settings, so it reruns only when the champion changed."""

    name = "deploy"

    def inputs(self, ctx: Context) -> dict[str, Any]:
        reg = ctx.upstream["register"]
        return {"deploy": asdict(ctx.pipeline.cfg.deploy), "model": f"models:/{reg['name']}/{reg['champion']}",
                "tracking_uri": ctx.pipeline.cfg.tracking()}

    def run(self, ctx: Context) -> dict[str, Any]:
        from pipelines.serving.deploy import Deployment, deploy

        inputs, d = self.inputs(ctx), ctx.pipeline.cfg.deploy
        return deploy(Deployment(inputs["model"], inputs["tracking_uri"], d.host, d.port, d.replicas, d.precision,
                                 d.max_batch))
