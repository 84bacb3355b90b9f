"""`chex train` (the workflow's training stages) and `chex tune` (a Ray Tune sweep of one stage)."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.cli.args import add_ray_address, existing, positive
from pipelines.redact import redact_uri


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="training on Ray Train + DeepSpeed: backbone pre-training, then the workflow's stages")
    p.add_argument("--config", type=Path, default=Path("configs/train/demo.yaml"), help="training workflow YAML")
    p.add_argument("--stage", action="append", default=[],
                   help="run only this stage (repeatable; default all): clip_pretrain, lm_pretrain or a ChEX stage")
    add_ray_address(p)
    p.add_argument("--workers", type=positive, default=None, help="override the number of training workers")
    p.add_argument("--gpus", action="store_true", help="one GPU per worker (NCCL; use a bf16 DeepSpeed config)")
    p.add_argument("--workdir", type=Path, default=None, help="override the workflow's output folder")
    p.set_defaults(run=run_train)

    tune = sub.add_parser("tune", help="Ray Tune sweep of one stage (ASHA, MLflow child run per trial)")
    tune.add_argument("--config", type=Path, default=Path("configs/tune/demo.yaml"), help="sweep YAML")
    add_ray_address(tune)
    tune.add_argument("--samples", type=positive, default=None, help="override the number of trials")
    tune.set_defaults(run=run_tune)


def run_train(args: argparse.Namespace) -> None:
    config = existing(args.config, "--config")  # before the heavy imports: a missing file answers at once
    from pipelines.ray_runtime import init_ray
    from pipelines.training.config import load_train_config
    from pipelines.training.stages import run_workflow

    cfg = load_train_config(config)
    if args.workers:
        cfg.workers = args.workers
    if args.gpus:
        cfg.use_gpu = True
    if args.workdir:
        cfg.workdir = str(args.workdir)
    cfg.accumulation()
    init_ray(args.address)
    for res in run_workflow(cfg, only=args.stage or None):
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(res.metrics.items()) if k.startswith("val/"))
        print(f"stage {res.name}: model {res.model_dir} ({shown})")
    print(f"MLflow: {redact_uri(cfg.tracking_uri())} (experiment {cfg.mlflow.experiment})")


def run_tune(args: argparse.Namespace) -> None:
    config = existing(args.config, "--config")
    from pipelines.training.sweep import load_sweep_config, run_sweep

    sweep = load_sweep_config(config)
    if args.samples:
        sweep.num_samples = args.samples
    res = run_sweep(sweep, args.address)
    print(f"{res.trials} trials; best {sweep.metric} = {res.best_metrics[sweep.metric]:.4g} with {res.best_params}")
    print(f"best config: {res.best_config}")
