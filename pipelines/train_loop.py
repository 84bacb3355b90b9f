"""The per-worker training loop (Ray Train V2, DeepSpeed or DDP): stream the shard, step, validate, checkpoint, resume.

Every rank saves its part (its ZeRO shard) into the same reported checkpoint, plus, from rank 0, a consolidated
``save_pretrained`` model and the loop state; resuming restores model, optimizer, scheduler, step and the position
in the epoch. Rank 0 validates and logs to MLflow.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import time
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chex_model.chex import ANCHOR, ChEX
from chex_model.image_encoder import normalize
from chex_model.multitask import Batch
from chex_model.typed_config import from_dict
from pipelines.collate import collate
from pipelines.engines import DdpEngine, DeepSpeedEngine
from pipelines.tracking import Tracking
from pipelines.train_config import StageConfig, TrainConfig

MODEL_DIR = "model"
STATE_FILE = "state.json"  # step, epoch, position and MLflow run of a checkpoint, for people and the driver
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
    """Losses on up to ``val_fraction_cap`` val images (no augmentation), plus anatomy box mIoU of the detector."""
    from chex_model import box_ops

    was = model.training
    model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    iou_sum, iou_n, seen = 0.0, 0, 0
    rng = np.random.default_rng(0)
    for nb in val_iter:
        batch = _batch_to(collate(nb, rng, 10**6, 10**6, cfg.data.max_sentences), device, dtype)
        losses = model(batch, region_encoding="text" if stage.region_encoding == "text" else "prompts",
                       generate=stage.generate)
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
        if seen >= cfg.data.val_fraction_cap:
            break
    model.train(was)
    out = {f"val/{k}": v / counts[k] for k, v in sums.items()}  # each term over the batches that had it
    if iou_n:
        out["val/anat_miou"] = iou_sum / iou_n
    return out


def _mlflow_start(config: dict[str, Any], run_id: str | None):
    import mlflow

    Tracking(config["tracking_uri"], config["experiment"]).activate()
    tags = dict(config.get("tags", {}))
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else config["run_name"], tags=None if run_id else tags)
    if run_id is None:
        from pipelines.lineage import flatten

        mlflow.log_params(flatten({"train": config["train"], "stage": config["stage"]}))
        for ds in config.get("inputs", []):
            from pipelines.lineage import log_dataset

            log_dataset(ds)
    return mlflow, run.info.run_id


def train_loop(config: dict[str, Any]) -> None:
    """``TorchTrainer`` worker entry point; ``config`` holds plain dicts (train config, stage, paths, MLflow)."""
    import ray.data
    import ray.train
    import ray.util

    cfg = from_dict(TrainConfig, config["train"])
    stage = from_dict(StageConfig, config["stage"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_gpu = torch.cuda.is_available() and cfg.use_gpu
    device = torch.device(f"cuda:{ctx.get_local_rank()}" if use_gpu else "cpu")

    torch.manual_seed(cfg.data.seed)
    model = ChEX.from_pretrained(config["init_model"], device=device)
    set_trainable(model, stage.trains)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(stage))
    if cfg.engine == "ddp":
        engine = DdpEngine(model, optimizer, scheduler, cfg.accumulation(), cfg.grad_clip)
    else:
        engine = DeepSpeedEngine(model, optimizer, scheduler, config["deepspeed"], use_gpu)
    dtype = engine.dtype

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "mlflow_run_id": None}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state.update(engine.load(d))
    mlflow, run_id = (None, None)
    if rank == 0:
        mlflow, run_id = _mlflow_start(config, state.get("mlflow_run_id"))
        state["mlflow_run_id"] = run_id
        group = ray.util.get_current_placement_group()
        if group is not None:
            Path(config["workdir"], GROUP_FILE).write_text(group.id.hex())

    ray.data.DataContext.get_current().enable_progress_bars = False
    shard = ray.train.get_dataset_shard("train")
    val = _ValCache(ray.train.get_dataset_shard("val"), cfg.micro_batch) if rank == 0 else None
    perf = _Perf(config.get("t0", time.time()), cfg.batch_size)
    if rank == 0 and state["step"] == 0:  # the untrained baseline, so every curve starts where the stage started
        with perf.pause():
            mlflow.log_metrics(validate(model, val.batches(), cfg, stage, device, dtype), step=0)
    fail_at = config.get("fail_at_step")
    train_mode(engine, model, stage)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    while state["step"] < stage.steps:
        skip = state["batch_in_epoch"]
        # no drop_last: the split gives every rank the same number of rows, hence of batches, and a small table
        # must still train; an epoch without a single batch is an error, not an endless loop
        batches = shard.iter_batches(batch_size=cfg.micro_batch, batch_format="numpy",
                                     local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                                     local_shuffle_seed=(cfg.data.seed * 1_000_003 + state["epoch"] * 1009 + rank) % 2**31)
        i = -1
        for i, nb in enumerate(batches):
            if i < skip:
                continue
            step = state["step"]
            rng = np.random.default_rng([cfg.data.seed, step, rank, i])
            torch.manual_seed(cfg.data.seed * 1_000_003 + step * 101 + rank * 7 + i)
            batch = _batch_to(collate(nb, rng, cfg.data.pathology_classes, cfg.data.anatomy_regions, cfg.data.max_sentences),
                              device, dtype)
            # one coin per step, the same on every rank and micro batch (the reference flips it per step)
            encoding = region_encoding_for(stage, np.random.default_rng([cfg.data.seed, step]))
            losses = engine(batch, region_encoding=encoding, generate=stage.generate)
            loss = weighted_loss(losses, stage.loss_weights)
            for k, v in (("loss", loss), *((f"train/{k}", v) for k, v in losses.items() if k != ANCHOR)):
                sums[k] = sums.get(k, 0.0) + v.item()
                counts[k] = counts.get(k, 0) + 1  # a term is averaged over the micro batches that had it
            boundary = engine.backward_and_step(loss)
            state["batch_in_epoch"] = i + 1
            if not boundary:
                continue
            state["step"] = step = step + 1
            perf.stepped(step)
            if fail_at is not None and step == fail_at and rank == world - 1 and not Path(config["fail_marker"]).exists():
                Path(config["fail_marker"]).touch()
                time.sleep(5)  # past the controller's 2 s poll, so the last reported checkpoint is registered
                os._exit(1)  # a killed worker: Ray restarts the group from the latest checkpoint
            # loss: this step's mean over micro batches and ranks; loss terms: rank 0's micro batches
            metrics = {**{k: v / counts[k] for k, v in sums.items()}, "lr": scheduler.get_last_lr()[0], "step": step}
            metrics["loss"] = _mean_over_ranks(metrics["loss"], device)
            sums, counts = {}, {}
            if rank == 0:
                mlflow.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step=step)
            if step % stage.val_every == 0 or step >= stage.steps:
                metrics.update(perf.metrics(step, device))
                with perf.pause():
                    _report(engine, model, state, metrics, val, cfg, stage, device, dtype, rank, mlflow)
                train_mode(engine, model, stage)
            if step >= stage.steps:
                break
        else:
            if i < 0:
                raise RuntimeError(f"stage {stage.name}: the training split gave rank {rank} no rows "
                                   f"(sources {stage.sources}, {world} workers)")
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    if rank == 0:
        mlflow.end_run()


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
        elapsed = time.time() - self.first - self.paused
        if step > self.first_step and elapsed > 0:
            out["perf/steps_per_s"] = (step - self.first_step) / elapsed
            out["perf/samples_per_s"] = out["perf/steps_per_s"] * self.batch_size
        return out


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


def _report(engine, model, state, metrics, val, cfg, stage, device, dtype, rank, mlflow) -> None:
    """Validate (rank 0), then every rank writes its DeepSpeed shard and reports the same checkpoint."""
    import ray.train

    if rank == 0:
        metrics.update(validate(model, val.batches(), cfg, stage, device, dtype))
        mlflow.log_metrics({k: v for k, v in metrics.items() if k.startswith(("val/", "perf/"))}, step=state["step"])
    with tempfile.TemporaryDirectory() as tmp:
        engine.save(tmp, dict(state))
        if rank == 0:
            model.save_pretrained(Path(tmp) / MODEL_DIR)
            (Path(tmp) / STATE_FILE).write_text(json.dumps({**state, "metrics": metrics}, indent=2))
        torch.distributed.barrier()
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
