"""A sweep's progress on the run's display: trials ended of all, and the best validation value so far (a Tune
callback: it runs in the driver, where the display is)."""
from __future__ import annotations

from typing import Any

from ray import tune

from preprocessing.progress import Progress, report


class SweepProgress(tune.Callback):
    def __init__(self, task: str, trials: int, metric: str, mode: str) -> None:
        self.task, self.trials, self.metric, self.mode = task, trials, metric, mode
        self.ended: set[str] = set()
        self.best: float | None = None

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and value == value:
            better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
            self.best = value if better else self.best
        self._show()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)
        self._show()

    on_trial_error = on_trial_complete

    def _show(self) -> None:
        best = None if self.best is None else round(self.best, 4)
        report(Progress(self.task, len(self.ended), self.trials, "trial", {f"best {self.metric}": best}))
