"""METEOR 1.5 through pycocoevalcap's Java jar, with the reference's pre-tokenization ("." -> " .", whitespace
collapsed). Each (hypothesis, reference) pair is scored by the jar once; a corpus score of any resample is then one
``EVAL`` line over the cached statistics, so bootstrapping does not re-align the sentences."""
from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Sequence

import numpy as np


class MissingJavaError(RuntimeError):
    pass


def pretokenize(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace(".", " .")).strip()


def _clean(text: str) -> str:
    return pretokenize(text).replace("|||", " ").replace("\n", " ")


def require_java() -> None:
    if shutil.which("java") is None:
        raise MissingJavaError("METEOR needs Java on PATH (pycocoevalcap runs meteor-1.5.jar); install a JRE, "
                               "e.g. `apt-get install openjdk-17-jre-headless`")


class MeteorScorer:
    """One long-lived jar process (it takes ~10 s to load its paraphrase tables)."""

    _shared: "MeteorScorer | None" = None
    _guard = threading.Lock()

    def __init__(self) -> None:
        require_java()
        from pycocoevalcap.meteor.meteor import Meteor

        self._meteor = Meteor()

    @classmethod
    def shared(cls) -> "MeteorScorer":
        with cls._guard:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def stats(self, hypotheses: Sequence[str], references: Sequence[str]) -> list[str]:
        """The jar's sufficient statistics of each pair."""
        if len(hypotheses) != len(references):
            raise ValueError("hypotheses and references differ in length")
        m = self._meteor
        with m.lock:
            return [m._stat(_clean(h), [_clean(r)]) for h, r in zip(hypotheses, references)]

    def corpus(self, stats: Sequence[str], weights: np.ndarray | None = None) -> tuple[float, list[float]]:
        """Corpus METEOR over pairs repeated ``weights`` times (default once), and the per-pair scores."""
        reps = np.ones(len(stats), dtype=int) if weights is None else np.asarray(weights, dtype=int)
        lines = [s for s, k in zip(stats, reps) for _ in range(int(k))]
        if not lines:
            return float("nan"), []
        p = self._meteor.meteor_p
        with self._meteor.lock:
            p.stdin.write(("EVAL ||| " + " ||| ".join(lines) + "\n").encode())
            p.stdin.flush()
            per_pair = [float(p.stdout.readline().strip()) for _ in lines]
            score = float(p.stdout.readline().strip())
        return score, per_pair

    def score(self, hypotheses: Sequence[str], references: Sequence[str]) -> float:
        return self.corpus(self.stats(hypotheses, references))[0]
