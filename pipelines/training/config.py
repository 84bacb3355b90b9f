"""Typed training configuration: data, model, the stages of the workflow, scaling, DeepSpeed, MLflow.

One YAML file (``configs/train/<name>.yaml``) describes a whole workflow; each stage names what it trains, its
loss weights and its schedule, and starts from the previous stage's exported model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chex_model.typed_config import ConfigError, load_config
from pipelines.tracking import Tracking
from pipelines.training.augment import AugmentConfig

TRAINABLE = ("image_encoder", "image_encoder_top", "detector", "post_decoder", "generator")
ENGINES = ("deepspeed", "ddp")
REGION_ENCODINGS = ("prompts", "boxes", "random", "text")


@dataclass
class DataConfig:
    tables: str = "demo_run/ingested"  # the ingest output folder (tables/ + manifest.json)
    image_size: int = 0  # model input side; 0 = the model's own
    vindr_factor: int = 0  # VinDr copies per epoch; 0 = round(N_mimic / N_vindr)
    exclude_ms_cxr: bool = True  # keep MS-CXR evaluation images out of MIMIC training (reference: False)
    frontal_only: bool = True  # MIMIC-CXR PA / AP views only, as the reference trains (its datasets are tagged frontal)
    pathology_classes: int = 10  # class queries kept per step (reference subsample 10)
    anatomy_regions: int = 20  # anatomy queries kept per step (reference subsample 20)
    max_sentences: int = 0  # report sentences per image used as prompts per step (0 = all, as the reference)
    anatomy_synonyms: bool = True  # one random synonym per region and step ("Right hilum" for "Right hilar structures")
    multi_regions: bool = True  # train the multi-region prompts ("Bilateral", "Lung bases") on their member boxes
    val_max_images: int = 64  # at most this many val images per validation pass
    seed: int = 42
    cache_rows: bool = False  # keep the read rows (compressed) in the object store across epochs; for data that fits
    shuffle_buffer: int = 256  # rows in each worker's local shuffle buffer (reseeded every epoch)
    # True: each row's augmentation is a function of (seed, row, copy), identical every epoch, and blocks stream in
    # order, so a resumed run reproduces an uninterrupted one; False: fresh draws every epoch, no ordering waits
    reproducible: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class StageConfig:
    name: str = "detection"
    trains: list[str] = field(default_factory=lambda: ["image_encoder_top", "detector"])
    sources: list[str] = field(default_factory=lambda: ["mimic_cxr", "vindr_cxr"])  # tables this stage reads
    loss_weights: dict[str, float] = field(default_factory=dict)
    steps: int = 100  # optimizer steps (global batches)
    epochs: float = 0.0  # if > 0, steps = ceil(epochs x training samples per epoch / batch_size), samples counted at start
    lr: float = 1e-4
    min_lr: float = 1e-7
    warmup_steps: int = 10
    weight_decay: float = 1e-5
    # anatomy ROI tokens from "prompts" (detector), "boxes" (GT) or "random" (a coin flip per step); "text" =
    # sentence-generator pre-training on frozen CLIP sentence embeddings, no image
    region_encoding: str = "prompts"
    box_query_prob: float = 0.0  # chance a batch's anatomy ROI tokens come from its target boxes (box queries)
    generate: bool = False  # compute language-model losses
    # anatomy and sentence ROI tokens through the post decoder; None = once it trains (this stage or an earlier one),
    # as the reference, whose stage 1 has no post decoder
    post_decoder: bool | None = None
    box_token_drop: float | None = None  # post decoder box-token drop in this stage; None = the model config's
    val_every: int = 50
    select_metric: str = "val/loss"  # checkpoint selection: the best of this metric
    select_mode: str = "min"
    # evaluation tasks scored on the val split at each validation, as val/<task>/<metric> (e.g. val/od_vindr/mAP)
    val_tasks: list[str] = field(default_factory=list)
    # this stage's own batch geometry and worker count (0 = the training config's)
    batch_size: int = 0
    micro_batch: int = 0
    workers: int = 0


@dataclass
class BackboneStageConfig:
    """A backbone pre-training stage (``clip_pretrain``, ``lm_pretrain``): trains from scratch on the ingested
    MIMIC-CXR train split, before the ChEX stages, unless the backbone's folder is given (``clip_dir``, ``lm_dir``)."""

    enabled: bool = False
    steps: int = 300  # 0: no training, the stage exports its random start with the tokenizer trained on the data
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_steps: int = 20
    weight_decay: float = 0.1
    val_every: int = 100
    batch_size: int = 0  # 0 = the training config's; contrastive CLIP wants large micro batches (negatives)
    micro_batch: int = 0
    workers: int = 0
    max_sentences: int = 0  # clip: report sentences per text, a random subset each step (0 = the whole report)

    def as_stage(self, name: str, select_metric: str = "val/loss", select_mode: str = "min") -> StageConfig:
        return StageConfig(name=name, trains=[], sources=["mimic_cxr"], steps=self.steps, lr=self.lr, min_lr=self.min_lr,
                           warmup_steps=self.warmup_steps, weight_decay=self.weight_decay, val_every=self.val_every,
                           select_metric=select_metric, select_mode=select_mode, batch_size=self.batch_size,
                           micro_batch=self.micro_batch, workers=self.workers)


