"""The per-worker training (Ray Train V2, DeepSpeed or DDP): :class:`Trainer` streams the shard, steps, validates,
checkpoints and resumes; the functions around it are the pieces it is made of."""
from __future__ import annotations

import contextlib
import json
import math
import resource
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chex_model.chex import ANCHOR, ChEX
from chex_model.image_encoder import normalize
from chex_model.multitask import Batch
from chex_model.precision import training_autocast
from pipelines.training.progress import Sender
from pipelines.tracking import Tracking, flatten, log_dataset
from pipelines.training.collate import collate
from pipelines.training.config import DataConfig, StageConfig, TrainConfig
from pipelines.training.engines import DdpEngine, DeepSpeedEngine

MODEL_DIR = "model"
STATE_FILE = "state.json"  # step, epoch, position and MLflow run of a checkpoint, for people and the driver
PARENT_TAG = "mlflow.parentRunId"
RESUMED_METRIC = "resumed_from_step"  # logged at each restart from a checkpoint, at the step it resumed from
GROUP_FILE = "placement_group"  # <workdir>/placement_group: the worker group's id, for cleaning up after a kill


def set_trainable(model: ChEX, parts: list[str]) -> None:
    """Freeze everything, then unfreeze the named parts ("image_encoder_top" = the reference's stage-1 choice:
    the last 4 ViT blocks; the frozen text encoder is never trained)."""
    model.requires_grad_(False)
    enc = model.image_encoder
    n_blocks = len(enc.clip.vision_model.encoder.layers)
    if "image_encoder" in parts:
        enc.freeze(0, False)
    elif "image_encoder_top" in parts:
        enc.freeze(max(0, n_blocks - 3), True)  # embeddings + the first n-4 blocks frozen, as the reference's 9 of 14
    else:
        enc.freeze_all()
    for name in ("detector", "post_decoder", "generator"):
        if name in parts:
            getattr(model, name).requires_grad_(True)


