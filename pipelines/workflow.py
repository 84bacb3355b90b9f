"""``chex pipeline run``: synth (when no raw data is configured) -> ingest -> training stages -> evaluation ->
registration, under one MLflow parent run with a child run per stage.

Each stage has a key: the sha256 of its own config and the keys of what it consumes (ingest: the raw inputs;
training: the dataset digests and the previous stage's weights; evaluation: the weights and the dataset digests).
A stage whose key matches its last successful run in ``<workdir>/pipeline_state.json`` and whose outputs still
exist is skipped, so a rerun only does what changed; ``from_stage`` forces a rerun from there on. A failing stage
stops the run with its error and leaves every earlier stage's outputs and state in place.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chex_model.typed_config import ConfigError, load_config
from pipelines.digests import file_sha256, key_of
from pipelines.tracking import Tracking, default_uri

if TYPE_CHECKING:
    from pipelines.train_config import StageConfig

log = logging.getLogger(__name__)
STATE_FILE = "pipeline_state.json"


@dataclass
class SynthSettings:
    """:class:`preprocessing.synth.generate.SynthConfig`'s knobs; ``None`` sizes follow the MIMIC study count."""

    studies: int = 24
    seed: int = 0
    image_scale: float = 1.0
    vindr_train: int | None = None
    vindr_test: int | None = None
    nih_images: int | None = None


@dataclass
class RegisterSettings:
    name: str = "chex"
    metric: str = "rg_mimic/METEOR"  # task/metric of the evaluation that decides champion
    higher_is_better: bool = True


@dataclass
class PipelineConfig:
    workdir: str = "runs/pipeline"
    raw: str = ""  # raw datasets root; "" = synthesize them into <workdir>/raw
    synth: SynthSettings = field(default_factory=SynthSettings)
    ingest: str = "configs/ingest.yaml"
    image_size: int = 0  # ingest override; 0 = the ingest config's
    train: str = "configs/train/demo.yaml"
    sweep: str = ""  # a sweep YAML (configs/tune/*.yaml) to tune one training stage first; "" = no sweep
    evaluate: str = "configs/evaluate/default.yaml"
    register: RegisterSettings = field(default_factory=RegisterSettings)
    tracking_uri: str = ""  # "" = sqlite:///<abs workdir>/mlflow.db
    experiment: str = "chex-pipeline"

    def tracking(self) -> str:
        return self.tracking_uri or default_uri(self.workdir)


def load_pipeline_config(path: Path) -> PipelineConfig:
    cfg = load_config(PipelineConfig, path)
    for name in ("ingest", "train", "evaluate", "sweep"):
        if getattr(cfg, name) and not Path(getattr(cfg, name)).is_file():
            raise ConfigError(f"{path}: {name} config {getattr(cfg, name)} does not exist")
    return cfg


class StageFailed(RuntimeError):
    def __init__(self, stage: str, exc: BaseException) -> None:
        super().__init__(f"stage {stage} failed: {type(exc).__name__}: {exc}")
        self.stage = stage


@dataclass
class StageRecord:
    name: str
    key: str
    outputs: dict[str, Any]
    skipped: bool


