"""Training throughput of the tiny preset on Ray Train: 1 and 2 workers, plain DDP vs DeepSpeed ZeRO-2.

Runs the detection stage of ``configs/train/demo.yaml`` for ``--steps`` optimizer steps on the ingested demo tables and
prints samples/s (steady state, after the first step), time from ``fit()`` to the first optimizer step, and the
largest per-worker peak RSS. Usage: ``python bench/train.py [--tables demo_run/ingested] [--steps 30]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe_cpu  # noqa: E402


def run(tables: Path, workers: int, engine: str, steps: int, workdir: Path) -> dict[str, float]:
    from pipelines.training.stages import run_stage, stage_input
    from pipelines.training.config import load_train_config

    cfg = load_train_config(ROOT / "configs/train/demo.yaml")
    cfg.workdir, cfg.workers, cfg.engine = str(workdir), workers, engine
    cfg.deepspeed = str(ROOT / cfg.deepspeed)
    cfg.micro_batch, cfg.batch_size = 4, 4 * workers
    cfg.data.tables = str(tables)
    stage = cfg.stage_configs()[0]
    stage.steps, stage.val_every, stage.warmup_steps = steps, steps, 1
    res = run_stage(cfg, stage, stage_input(cfg, stage.name))
    return {k.removeprefix("perf/"): v for k, v in res.metrics.items() if k.startswith("perf/")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=Path, default=ROOT / "demo_run/ingested")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rows = []
    for workers in (1, 2):
        for engine in ("ddp", "deepspeed"):
            with tempfile.TemporaryDirectory() as tmp:
                rows.append((workers, engine, run(args.tables, workers, engine, args.steps, Path(tmp))))
    print(f"\ntiny preset, detection stage, micro batch 4 per worker, {args.steps} steps, {describe_cpu()}")
    print(f"{'workers':>7} | {'engine':<16} | {'samples/s':>9} | {'steps/s':>7} | {'first step (s)':>14} | {'peak RSS / worker (MB)':>22}")
    print("-" * 88)
    for workers, engine, m in rows:
        name = "DDP" if engine == "ddp" else "DeepSpeed ZeRO-2"
        print(f"{workers:>7} | {name:<16} | {m['samples_per_s']:>9.1f} | {m['steps_per_s']:>7.2f} | "
              f"{m['time_to_first_step_s']:>14.1f} | {m['peak_rss_mb']:>22.0f}")


if __name__ == "__main__":
    main()
