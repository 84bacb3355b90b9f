"""Two ways to run the data-parallel step, behind one small interface the training loop uses:

- :class:`DeepSpeedEngine`: DeepSpeed (ZeRO stage, precision, accumulation and clipping from its JSON); every rank
  writes its shard into the checkpoint folder.
- :class:`DdpEngine`: plain PyTorch DDP via ``ray.train.torch.prepare_model`` with the same accumulation, clipping and
  schedule; rank 0 writes one ``torch.save`` file (loaded with ``weights_only=True``).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

DS_TAG = "deepspeed"
DDP_FILE = "ddp_state.pt"
LOOP_KEY = "chex_loop"  # the training loop's state inside DeepSpeed's client state


class DeepSpeedEngine:
    def __init__(self, model: torch.nn.Module, optimizer, scheduler, ds_config: dict[str, Any], use_gpu: bool) -> None:
        if not use_gpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed

        if not use_gpu:
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # plain gloo collectives, no 30 s JIT build
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, dist_init_required=False
        )
        self.dtype = torch.bfloat16 if ds_config.get("bf16", {}).get("enabled") else torch.float32

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def backward_and_step(self, loss: torch.Tensor) -> bool:
        """One micro batch; True when it completed an optimizer step."""
        self.engine.backward(loss)
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        return boundary

    def save(self, directory: str, client_state: dict[str, Any]) -> None:
        self.engine.save_checkpoint(directory, tag=DS_TAG, client_state={LOOP_KEY: client_state})

    def load(self, directory: str) -> dict[str, Any]:
        _, client = self.engine.load_checkpoint(directory, tag=DS_TAG)
        return (client or {}).get(LOOP_KEY, {})  # DeepSpeed returns its own bookkeeping keys alongside ours

    def train(self) -> None:
        self.engine.train()


class DdpEngine:
    def __init__(self, model: torch.nn.Module, optimizer, scheduler, accumulation: int, clip: float) -> None:
        import ray.train.torch

        self.module = model
        self.ddp = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
        self.optimizer, self.scheduler = optimizer, scheduler
        self.accumulation, self.clip = accumulation, clip
        self.micro = 0
        self.dtype = torch.float32

    def __call__(self, *args, **kwargs):
        sync = (self.micro + 1) % self.accumulation == 0
        with contextlib.nullcontext() if sync or not hasattr(self.ddp, "no_sync") else self.ddp.no_sync():
            return self.ddp(*args, **kwargs)

    def backward_and_step(self, loss: torch.Tensor) -> bool:
        sync = (self.micro + 1) % self.accumulation == 0
        with contextlib.nullcontext() if sync or not hasattr(self.ddp, "no_sync") else self.ddp.no_sync():
            (loss / self.accumulation).backward()
        self.micro += 1
        if not sync:
            return False
        params = [p for p in self.module.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, self.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def save(self, directory: str, client_state: dict[str, Any]) -> None:
        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return
        torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "client": client_state}, Path(directory) / DDP_FILE)

    def load(self, directory: str) -> dict[str, Any]:
        state = torch.load(Path(directory) / DDP_FILE, map_location="cpu", weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return state["client"]

    def train(self) -> None:
        self.ddp.train()
