"""The pipeline's YAML config (``configs/pipeline/*.yaml``): where it runs, which stage configs it chains."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chex_model.typed_config import ConfigError, load_config
from pipelines.tracking import client_uri, default_uri


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
class DeploySettings:
    """After ``register``, (re)start the ``chex serve`` application on the champion, only when the champion changed.
    It needs a long-lived Ray cluster (``chex pipeline run --address``): a local instance ends with the pipeline."""

    enabled: bool = False
    host: str = "127.0.0.1"  # any other address needs CHEX_API_TOKEN in the pipeline's environment
    port: int = 8000
    replicas: int = 1
    precision: str = "auto"
    max_batch: int = 8


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
    deploy: DeploySettings = field(default_factory=DeploySettings)
    tracking_uri: str = ""  # "" = sqlite:///<abs workdir>/mlflow.db
    experiment: str = "chex-pipeline"

    def tracking(self) -> str:
        """The store, as MLflow is given it (credentials in the URI move to MLflow's environment variables)."""
        return client_uri(self.tracking_uri) if self.tracking_uri else default_uri(self.workdir)


def load_pipeline_config(path: Path) -> PipelineConfig:
    cfg = load_config(PipelineConfig, path)
    for name in ("ingest", "train", "evaluate", "sweep"):
        if getattr(cfg, name) and not Path(getattr(cfg, name)).is_file():
            raise ConfigError(f"{path}: {name} config {getattr(cfg, name)} does not exist")
    return cfg