@dataclass
class PretrainConfig:
    clip: BackboneStageConfig = field(default_factory=BackboneStageConfig)  # contrastive image-report CLIP -> clip_dir
    lm: BackboneStageConfig = field(default_factory=BackboneStageConfig)  # GPT-2 on report sentences -> lm_dir


def _check_val_tasks(stage: StageConfig) -> None:
    from evaluation.config import ALL_TASKS

    bad = sorted(set(stage.val_tasks) - set(ALL_TASKS))
    if bad:
        raise ConfigError(f"stage {stage.name}: unknown val_tasks {bad}; choose from {list(ALL_TASKS)}")


@dataclass
class CalibrationConfig:
    """Presence calibration of the report's pathology queries (pipelines/training/calibrate.py), refitted after each stage
    that trains the image encoder or the detector."""

    enabled: bool = True
    splits: list[str] = field(default_factory=lambda: ["val"])  # MIMIC-CXR splits fitted on
    max_images: int = 5000  # the first this many frontal images with report sentences, in table order
    min_each: int = 3  # fewer positives (or negatives) than this: the query is never confidently present
    batch_size: int = 32


@dataclass
class MlflowConfig:
    tracking_uri: str = ""  # "" = sqlite:///<absolute path of the workdir>/mlflow.db
    experiment: str = "chex-train"


