"""The run's one progress display: a row per stage (state, elapsed) with the stage's tasks under it (training steps
with loss and ETA, ingest rows with rejects, one row per evaluation task).

It is a logging handler on ``chex.progress`` (:mod:`preprocessing.progress`): emitters anywhere in the process
report there. On a terminal it is a ``rich`` live display redrawn in place; otherwise (CI, a log file) it prints
plain lines: one when a stage ends, and a heartbeat every ``CHEX_PROGRESS_INTERVAL`` seconds (default 30; spaced out
for a stage that runs long) for the running stage, never bar fragments.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import TextIO

from pipelines.console.rows import Row, clock
from preprocessing.progress import LOGGER, Progress

DEFAULT_INTERVAL_S = 30.0
LONGEST_HEARTBEAT_S = 600.0
WORDS = {"done": "done", "skipped": "skipped (unchanged)", "failed": "FAILED", "running": "running"}


class Display(logging.Handler):
    shows_progress = True  # preprocessing.progress.shown()

    def __init__(self, stream: TextIO, live: bool | None = None, interval: float | None = None) -> None:
        super().__init__(logging.INFO)
        self.stream = stream
        self.t0 = time.monotonic()
        self.stages: dict[str, Row] = {}
        self.tasks: dict[str, Row] = {}
        self.current = ""
        self.lock = threading.RLock()
        live = stream.isatty() if live is None else live
        interval = float(os.environ.get("CHEX_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)) if interval is None else interval
        self.view: _View = _Live(stream) if live else _Plain(stream, self, interval)

    # -- the stages (the runner calls these) --
    def stage_started(self, name: str) -> None:
        with self.lock:
            self.current = name
            self.stages[name] = Row(name)
            self.view.stage(self.stages[name], [])

    def stage_finished(self, name: str, state: str, note: str = "") -> None:
        with self.lock:
            row = self.stages.setdefault(name, Row(name))
            row.finish(state)
            tasks = [t for t in self.tasks.values() if t.stage == name]
            for t in tasks:
                if t.state == "running":
                    t.finish(state)
            row.note = note or (self._summary(tasks) if state == "done" else "")
            self.view.stage(row, tasks)
            for t in tasks:
                del self.tasks[t.name]
            self.current = ""

    @staticmethod
    def _summary(tasks: list[Row]) -> str:
        """What a finished stage's line carries: its main task's last figures (training: the last loss)."""
        if len(tasks) > 1:
            return f"{len(tasks)} tasks"
        return tasks[0].info() if tasks else ""

    # -- progress events (emitters anywhere) --
    def emit(self, record: logging.LogRecord) -> None:
        event: Progress | None = getattr(record, "chex_progress", None)
        if event is None:
            return
        with self.lock:
            row = self.tasks.get(event.task)
            if row is None or (row.state != "running" and not event.final):
                row = self.tasks[event.task] = Row(event.task, stage=self.current)
            row.update(event)
            self.view.task(row)

    def running(self) -> tuple[Row | None, Row | None]:
        """The running stage and its most recently updated running task."""
        with self.lock:
            stage = self.stages.get(self.current)
            active = [t for t in self.tasks.values() if t.stage == self.current and t.state == "running" and t.history]
            return stage, max(active, key=lambda t: t.history[-1][0]) if active else None

    def elapsed(self) -> str:
        return clock(time.monotonic() - self.t0)

    def close(self) -> None:
        """Stop drawing (idempotent): what prints next goes below the display."""
        LOGGER.removeHandler(self)
        self.view.close()
        super().close()

    def __enter__(self) -> Display:
        LOGGER.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _View:
    def stage(self, row: Row, tasks: list[Row]) -> None: ...
    def task(self, row: Row) -> None: ...
    def close(self) -> None: ...


class _Plain(_View):
    """Plain lines: a stage's end at once, the running stage's state every ``interval`` seconds."""

    def __init__(self, stream: TextIO, display: Display, interval: float) -> None:
        self.stream, self.display, self.interval = stream, display, interval
        self.stop = threading.Event()
        self.ticker = threading.Thread(target=self._tick, name="chex-progress", daemon=True)
        self.ticker.start()

    def _line(self, text: str) -> None:
        self.stream.write(f"[{self.display.elapsed():>7}] {text}\n")
        self.stream.flush()

    def stage(self, row: Row, tasks: list[Row]) -> None:
        if row.state != "running":
            took = "" if row.state == "skipped" else f" in {clock(row.elapsed)}"
            self._line(f"{row.name}: {WORDS[row.state]}{took}" + (f" · {row.note}" if row.note else ""))

    def due(self, elapsed: float, since: float) -> bool:
        """A heartbeat every ``interval`` seconds, spacing out as a stage runs long (a fifth of its age, at most
        every 10 minutes): a stage of hours says how it goes a few times an hour, not 120 times."""
        return since >= max(self.interval, min(elapsed / 5, LONGEST_HEARTBEAT_S))

    def _tick(self) -> None:
        last = time.monotonic()
        while not self.stop.wait(min(self.interval, 1.0)):
            stage, task = self.display.running()
            if stage is not None and stage.state == "running" and self.due(stage.elapsed, time.monotonic() - last):
                last = time.monotonic()
                what = "" if task is None else f" · {'' if stage.name.endswith(task.name) else task.name + ': '}{task.info()}"
                self._line(f"{stage.name}: running {clock(stage.elapsed)}{what}")

    def close(self) -> None:
        self.stop.set()


class _Live(_View):
    """``rich`` bars redrawn in place: stage rows stay, a stage's task rows go when it ends."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress as Bars, ProgressColumn, TextColumn
        from rich.text import Text

        class StageAwareBar(BarColumn):
            def render(self, task):
                return Text("") if task.fields["kind"] == "stage" else super().render(task)

        class Elapsed(ProgressColumn):
            def render(self, task):
                return Text(clock(task.fields["row"].elapsed), style="dim")

        self.bars = Bars(TextColumn("{task.description}"), StageAwareBar(bar_width=28), Elapsed(),
                         TextColumn("{task.fields[info]}"), console=Console(file=stream), refresh_per_second=4)
        self.ids: dict[tuple[str, str], int] = {}
        self.started = False  # drawn from the first row on: a command without progress leaves the terminal alone

    def _put(self, key: tuple[str, str], description: str, row: Row, info: str) -> None:
        fraction = row.fraction()
        total, done = (None, 0) if fraction is None else (1000, round(fraction * 1000))
        if not self.started:
            self.bars.start()
            self.started = True
        if key not in self.ids:
            self.ids[key] = self.bars.add_task(description, total=total, completed=done, info=info, row=row,
                                                kind=key[0])
        else:
            self.bars.update(self.ids[key], description=description, total=total, completed=done, info=info)

    def stage(self, row: Row, tasks: list[Row]) -> None:
        mark = {"running": "▶", "done": "✓", "skipped": "·", "failed": "✗"}[row.state]
        info = " · ".join(p for p in ("" if row.state == "done" else WORDS[row.state], row.note) if p)
        self._put(("stage", row.name), f"{mark} {row.name}", row, info)
        for t in tasks:
            if ("task", t.name) in self.ids:
                self.bars.remove_task(self.ids.pop(("task", t.name)))

    def task(self, row: Row) -> None:
        self._put(("task", row.name), f"    {row.name}", row, row.info())

    def close(self) -> None:
        if self.started:
            self.bars.stop()
            self.started = False
