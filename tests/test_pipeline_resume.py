"""``chex pipeline run`` killed during a training stage resumes that stage from its last checkpoint on the rerun, not
from step 0: one real pipeline in a subprocess, stopped with SIGTERM (a ``kill``, a preempted pod) once the stage has
a registered checkpoint, rerun and stopped with SIGKILL (a crash) at a later one, then rerun to the end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_faults_cluster import end_session
from test_pipeline import stages_of

REPO = Path(__file__).resolve().parents[1]
STEPS = 48  # the training stage (~0.2 s a step here): room to stop it twice, at checkpoints, well before its end



def test_a_rerun_continues_only_an_unfinished_attempt_with_the_same_key():
    from pipelines.workflow.state import attempt_of

    for status in ("running", "failed"):  # killed during the stage, or the stage raised
        assert attempt_of({"key": "k", "status": status, "attempt": "a1"}, "k", forced=False) == "a1"
    fresh = [attempt_of({"key": "k", "status": "succeeded", "attempt": "a1"}, "k", forced=False),  # done before
             attempt_of({"key": "old", "status": "running", "attempt": "a1"}, "k", forced=False),  # inputs changed
             attempt_of({"key": "k", "status": "running", "attempt": "a1"}, "k", forced=True),  # --from
             attempt_of({}, "k", forced=False)]  # never ran
    assert "a1" not in fresh and len(set(fresh)) == len(fresh)


def write_configs(tmp: Path) -> Path:
    """The tiny pipeline: synthetic data, one detection stage (no pre-training, no calibration), one evaluation task."""
    train = yaml.safe_load((REPO / "configs/train/demo.yaml").read_text())
    train.update(workers=1, batch_size=4, micro_batch=4, engine="ddp", deepspeed="", calibration={"enabled": False})
    train["stages"] = [{**train["stages"][0], "steps": STEPS, "val_every": 4, "warmup_steps": 1}]
    for kind in ("clip", "lm"):
        train["pretrain"][kind]["enabled"] = False
    (tmp / "train.yaml").write_text(yaml.safe_dump(train))
    (tmp / "evaluate.yaml").write_text(yaml.safe_dump({"tasks": ["od_vindr"], "bootstrap": {"boxes": 5, "text": 2},
                                                        "examples": 1, "max_new_tokens": 4}))
    pipeline = {"workdir": str(tmp / "work"), "synth": {"studies": 8, "seed": 3, "image_scale": 0.1},
                "ingest": str(REPO / "configs/ingest.yaml"), "image_size": 64, "train": str(tmp / "train.yaml"),
                "evaluate": str(tmp / "evaluate.yaml"), "register": {"name": "chex-resume", "metric": "od_vindr/mAP"}}
    (tmp / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    return tmp / "pipeline.yaml"


def registered_step(storage: Path) -> int:
    """The step of the latest checkpoint Ray Train registered for the stage (0: none yet, or its controller is
    rewriting the snapshot right now)."""
    snapshots = sorted(storage.glob("detection_*/checkpoint_manager_snapshot.json"), key=lambda p: p.stat().st_mtime)
    try:
        latest = json.loads(snapshots[-1].read_text()).get("latest_checkpoint_result") if snapshots else None
    except ValueError:
        return 0
    return latest["metrics"]["step"] if latest else 0


def start(config: Path, log: Path) -> subprocess.Popen:
    """``chex pipeline run`` in a session of its own, on a private Ray instance (not a cluster this machine runs)."""
    env = {**os.environ, "RAY_ADDRESS": "local"}
    code = "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "pipeline", "run", "--config", str(config)],
                            cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop_after_checkpoint(proc: subprocess.Popen, storage: Path, after: int, sig: signal.Signals, log: Path) -> int:
    """Send ``sig`` to the pipeline's driver once a checkpoint past step ``after`` is registered; once it is gone,
    end what is left of its session. Returns the latest registered step."""
    deadline = time.time() + 240
    while registered_step(storage) <= after:
        assert proc.poll() is None, f"the pipeline ended before it was stopped:\n{log.read_text()[-4000:]}"
        assert time.time() < deadline, f"no checkpoint past step {after}:\n{log.read_text()[-4000:]}"
        time.sleep(0.05)
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    finally:
        end_session(proc)  # the driver's Ray processes too: the checkpoint registered last is then final
    return registered_step(storage)


@pytest.mark.slow
def test_a_killed_pipeline_resumes_its_training_stage_from_the_last_checkpoint(tmp_path):
    import mlflow

    config = write_configs(tmp_path)
    work = tmp_path / "work"
    storage = work / "train" / "ray"
    state_file = work / "pipeline_state.json"

    log = tmp_path / "run1.log"
    first = stop_after_checkpoint(start(config, log), storage, 0, signal.SIGTERM, log)
    assert 4 <= first < STEPS, first
    stopped = json.loads(state_file.read_text())["train:detection"]
    assert stopped["status"] == "running"  # interrupted: neither failed nor done

    log = tmp_path / "run2.log"
    second = stop_after_checkpoint(start(config, log), storage, first, signal.SIGKILL, log)
    assert first < second < STEPS, (first, second)
    assert json.loads(state_file.read_text())["train:detection"]["attempt"] == stopped["attempt"]

    log = tmp_path / "run3.log"
    proc = start(config, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
    out = log.read_text()
    said = stages_of(out)
    assert said["synth"] == said["ingest"] == "skipped (unchanged)"
    assert said["train:detection"] == said["register"] == "ran"

    state = json.loads(state_file.read_text())
    assert {s["status"] for s in state.values()} == {"succeeded"}
    assert state["train:detection"]["attempt"] == stopped["attempt"]  # one Ray Train run across the three
    assert len(list(storage.glob("detection_*"))) == 1
    assert Path(state["evaluate"]["outputs"]["results_file"]).is_file()

    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("chex-pipeline")
    (run,) = client.search_runs([exp.experiment_id], "tags.mlflow.runName = 'detection'")
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
               for key in ("resumed_from_step", "val/loss", "loss")}
    assert history["resumed_from_step"] == [(first, first), (second, second)]  # each rerun began at the last checkpoint
    assert [s for s, _ in history["val/loss"]].count(0) == 1  # one untrained baseline: no rerun started over
    assert {s for s, _ in history["loss"]} == set(range(1, STEPS + 1))
    assert run.info.status == "FINISHED"
    final = client.search_runs([exp.experiment_id], "tags.mlflow.runName = 'pipeline'",
                               order_by=["attributes.start_time DESC"])[0]
    assert run.data.tags["mlflow.parentRunId"] == final.info.run_id  # the run that finished it lists it
    assert len(client.search_model_versions("name = 'chex-resume'")) == 1
