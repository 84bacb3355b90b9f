"""Wall time per stage of the whole pipeline: a cold run of ``configs/pipeline/demo.yaml`` (or ``--config``) into a
fresh workdir, then a second run that should skip every stage. Prints a table. Usage:
``python bench/pipeline.py [--config configs/pipeline/demo.yaml] [--workdir /tmp/chex-bench-pipeline]``."""
from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe_cpu  # noqa: E402


def timed_run(pipeline) -> tuple[list, dict[str, float], float]:
    """Stage records, seconds per stage (from the log line that starts each stage to the next), total seconds."""
    marks: list[tuple[str, float]] = []

    class Marker(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if msg.startswith("stage "):
                marks.append((msg.split()[1].rstrip(":"), time.perf_counter()))

    handler = Marker()
    logging.getLogger("pipelines.workflow.runner").addHandler(handler)
    start = time.perf_counter()
    try:
        records = pipeline.run()
    finally:
        logging.getLogger("pipelines.workflow.runner").removeHandler(handler)
    end = time.perf_counter()
    times = {}
    for i, (name, t) in enumerate(marks):
        times[name] = (marks[i + 1][1] if i + 1 < len(marks) else end) - t
    return records, times, end - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/pipeline/demo.yaml")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/chex-bench-pipeline"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pipelines.workflow.runner").setLevel(logging.INFO)
    from pipelines.workflow.config import load_pipeline_config
    from pipelines.workflow.runner import Pipeline

    os.chdir(ROOT)
    cfg = load_pipeline_config(args.config)
    shutil.rmtree(args.workdir, ignore_errors=True)
    cfg.workdir = str(args.workdir)
    cold_records, cold, cold_total = timed_run(Pipeline(cfg))
    warm_records, warm, warm_total = timed_run(Pipeline(cfg))
    print(f"\n{args.config.name}, {describe_cpu()}, workdir {args.workdir}")
    print(f"{'stage':<26} | {'cold run (s)':>12} | {'second run (s)':>14} | second run")
    print("-" * 72)
    for rec, wrec in zip(cold_records, warm_records):
        print(f"{rec.name:<26} | {cold.get(rec.name, 0.0):>12.1f} | {warm.get(wrec.name, 0.0):>14.2f} | "
              f"{'skipped' if wrec.skipped else 'ran'}")
    print(f"{'total':<26} | {cold_total:>12.1f} | {warm_total:>14.2f} |")
    print(f"peak RSS of the driver {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