class Pipeline:
    def __init__(self, cfg: PipelineConfig) -> None:
        from evaluation.config import EvalConfig
        from pipelines.ingest_config import IngestConfig
        from pipelines.train_config import load_train_config

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
        self.sweep_cfg = None
        if cfg.sweep:
            from pipelines.tune import load_sweep_config

            self.sweep_cfg = load_sweep_config(Path(cfg.sweep))
            self.sweep_cfg.train, self.sweep_cfg.workdir = cfg.train, str(self.workdir / "sweep")
            if self.sweep_cfg.stage not in {s.name for s in self.train_cfg.stage_configs()}:
                raise ConfigError(f"{cfg.sweep}: stage {self.sweep_cfg.stage!r} is not a stage of {cfg.train}")
        self.state_path = self.workdir / STATE_FILE

    @property
    def stage_names(self) -> list[str]:
        names = ([] if self.cfg.raw else ["synth"]) + ["ingest"]
        for s in self.train_cfg.stage_configs():
            if self.sweep_cfg is not None and s.name == self.sweep_cfg.stage:
                names.append("sweep")  # right before the stage it tunes: that stage and the later ones use its result
            names.append(f"train:{s.name}")
        return names + ["evaluate", "register"]

    def _stage_config(self, name: str, up: dict[str, Any]) -> StageConfig:
        """A training stage's config, with the sweep's best values applied to the swept stage."""
        from chex_model.typed_config import from_dict
        from pipelines.train_config import StageConfig
        from pipelines.tune import apply_params

        stage = next(s for s in self.train_cfg.stage_configs() if s.name == name.split(":", 1)[1])
        if "sweep" in up and stage.name == self.sweep_cfg.stage:
            stage = from_dict(StageConfig, apply_params(asdict(stage), up["sweep"]["params"]))
        return stage

    def _previous_weights(self, name: str, up: dict[str, Any]) -> str | None:
        trained = [n for n in self.stage_names[: self.stage_names.index(name)] if n.startswith("train:")]
        return up[trained[-1]]["weights_sha256"] if trained else None

    def _state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        tmp.replace(self.state_path)

    def run(self, from_stage: str | None = None, only: str | None = None, address: str | None = None) -> list[StageRecord]:
        import mlflow

        from pipelines.ray_runtime import init_ray
        from pipelines.lineage import code_tags, flatten

        names = self.stage_names
        for s in (from_stage, only):
            if s is not None and s not in names:
                raise ConfigError(f"unknown stage {s!r}; this pipeline has {names}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        state = self._state()
        forced = set(names[names.index(from_stage):]) if from_stage else set()
        init_ray(address)
        exp = Tracking(self.cfg.tracking(), self.cfg.experiment).activate()  # nested stage runs land in it too
        records: list[StageRecord] = []
        upstream: dict[str, Any] = {}
        with mlflow.start_run(experiment_id=exp, run_name="pipeline", tags=code_tags()) as parent:
            (self.workdir / "resolved_config.json").write_text(json.dumps(
                {"pipeline": asdict(self.cfg), "ingest": asdict(self.ingest_cfg), "train": asdict(self.train_cfg),
                 "evaluate": asdict(self.eval_cfg)}, indent=2, default=str))
            mlflow.log_artifact(str(self.workdir / "resolved_config.json"))
            mlflow.log_params(flatten({"pipeline": asdict(self.cfg)}))
            for name in names:
                key, inputs = self._key(name, upstream)
                prev = state.get(name, {})
                reusable = prev.get("key") == key and prev.get("status") == "succeeded" and self._outputs_exist(prev.get("outputs", {}))
                if only and names.index(name) > names.index(only):
                    break
                if (only and name != only) or (reusable and name not in forced):
                    if not reusable:
                        raise ConfigError(f"--only {only}: stage {name} has no up-to-date result to build on; run it first")
                    upstream[name] = prev["outputs"]
                    records.append(StageRecord(name, key, prev["outputs"], True))
                    log.info("stage %s: unchanged, skipped", name)
                    continue
                log.info("stage %s: running", name)
                state[name] = {"key": key, "status": "running", "inputs": inputs}
                self._save(state)
                try:
                    outputs = self._run_stage(name, upstream, parent.info.run_id, address)
                except Exception as exc:
                    state[name]["status"] = "failed"
                    state[name]["error"] = f"{type(exc).__name__}: {exc}"
                    self._save(state)
                    mlflow.set_tag("failed_stage", name)
                    raise StageFailed(name, exc) from exc
                state[name] = {"key": key, "status": "succeeded", "inputs": inputs, "outputs": outputs}
                self._save(state)
                upstream[name] = outputs
                records.append(StageRecord(name, key, outputs, False))
            mlflow.set_tags({f"stage.{r.name}": "skipped" if r.skipped else "ran" for r in records})
        return records

    # ---- keys and outputs -----------------------------------------------------------------------------------------
    def _key(self, name: str, up: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if name == "synth":
            inputs = {"synth": asdict(self.cfg.synth)}
        elif name == "ingest":
            inputs = {"ingest": asdict(self.ingest_cfg), "raw": up.get("synth", {}).get("raw", str(Path(self.cfg.raw).resolve())),
                      "synth": up.get("synth", {}).get("key")}
        elif name.startswith("train:"):
            glob = {k: v for k, v in asdict(self.train_cfg).items() if k not in ("stages", "workdir", "mlflow")}
            inputs = {"stage": asdict(self._stage_config(name, up)), "train": glob, "datasets": up["ingest"]["datasets"],
                      "init": self._previous_weights(name, up)}
        elif name == "sweep":
            glob = {k: v for k, v in asdict(self.train_cfg).items() if k not in ("stages", "workdir", "mlflow")}
            stage = self._stage_config(f"train:{self.sweep_cfg.stage}", {})
            inputs = {"sweep": {k: v for k, v in asdict(self.sweep_cfg).items() if k not in ("train", "workdir")},
                      "stage": asdict(stage), "train": glob, "datasets": up["ingest"]["datasets"],
                      "init": self._previous_weights(name, up)}
        elif name == "evaluate":
            last = [n for n in self.stage_names if n.startswith("train:")][-1]
            inputs = {"evaluate": asdict(self.eval_cfg), "weights": up[last]["weights_sha256"],
                      "calibration": up[last].get("calibration_sha256"), "datasets": up["ingest"]["datasets"]}
        else:
            inputs = {"register": asdict(self.cfg.register), "evaluation": up["evaluate"]["key"]}
        return key_of(name, inputs), inputs

    @staticmethod
    def _outputs_exist(outputs: dict[str, Any]) -> bool:
        return all(Path(v).exists() for k, v in outputs.items() if k.endswith(("_dir", "_file")))

    # ---- the stages ----------------------------------------------------------------------------------------------
    def _run_stage(self, name: str, up: dict[str, Any], parent_id: str, address: str | None) -> dict[str, Any]:
        import mlflow

        if name == "synth":
            from preprocessing.synth.generate import SynthConfig, synthesize

            raw = self.workdir / "raw"
            shutil.rmtree(raw, ignore_errors=True)  # a changed synth config must not leave files of the old one behind
            with mlflow.start_run(run_name="synth", nested=True):
                mlflow.log_params(asdict(self.cfg.synth))
                counts = synthesize(raw, SynthConfig(**asdict(self.cfg.synth)))
                mlflow.log_metrics({f"files/{k}": v for k, v in counts.items()})
            return {"raw": str(raw), "raw_dir": str(raw), "key": key_of(asdict(self.cfg.synth))}
        if name == "ingest":
            from pipelines.ingest import run_ingest
            from pipelines.lineage import dataset_inputs, log_dataset

            raw = Path(up["synth"]["raw"]) if "synth" in up else Path(self.cfg.raw)
            out = self.workdir / "ingested"
            with mlflow.start_run(run_name="ingest", nested=True):
                manifest = run_ingest(raw, out, self.ingest_cfg, address=address)
                for spec in dataset_inputs(out, sorted(manifest["datasets"]), "ingest"):
                    log_dataset(spec)
            return {"tables_dir": str(out), "datasets": {k: v["digest"] for k, v in sorted(manifest["datasets"].items())},
                    "manifest_file": str(out / "manifest.json")}
        if name == "sweep":
            from pipelines.train import stage_input
            from pipelines.tune import run_sweep

            res = run_sweep(self.sweep_cfg, address, self.train_cfg, stage_input(self.train_cfg, self.sweep_cfg.stage),
                            nested=True)
            return {"params": res.best_params, "best_config_file": str(res.best_config), "trials": res.trials,
                    "run_id": res.parent_run_id}
        if name.startswith("train:"):
            from chex_model.presence import CALIBRATION_FILE
            from pipelines.train import run_stage, stage_input

            stage = self._stage_config(name, up)
            res = run_stage(self.train_cfg, stage, stage_input(self.train_cfg, stage.name), parent_id)
            calibration = Path(res.model_dir) / CALIBRATION_FILE
            return {"model_dir": str(res.model_dir), "weights_sha256": file_sha256(Path(res.model_dir) / "model.safetensors"),
                    "calibration_sha256": file_sha256(calibration) if calibration.is_file() else None,
                    "checkpoint": res.checkpoint}
        last = [n for n in self.stage_names if n.startswith("train:")][-1]
        if name == "evaluate":
            from pipelines.evaluate import run_evaluation

            out = self.workdir / "evaluation"
            payload = run_evaluation(Path(up["ingest"]["tables_dir"]), self.eval_cfg, out, Path(up[last]["model_dir"]),
                                     self.cfg.tracking(), self.cfg.experiment, parent_run_id=parent_id)
            return {"results_file": str(out / "results.json"), "table_file": str(out / "table.md"),
                    "run_id": payload["mlflow_run_id"], "key": key_of(payload["tasks"], up[last]["weights_sha256"])}
        from pipelines.registry import register, results_metric

        results = json.loads(Path(up["evaluate"]["results_file"]).read_text())
        value = results_metric(results, self.cfg.register.metric)
        with mlflow.start_run(run_name="register", nested=True):
            reg = register(Path(up[last]["model_dir"]), self.cfg.register.name, self.cfg.register.metric, value,
                           up["evaluate"]["run_id"], self.cfg.register.higher_is_better)
        return {"name": reg.name, "version": reg.version, "aliases": reg.aliases, "champion": reg.champion_version}
