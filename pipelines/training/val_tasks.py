"""Evaluation tasks scored on the val split during training: the metric a sweep ranks trials by, or a stage picks
its checkpoint by, is then the evaluation's own (e.g. ``val/od_vindr/mAP``), not a loss standing in for it."""
from __future__ import annotations

from pathlib import Path

import torch


def val_task_metrics(model, tables: Path, tasks: list[str], max_images: int, batch_size: int,
                     dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """``{"val/<task>/<metric>": value}`` of the evaluation code on the val split: default post-processing (no
    search, which would select on this very split) and no bootstrap. Leaves the model in eval mode."""
    from evaluation.config import Bootstrap, EvalConfig
    from evaluation.evaluate import Evaluation
    from evaluation.runner import ModelRunner
    from pipelines.tracking import metric_key

    cfg = EvalConfig(tasks=list(tasks), split="val", search=False, max_images=max_images, batch_size=batch_size,
                     bootstrap=Bootstrap(boxes=0, text=0))
    runner = ModelRunner(model, batch_size, show_progress=False)
    with torch.autocast(model.device.type, dtype=dtype, enabled=dtype != torch.float32):
        results = Evaluation(tables, cfg, runner=runner).run()
    return {f"val/{metric_key(task, name)}": m["value"] for task, r in results.items() for name, m in r.metrics.items()
            if m["value"] == m["value"]}
