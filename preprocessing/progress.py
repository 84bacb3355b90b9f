"""Progress events of long work (synthesis, ingest, training, evaluation), as records on the ``chex.progress`` logger.

Emitters do not know how progress is shown: the CLI's display (:mod:`pipelines.console.display`) renders the
records, as live bars on a terminal or as plain lines otherwise. The logger does not propagate, so progress never
reaches the console or a log file as text; without a display, an event costs one ``isEnabledFor`` check. It lives in
the lowest package because every layer reports progress (the synthetic generator is in ``preprocessing``).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

LOGGER = logging.getLogger("chex.progress")
LOGGER.propagate = False
LOGGER.setLevel(logging.INFO)
T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One update of a task (a display row). ``done``/``total`` in ``unit``; ``fields`` are shown after the count
    (e.g. ``loss``, ``rejects``, ``phase``); ``rate`` overrides the display's own estimate (per second, in
    ``rate_unit``); ``final`` ends the row."""

    task: str
    done: float
    total: float | None = None
    unit: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    rate: float | None = None
    rate_unit: str = ""
    final: bool = False


def shown() -> bool:
    """Whether a display listens: emitters with a cost of their own (a queue, a poller) run only then."""
    return any(getattr(h, "shows_progress", False) for h in LOGGER.handlers)


def report(event: Progress) -> None:
    if LOGGER.handlers:
        LOGGER.info("%s %s/%s", event.task, event.done, event.total, extra={"chex_progress": event})


def track(items: Iterable[T], task: str, total: int | None = None, unit: str = "", **fields: Any) -> Iterator[T]:
    """Yield ``items``, reporting each one done (and the row ended when they run out)."""
    if total is None:
        total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    done = 0
    report(Progress(task, 0, total, unit, fields))
    for item in items:
        yield item
        done += 1
        report(Progress(task, done, total, unit, fields))
    report(Progress(task, done, total, unit, fields, final=True))
