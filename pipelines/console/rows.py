"""What the display knows of one row (a stage, or a task inside it): counts, fields, rate, ETA, and its one-line text.
Rate and ETA come from the row's own history, so plain lines and live bars say the same."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from preprocessing.progress import Progress

RATE_WINDOW_S = 30.0  # the rate is measured over about this much recent history (training speeds up after warm-up)


def clock(seconds: float) -> str:
    """``1:02:03`` / ``2:03`` / ``4.2 s``: durations as people read them."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def number(x: float) -> str:
    if isinstance(x, int) or float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:.4g}"


@dataclass
class Row:
    name: str
    stage: str = ""  # the stage a task row belongs to ("" for a stage row)
    state: str = "running"  # running | done | skipped | failed
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    last: Progress | None = None
    history: list[tuple[float, float]] = field(default_factory=list)  # (time, done), trimmed to the rate window
    note: str = ""

    def update(self, event: Progress, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.last is not None and event.done < self.last.done:  # a new phase restarts the count
            self.history = []
        self.last = event
        if not self.history or self.history[-1][1] != event.done:  # changes only: a count that moves in steps
            self.history.append((now, event.done))                   # (trials) is timed from step to step
        while len(self.history) > 2 and now - self.history[1][0] > RATE_WINDOW_S:
            self.history.pop(0)
        if event.final:
            self.finish("done", now)

    def finish(self, state: str, now: float | None = None) -> None:
        self.state, self.ended = state, time.monotonic() if now is None else now

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def slope(self) -> float | None:
        """Units per second over the recent history (None until the count has moved)."""
        if len(self.history) < 2:
            return None
        (t0, d0), (t1, d1) = self.history[0], self.history[-1]
        return (d1 - d0) / (t1 - t0) if t1 - t0 > 0.5 and d1 > d0 else None

    def rate(self) -> float | None:
        """What the row shows per second: the emitter's own figure (e.g. samples/s), else the slope."""
        return self.last.rate if self.last is not None and self.last.rate is not None else self.slope()

    def eta(self) -> float | None:
        e, slope = self.last, self.slope()
        if e is None or not e.total or self.state != "running" or e.done >= e.total or not slope:
            return None
        return (e.total - e.done) / slope

    def info(self) -> str:
        """``step 40/400 · loss 2.31 · 25.1 samples/s · ETA 1:20`` (what is known of it)."""
        e, parts = self.last, []
        if e is not None and (e.total or e.done or e.unit):  # a bare "started" event has no count to show
            count = f"{number(e.done)}/{number(e.total)}" if e.total else number(e.done)
            parts.append(f"{e.unit} {count}".strip() if e.unit in ("step", "trial") else f"{count} {e.unit}".strip())
        if e is not None:
            parts += [(str(v) if k == "phase" else f"{k} {number(v) if isinstance(v, (int, float)) else v}")
                      for k, v in e.fields.items() if v is not None]
            rate = self.rate()
            measured_ok = e.unit not in ("step", "trial")  # steps: the emitter's samples/s; trials: too coarse
            if rate is not None and (e.rate is not None or (measured_ok and self.state == "running")):
                parts.append(f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}")
                parts[-1] += f" {e.rate_unit or (e.unit or 'items')}/s"
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {clock(eta)}")
        if self.note:
            parts.append(self.note)
        return " · ".join(parts)

    def fraction(self) -> float | None:
        e = self.last
        return min(1.0, e.done / e.total) if e is not None and e.total else None

