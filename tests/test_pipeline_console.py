"""What a user sees of ``chex pipeline run`` when its output is not a terminal (CI, a log file), on a tiny pipeline run
as a real command with its stdout and stderr captured: progress lines (training ones with a loss), no Ray / MLflow /
DeepSpeed internals, and those internals in ``<workdir>/logs/<stage>.log``; then ``chex pipeline status`` on what
the run left: all cached, one training key changed, a new raw file, ``--json``."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_pipeline import write_configs

REPO = Path(__file__).resolve().parents[1]
# what Ray, MLflow, DeepSpeed and transformers print of themselves (never on the console without -v)
INTERNALS = re.compile(r"streaming_executor|Full logs are in|Progress bars disabled|\(raylet\)|pid=\d+\)|"
                       r"Started a local Ray instance|Creating initial MLflow|mlflow\.store|INFO |DEBUG |"
                       r"\bray\.(data|train|tune|_private)\b|\[transformers\]|Loading weights|it/s\]|deepspeed|"
                       r"Trial status|SplitCoordinator|RayTrainWorker|dashboard", re.I)
STAGES = ["synth", "ingest", "train:detection", "evaluate", "register"]


def chex(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, timeout=900, cwd=REPO, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One tiny pipeline (no backbone pre-training, one training stage, one evaluation task), heartbeat every 1 s."""
    tmp = tmp_path_factory.mktemp("console")
    config = write_configs(tmp)
    train = yaml.safe_load((tmp / "train.yaml").read_text())
    for kind in ("clip", "lm"):
        train["pretrain"][kind]["enabled"] = False
    (tmp / "train.yaml").write_text(yaml.safe_dump(train))
    (tmp / "evaluate.yaml").write_text(yaml.safe_dump({"tasks": ["od_vindr"], "bootstrap": {"boxes": 5, "text": 2},
                                                        "examples": 1, "baselines": []}))
    return config, chex("pipeline", "run", "--config", str(config), env={"CHEX_PROGRESS_INTERVAL": "1"})


def test_console_shows_progress_and_no_internals_which_land_in_the_stage_logs(tiny_run):
    config, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    out, err = proc.stdout, proc.stderr
    leaked = [ln for ln in (out + err).splitlines() if INTERNALS.search(ln)]
    assert not leaked, leaked[:5]
    finished = {m[0]: m[1] for m in re.findall(r"^\[[^\]]+\] (\S+): (done|skipped \(unchanged\)|FAILED)", out, re.M)}
    assert list(finished) == STAGES and set(finished.values()) == {"done"}
    steps = yaml.safe_load((config.parent / "train.yaml").read_text())["stages"][0]["steps"]
    loss = re.findall(rf"^\[[^\]]+\] train:detection: .*step (\d+)/{steps} · loss (-?[0-9.]+(?:e[-+]?\d+)?)", out, re.M)
    assert loss and all(float(v) == float(v) and 1 <= int(s) <= steps for s, v in loss)  # a number, not "nan"
    assert len(out.splitlines()) <= 40  # the whole console, summary included
    assert "Evaluation on the test split" in out and "Registered chex-test v1" in out

    logs = config.parent / "work" / "logs"
    assert {p.name for p in logs.iterdir()} == {"pipeline.log", "synth.log", "ingest.log", "train-detection.log",
                                                 "evaluate.log", "register.log"}
    assert "Starting execution of Dataset" in (logs / "ingest.log").read_text()  # Ray Data's own log of the job
    train_log = (logs / "train-detection.log").read_text()
    assert re.search(r"\((RayTrainWorker|SplitCoordinator|TrainController)[^)]*pid=\d+", train_log)  # workers' output
    assert "Started a local Ray instance" in (logs / "pipeline.log").read_text()
    state = json.loads((config.parent / "work" / "pipeline_state.json").read_text())
    assert state["train:detection"]["log"] == "logs/train-detection.log"


def status(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return chex("pipeline", "status", "--config", str(config), *extra)


def stale_stages(config: Path) -> dict[str, str]:
    proc = status(config, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    return {s["name"]: " ".join(s["reasons"]) for s in doc["stages"] if s["state"] != "cached"}


def test_status_after_the_run_a_changed_key_and_a_new_raw_file(tiny_run):
    config, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = status(config)
    assert text.returncode == 0 and not INTERNALS.search(text.stdout + text.stderr)
    assert stale_stages(config) == {}  # everything the run made is cached

    train_file = config.parent / "train.yaml"
    original = train_file.read_text()
    train = yaml.safe_load(original)
    train["stages"][0]["lr"] = 0.123
    train_file.write_text(yaml.safe_dump(train))
    try:
        stale = stale_stages(config)
        assert list(stale) == ["train:detection", "evaluate", "register"]
        assert "lr" in stale["train:detection"] and "0.123" in stale["train:detection"]
    finally:
        train_file.write_text(original)
    assert stale_stages(config) == {}

    vindr = config.parent / "work" / "raw" / "vindr-cxr" / "1.0.0" / "test"
    dicom = next(vindr.glob("*.dicom"))  # a raw file the VinDr reader consumes (not in its label tables: a reject)
    extra = vindr / "0000new.dicom"
    extra.write_bytes(dicom.read_bytes())
    try:
        stale = stale_stages(config)
        assert list(stale) == STAGES[1:]
        assert "0000new.dicom" in stale["ingest"] or "new" in stale["ingest"]
    finally:
        extra.unlink()
    assert stale_stages(config) == {}