@dataclass
class TrainConfig:
    workdir: str = "runs/demo"
    model_preset: str = "tiny"
    init_model: str = ""  # a save_pretrained folder to start from ("" = build from the preset)
    clip_dir: str = ""  # pretrained CLIP folder (paper runs)
    lm_dir: str = ""  # pretrained GPT-2 folder (paper runs)
    batch_size: int = 8  # global batch = micro batch x accumulation x workers
    micro_batch: int = 4
    workers: int = 2
    cpus_per_worker: float = 1.0  # < 1 on a laptop leaves cores for the Ray Data pipeline that feeds the workers
    use_gpu: bool = False
    engine: str = "deepspeed"  # "deepspeed" (ZeRO per the JSON below) or "ddp" (plain PyTorch DDP, fp32)
    grad_clip: float = 1.0  # gradient-norm clipping for both engines (written into the DeepSpeed config)
    deepspeed: str = "configs/deepspeed/zero2_cpu.json"
    cpu_bf16: bool = False  # bf16 autocast of the forward on a CPU with native bf16 (AVX-512 BF16 / AMX); fp32 weights
    # Ray Train / Tune storage for checkpoints and run state: "" = <workdir>/ray; on a multi-node cluster a path every
    # node sees (NFS / EFS mount) or a pyarrow URI such as s3://bucket/chex/ray
    storage_path: str = ""
    keep_checkpoints: int = 2
    max_failures: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    stages: list[dict[str, Any]] = field(default_factory=list)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def stage_configs(self) -> list[StageConfig]:
        from chex_model.typed_config import from_dict

        stages = [from_dict(StageConfig, s, f"stages[{i}].") for i, s in enumerate(self.stages)]
        for s in stages:
            bad = sorted(set(s.trains) - set(TRAINABLE))
            if bad:
                raise ConfigError(f"stage {s.name}: unknown trainable part(s) {bad}; choose from {list(TRAINABLE)}")
            if not s.sources or set(s.sources) - {"mimic_cxr", "vindr_cxr"}:
                raise ConfigError(f"stage {s.name}: sources must be a non-empty subset of ['mimic_cxr', 'vindr_cxr']")
            if s.region_encoding not in REGION_ENCODINGS:
                raise ConfigError(f"stage {s.name}: region_encoding must be one of {list(REGION_ENCODINGS)}")
            _check_val_tasks(s)
        seen = False
        for s in stages:
            seen = seen or "post_decoder" in s.trains
            if s.post_decoder is None:
                s.post_decoder = seen
            if s.box_token_drop is not None and not 0.0 <= s.box_token_drop < 1.0:
                raise ConfigError(f"stage {s.name}: box_token_drop must be in [0, 1)")
        if len({s.name for s in stages}) != len(stages):
            raise ConfigError("stage names must be unique")
        return stages

    def for_stage(self, stage: StageConfig) -> "TrainConfig":
        """This config with the stage's own batch geometry and workers, where it sets them."""
        from dataclasses import replace

        out = replace(self, batch_size=stage.batch_size or self.batch_size, micro_batch=stage.micro_batch or self.micro_batch,
                      workers=stage.workers or self.workers)
        out.accumulation()
        return out

    def pretrained_backbones(self) -> dict[str, bool]:
        """Which backbones a run pre-trains itself: enabled, and no folder given for it."""
        return {"clip": self.pretrain.clip.enabled and not self.clip_dir, "lm": self.pretrain.lm.enabled and not self.lm_dir}

    def accumulation(self) -> int:
        per_step = self.micro_batch * max(1, self.workers)
        if self.batch_size % per_step:
            raise ConfigError(f"batch_size {self.batch_size} is not a multiple of micro_batch x workers = {per_step}")
        return self.batch_size // per_step

    def deepspeed_config(self) -> dict[str, Any]:
        """The DeepSpeed JSON with the batch sizes derived from this config (never set twice by hand)."""
        try:
            ds = json.loads(Path(self.deepspeed).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read DeepSpeed config {self.deepspeed}: {exc}") from exc
        ds["train_micro_batch_size_per_gpu"] = self.micro_batch
        ds["gradient_accumulation_steps"] = self.accumulation()
        ds["train_batch_size"] = self.batch_size
        ds["gradient_clipping"] = self.grad_clip
        return ds

    def ray_storage(self) -> str:
        return self.storage_path or str(Path(self.workdir).resolve() / "ray")

    def tracking(self) -> Tracking:
        return Tracking.in_folder(self.workdir, self.mlflow.experiment, self.mlflow.tracking_uri)

    def tracking_uri(self) -> str:
        return self.tracking().uri


def load_train_config(path: Path | None) -> TrainConfig:
    cfg = load_config(TrainConfig, path)
    if cfg.engine not in ENGINES:
        raise ConfigError(f"engine must be one of {list(ENGINES)}, got {cfg.engine!r}")
    for s in cfg.stage_configs():
        cfg.for_stage(s)
    cfg.accumulation()
    check_backbones(cfg)
    return cfg


def check_backbones(cfg: TrainConfig) -> None:
    """ChEX starts from both backbones pretrained or from neither: one pre-training stage needs the other backbone
    too (its stage, or its folder)."""
    own = cfg.pretrained_backbones()
    have = {"clip": own["clip"] or bool(cfg.clip_dir), "lm": own["lm"] or bool(cfg.lm_dir)}
    if have["clip"] != have["lm"]:
        missing = "lm" if have["clip"] else "clip"
        raise ConfigError(f"the {'CLIP' if missing == 'clip' else 'GPT-2'} backbone is neither pre-trained nor given: "
                          f"enable pretrain.{missing} or set {missing}_dir (ChEX starts from both backbones or neither)")
    for name in ("clip", "lm"):
        stage = getattr(cfg.pretrain, name)
        if own[name]:
            cfg.for_stage(stage.as_stage(f"{name}_pretrain"))
