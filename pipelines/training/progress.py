"""Training progress from the Ray Train workers to the driver's display.

The rank-0 worker puts ``(step, loss, samples/s)`` on a Ray queue at most once a second (and at the last step); a
driver thread reports each as a :class:`~preprocessing.progress.Progress` of the stage's task. The queue exists only
while someone shows progress (a display listens on ``chex.progress``), and a full or lost queue never stops
training: progress is for people, the stage's MLflow run holds the figures.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from preprocessing.progress import Progress, report, shown

SEND_EVERY_S = 1.0


class Sender:
    """The worker's side: throttled, never blocking, never raising."""

    def __init__(self, queue: Any, total: int) -> None:
        self.queue, self.total, self.last = queue, total, 0.0

    def __call__(self, step: int, loss: float, samples_per_s: float | None) -> None:
        now = time.monotonic()
        if self.queue is None or (now - self.last < SEND_EVERY_S and step < self.total):
            return
        self.last = now
        with contextlib.suppress(Exception):
            self.queue.put_nowait((step, loss, samples_per_s))


@contextlib.contextmanager
def relayed(task: str, total: int) -> Iterator[Any]:
    """A queue for the workers (None when no display listens) whose items the driver reports as ``task``."""
    if not shown():
        yield None
        return
    from ray.util.queue import Queue

    queue = Queue(maxsize=256, actor_options={"num_cpus": 0})
    stop = threading.Event()
    thread = threading.Thread(target=_drain, args=(queue, task, total, stop), name="chex-train-progress", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        stop.set()
        thread.join(timeout=5)
        with contextlib.suppress(Exception):
            queue.shutdown()


def _drain(queue: Any, task: str, total: int, stop: threading.Event) -> None:
    from ray.util.queue import Empty

    while not stop.is_set():
        try:
            step, loss, rate = queue.get(timeout=0.5)
        except Empty:
            continue
        except Exception:  # the queue's actor is gone (the cluster is shutting down): no more progress to show
            return
        report(Progress(task, step, total, "step", {"loss": round(loss, 4)}, rate=rate, rate_unit="samples"))