def lr_lambda(stage: StageConfig):
    """Linear warm-up from 0, then cosine decay to ``min_lr`` at ``stage.steps``."""
    floor = stage.min_lr / stage.lr

    def f(step: int) -> float:
        if step < stage.warmup_steps:
            return (step + 1) / max(1, stage.warmup_steps)
        t = min(1.0, (step - stage.warmup_steps) / max(1, stage.steps - stage.warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def region_encoding_for(stage: StageConfig, rng: np.random.Generator) -> str:
    """This step's region encoding: a box-query batch with ``box_query_prob``, a coin flip for "random"."""
    if stage.region_encoding == "text":
        return "text"
    if rng.uniform() < stage.box_query_prob:
        return "boxes"
    if stage.region_encoding == "random":
        return "boxes" if rng.uniform() < 0.5 else "prompts"
    return stage.region_encoding


def weighted_loss(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The stage's weighted sum, plus the model's zero anchor term when present (every rank then back-propagates
    through the same parameters, even for a micro batch without any of the stage's targets)."""
    terms = [weights[k] * v for k, v in losses.items() if weights.get(k, 0.0) != 0.0]
    if ANCHOR in losses:
        terms.append(losses[ANCHOR])
    return torch.stack(terms).sum() if terms else torch.zeros(())


ANATOMY_BOX_TERMS = ("anat_box_l1", "anat_box_giou", "anat_box_score", "anat_ground")


def stage_batch(nb: dict[str, np.ndarray], rng: np.random.Generator, data: DataConfig, stage: StageConfig, train: bool) -> Batch:
    """The stage's multitask batch: classes and regions subsampled and region synonyms drawn in training (validation
    keeps all, canonical prompts); multi-region prompts only where anatomy boxes are weighed, ``patho_gen`` targets
    only where that term is (the reference's later stages run no multi-region prompts)."""
    w = stage.loss_weights
    multi = data.multi_regions and any(w.get(k) for k in ANATOMY_BOX_TERMS)
    findings = bool(w.get("patho_gen"))
    if train:
        return collate(nb, rng, data.pathology_classes, data.anatomy_regions, data.max_sentences, data.anatomy_synonyms,
                       multi, findings)
    return collate(nb, rng, 10**6, 10**6, data.max_sentences, False, multi, findings)


def _batch_to(batch: Batch, device: torch.device, dtype: torch.dtype) -> Batch:
    """Images in the engine's dtype; every target tensor on the device (strings and nested lists stay)."""
    batch.images = batch.images.to(device, dtype)
    for targets in (batch.pathology, batch.anatomy, batch.findings):
        if targets is not None:
            for name, value in vars(targets).items():
                if isinstance(value, torch.Tensor):
                    setattr(targets, name, value.to(device))
    return batch


@torch.no_grad()
def validate(model: ChEX, val_iter, cfg: TrainConfig, stage: StageConfig, device, dtype) -> dict[str, float]:
    """Losses on up to ``val_max_images`` val images (no augmentation), plus anatomy box mIoU of the detector."""
    from chex_model import box_ops

    was = model.training
    model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    iou_sum, iou_n, seen = 0.0, 0, 0
    rng = np.random.default_rng(0)
    for nb in val_iter:
        batch = _batch_to(stage_batch(nb, rng, cfg.data, stage, train=False), device, dtype)
        losses = model(batch, region_encoding="text" if stage.region_encoding == "text" else "prompts",
                       generate=stage.generate, post_decoder=bool(stage.post_decoder))
        losses["loss"] = weighted_loss(losses, stage.loss_weights)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
        if batch.anatomy is not None and stage.region_encoding != "text":
            feats = model.encode_image(normalize(batch.images, model.cfg.image))
            det = model.detect(feats, model.encode_prompts(batch.anatomy.prompts), post_decoder=False)
            pred = box_ops.cxcywh_to_xyxy(det.box[batch.anatomy.present].float())
            tgt = box_ops.cxcywh_to_xyxy(batch.anatomy.boxes[batch.anatomy.present].to(pred))
            if len(pred):
                iou_sum += float(torch.diag(box_ops.box_iou(pred, tgt)).sum())
                iou_n += len(pred)
        seen += batch.images.shape[0]
        if seen >= cfg.data.val_max_images:
            break
    model.train(was)
    out = {f"val/{k}": v / counts[k] for k, v in sums.items()}  # each term over the batches that had it
    if iou_n:
        out["val/anat_miou"] = iou_sum / iou_n
    return out


@dataclass
class LoopConfig:
    """What the driver hands every training worker of a stage (plain data: Ray ships it to the workers)."""

    train: TrainConfig
    stage: StageConfig
    init_model: str
    workdir: str
    tracking: Tracking
    run_name: str
    tags: dict[str, str] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)  # dataset specs logged as MLflow inputs
    deepspeed: dict[str, Any] = field(default_factory=dict)
    t0: float = 0.0  # when the driver called fit(): the time to the first step counts from here
    progress: Any = None  # a Ray queue to the driver's display (pipelines/training/progress.py), or None


class StageTrainer:
    """One worker's training of a stage under Ray Train V2: set-up, resume, step, validate, checkpoint.

    Every rank saves its part (its ZeRO shard) into the same reported checkpoint, plus, from rank 0, the exported
    model (:meth:`export`) and the loop state; resuming restores model, optimizer, scheduler, step and the position
    in the epoch. Rank 0 validates and logs to MLflow. What is trained and how a micro batch becomes a loss are the
    subclass's (:meth:`build`, :meth:`losses`, :meth:`validate`); subclasses may hook :meth:`after_step`.
    """

    def __init__(self, loop: LoopConfig) -> None:
        import ray.train

        self.loop, self.cfg, self.stage = loop, loop.train, loop.stage
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        use_gpu = torch.cuda.is_available() and self.cfg.use_gpu
        self.device = torch.device(f"cuda:{ctx.get_local_rank()}" if use_gpu else "cpu")
        torch.manual_seed(self.cfg.data.seed)
        self.model = self.build()
        params = [p for p in self.model.parameters() if p.requires_grad]
        # fused: one multi-tensor kernel per step instead of a Python loop over tensors (CPU and CUDA)
        optimizer = torch.optim.AdamW(params, lr=self.stage.lr, weight_decay=self.stage.weight_decay, fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.stage))
        if self.cfg.engine == "ddp":
            self.engine = DdpEngine(self.model, optimizer, self.scheduler, self.cfg.accumulation(), self.cfg.grad_clip)
        else:
            self.engine = DeepSpeedEngine(self.model, optimizer, self.scheduler, loop.deepspeed, use_gpu)
        self.dtype = self.engine.dtype
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "mlflow_run_id": None}
        self.mlflow: Any = None
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.send = Sender(loop.progress if self.rank == 0 else None, self.stage.steps)

    def build(self) -> torch.nn.Module:
        """The module to train, on ``self.device``, with exactly the trained parameters requiring gradients."""
        raise NotImplementedError

    def losses(self, nb: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """The named loss terms of one micro batch, through the engine (``self.engine(...)``)."""
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        raise NotImplementedError

    def export(self, directory: Path) -> None:
        """Write the model later stages load (rank 0, into each checkpoint)."""
        self.model.save_pretrained(directory)

    def train_mode(self) -> None:
        self.engine.train()

    def resume(self) -> None:
        """Continue from the latest reported checkpoint, if Ray restarted the group from one."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as d:
                self.state.update(self.engine.load(d))

    def start_tracking(self) -> None:
        """Rank 0: open the stage's MLflow run (or reopen it after a restart) and note the worker group's id."""
        import mlflow
        import ray.util

        if self.rank != 0:
            return
        self.loop.tracking.activate()
        run_id = self.state.get("mlflow_run_id")
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else self.loop.run_name,
                               tags=None if run_id else self.loop.tags)
        if run_id is None:
            mlflow.log_params(flatten({"train": asdict(self.cfg), "stage": asdict(self.stage)}))
            for ds in self.loop.inputs:
                log_dataset(ds)
        else:  # restarted from a checkpoint (a lost worker or node, a rerun of an interrupted stage): say where from,
            # under the pipeline run that now drives the stage (a rerun's new parent run)
            mlflow.log_metric(RESUMED_METRIC, self.state["step"], step=self.state["step"])
            mlflow.set_tags({k: v for k, v in self.loop.tags.items() if k == PARENT_TAG})
        self.mlflow, self.state["mlflow_run_id"] = mlflow, run.info.run_id
        group = ray.util.get_current_placement_group()
        if group is not None:
            Path(self.loop.workdir, GROUP_FILE).write_text(group.id.hex())

    def fit(self) -> None:
        """Stream the shard epoch after epoch until the stage's last optimizer step."""
        import ray.data
        import ray.train

        self.resume()
        self.start_tracking()
        ray.data.DataContext.get_current().use_ray_tqdm = False  # Ray Data logs its progress here (the stage log)
        shard = ray.train.get_dataset_shard("train")
        self.val = _ValCache(ray.train.get_dataset_shard("val"), self.cfg.micro_batch) if self.rank == 0 else None
        self.perf = _Perf(self.loop.t0 or time.time(), self.cfg.batch_size)
        if self.rank == 0 and self.state["step"] == 0:  # the untrained baseline: every curve starts where the stage did
            with self.perf.pause():
                self.mlflow.log_metrics(self.validate(), step=0)
        self.train_mode()
        while self.state["step"] < self.stage.steps:
            if self.epoch(shard):
                self.state["epoch"] += 1
                self.state["batch_in_epoch"] = 0
        if self.rank == 0:
            self.mlflow.end_run()

    def epoch(self, shard) -> bool:
        """The rest of this epoch; True when the epoch ran out (False: the stage's last step came first)."""
        cfg, state = self.cfg, self.state
        skip = state["batch_in_epoch"]
        # no drop_last: the split gives every rank the same number of rows, hence of batches, and a small table
        # must still train; an epoch without a single batch is an error, not an endless loop
        batches = shard.iter_batches(batch_size=cfg.micro_batch, batch_format="numpy",
                                     local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                                     local_shuffle_seed=(cfg.data.seed * 1_000_003 + state["epoch"] * 1009 + self.rank) % 2**31)
        i = -1
        for i, nb in enumerate(batches):
            if i < skip:
                continue
            if self.micro_step(nb, i) and state["step"] >= self.stage.steps:
                return False
        if i < 0:
            raise RuntimeError(f"stage {self.stage.name}: the training split gave rank {self.rank} no rows "
                               f"(sources {self.stage.sources}, {self.world} workers)")
        return True

    def micro_step(self, nb: dict[str, np.ndarray], i: int) -> bool:
        """Forward and backward of micro batch ``i``; True when it completed an optimizer step."""
        cfg, step = self.cfg, self.state["step"]
        rng = np.random.default_rng([cfg.data.seed, step, self.rank, i])
        torch.manual_seed(cfg.data.seed * 1_000_003 + step * 101 + self.rank * 7 + i)
        with training_autocast(self.device, cfg.cpu_bf16):
            losses = self.losses(nb, rng)
        loss = weighted_loss(losses, self.stage.loss_weights)
        for k, v in (("loss", loss), *((f"train/{k}", v) for k, v in losses.items() if k != ANCHOR)):
            self.sums[k] = self.sums.get(k, 0.0) + v.item()
            self.counts[k] = self.counts.get(k, 0) + 1  # a term is averaged over the micro batches that had it
        boundary = self.engine.backward_and_step(loss)
        self.state["batch_in_epoch"] = i + 1
        if boundary:
            self.state["step"] += 1
            self.perf.stepped(self.state["step"])
            self.after_step(self.state["step"])
            self.log_step()
        return boundary

    def after_step(self, step: int) -> None:
        """Called on every rank after each optimizer step, before logging; a no-op here."""

    def log_step(self) -> None:
        """This step's metrics; validation and a checkpoint every ``val_every`` steps and at the end."""
        step = self.state["step"]
        # loss: this step's mean over micro batches and ranks; loss terms: rank 0's micro batches
        metrics = {**{k: v / self.counts[k] for k, v in self.sums.items()}, "lr": self.scheduler.get_last_lr()[0]}
        metrics["loss"] = _mean_over_ranks(metrics["loss"], self.device)
        self.sums, self.counts = {}, {}
        if self.rank == 0:
            self.mlflow.log_metrics(metrics, step=step)
            self.send(step, metrics["loss"], self.perf.samples_per_s(step))
        if step % self.stage.val_every == 0 or step >= self.stage.steps:
            metrics.update({**self.perf.metrics(step, self.device), "step": step})
            with self.perf.pause():
                self.checkpoint(metrics)
            self.train_mode()

    def checkpoint(self, metrics: dict[str, float]) -> None:
        """Validate (rank 0), then every rank writes its engine shard and reports the same checkpoint."""
        import ray.train

        if self.rank == 0:
            metrics.update(self.validate())
            self.mlflow.log_metrics({k: v for k, v in metrics.items() if k.startswith(("val/", "perf/"))},
                                    step=self.state["step"])
        with tempfile.TemporaryDirectory() as tmp:
            self.engine.save(tmp, dict(self.state))
            if self.rank == 0:
                self.export(Path(tmp) / MODEL_DIR)
                (Path(tmp) / STATE_FILE).write_text(json.dumps({**self.state, "metrics": metrics}, indent=2))
            torch.distributed.barrier()
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class Trainer(StageTrainer):
    """A ChEX stage: the previous stage's model with the stage's parts trainable, multitask losses."""

    def build(self) -> ChEX:
        model = ChEX.from_pretrained(self.loop.init_model, device=self.device)
        if self.stage.box_token_drop is not None:
            model.post_decoder.token_drop = self.stage.box_token_drop
        set_trainable(model, self.stage.trains)
        return model

    def losses(self, nb: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        cfg, stage = self.cfg, self.stage
        batch = _batch_to(stage_batch(nb, rng, cfg.data, stage, train=True), self.device, self.dtype)
        # one coin per step, the same on every rank and micro batch (the reference flips it per step)
        encoding = region_encoding_for(stage, np.random.default_rng([cfg.data.seed, self.state["step"]]))
        return self.engine(batch, region_encoding=encoding, generate=stage.generate, post_decoder=bool(stage.post_decoder))

    def validate(self) -> dict[str, float]:
        out = validate(self.model, self.val.batches(), self.cfg, self.stage, self.device, self.dtype)
        if self.stage.val_tasks:
            from pipelines.training.val_tasks import val_task_metrics

            out.update(val_task_metrics(self.model, Path(self.cfg.data.tables), self.stage.val_tasks,
                                        self.cfg.data.val_max_images, self.cfg.micro_batch * 4, self.dtype))
        return out

    def train_mode(self) -> None:
        train_mode(self.engine, self.model, self.stage)


def train_worker(config: dict[str, Any]) -> None:
    """``TorchTrainer`` entry point: ``config = {"loop": LoopConfig, "trainer": a StageTrainer subclass}``."""
    config["trainer"](config["loop"]).fit()


class _Perf:
    """Throughput bookkeeping: time from ``fit()`` to the first optimizer step, then samples/s over the later steps
    (validation and checkpointing excluded), and the largest peak RSS over the ranks."""

    def __init__(self, t0: float, batch_size: int) -> None:
        self.t0, self.batch_size = t0, batch_size
        self.first: float | None = None  # when the first optimizer step of this process ended
        self.first_step, self.to_first, self.paused = 0, 0.0, 0.0

    @contextlib.contextmanager
    def pause(self):
        start = time.time()
        try:
            yield
        finally:
            self.paused += time.time() - start

    def stepped(self, step: int) -> None:
        if self.first is None:
            self.first, self.first_step = time.time(), step
            self.to_first, self.paused = self.first - self.t0 - self.paused, 0.0

    def metrics(self, step: int, device: torch.device) -> dict[str, float]:
        peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024], device=device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
        out = {"perf/time_to_first_step_s": self.to_first, "perf/peak_rss_mb": peak.item()}
        rate = self.samples_per_s(step)
        if rate is not None:
            out["perf/steps_per_s"], out["perf/samples_per_s"] = rate / self.batch_size, rate
        return out

    def samples_per_s(self, step: int) -> float | None:
        """Samples per second over the steps after the first (validation and checkpoints excluded)."""
        elapsed = time.time() - self.first - self.paused if self.first is not None else 0.0
        return (step - self.first_step) * self.batch_size / elapsed if step > self.first_step and elapsed > 0 else None


class _ValCache:
    """The val split is small and fixed (no augmentation): read it through Ray Data once, then reuse the batches."""

    def __init__(self, shard, batch_size: int) -> None:
        self.shard, self.batch_size, self.cached = shard, batch_size, None

    def batches(self) -> list[dict[str, np.ndarray]]:
        if self.cached is None:
            self.cached = list(self.shard.iter_batches(batch_size=self.batch_size, batch_format="numpy"))
        return self.cached


def train_mode(engine, model: ChEX, stage: StageConfig) -> None:
    """Training mode for what this stage trains; frozen parts run in eval mode (no dropout, no random ROI skip)."""
    engine.train()
    for name in ("detector", "post_decoder", "generator"):
        if name not in stage.trains:
            getattr(model, name).eval()


def _mean_over_ranks(x: float, device: torch.device) -> float:
    value = torch.tensor([x], device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(value)
        value /= torch.distributed.get_world_size()
    return value.item()
