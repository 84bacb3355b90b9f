"""Node failures on a real multi-node Ray cluster on loopback (``ray.cluster_utils.Cluster``): an ingest whose worker
node dies mid-job writes the same datasets as a clean run, and a two-worker training stage whose worker node dies
resumes from its last checkpoint on the surviving node, in the same MLflow run.

Each scenario runs in a subprocess that owns its cluster and is its driver (one Ray connection per process: the
session's ``ray_local`` stays untouched); the subprocess writes what it saw to a JSON file the test checks. The
kills are gated on events, not on sleeps: the ingest's kill waits for a task to block on a report served through a
named pipe, the training's for both workers to pause after a registered checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import INGEST_SIZE

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
MODULE = Path(__file__).stem
MB = 1024**2
PAUSE_STEP = 3  # the training workers pause after this optimizer step (the step-2 checkpoint is then registered)

pytestmark = pytest.mark.slow


def _session_of(pid: int) -> int | None:
    """The session of a live process (None once it is gone or a zombie)."""
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
        return os.getsid(pid)
    except (OSError, IndexError):
        return None


def end_session(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGKILL ``proc`` (started with ``start_new_session``) and every process of its session, and wait until none
    is left: Ray's workers lead process groups of their own, so a group kill would miss them, and they may still
    be reporting to Ray Train's controller."""
    deadline = time.time() + timeout
    while True:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _session_of(int(p)) == proc.pid]
        if not pids:
            proc.wait()
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.poll()  # reap the leader once it died
        assert time.time() < deadline, f"processes {pids} of session {proc.pid} outlived SIGKILL"
        time.sleep(0.1)


def run_scenario(name: str, folder: Path, *args: str, timeout: float) -> dict[str, Any]:
    """Run ``<this module>.<name>(*args, result_file)`` in a fresh Python process in a session of its own (ended
    whole afterwards, so no Ray process outlives the test); returns the JSON it wrote."""
    result = folder / f"{name}.json"
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import {MODULE} as m; m.{name}(*sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", code, *args, str(result)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        end_session(proc)
        out = proc.communicate()[0] + f"\n(killed: no result within {timeout} s)"
    end_session(proc)
    assert proc.returncode == 0 and result.is_file(), out[-6000:]
    return json.loads(result.read_text())


@contextlib.contextmanager
def loopback_cluster(head_cpus: float):
    """A loopback cluster whose head node (the driver's) has ``head_cpus`` CPUs and no dashboard; this process
    connects to it. ``Cluster`` records its address in Ray's session file (where a ``ray start`` cluster is
    recorded) and deletes it on shutdown: what was recorded before is put back."""
    import ray
    from ray._common.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    session = Path(get_ray_address_file(None))
    recorded = session.read_text() if session.is_file() else None
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False,
                                                            "object_store_memory": 128 * MB})
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if recorded is not None:
            session.write_text(recorded)


# --- ingest --------------------------------------------------------------------------------------------------------


class PipeGate(threading.Thread):
    """Holds the first reader of the named pipe at ``path``: it blocks until :meth:`open_file` swaps a regular file
    with ``data`` in under the path and closes the pipe (a reader still alive then reads nothing: an empty report
    would show as a reject). Later readers open the regular file."""

    def __init__(self, path: Path, data: bytes) -> None:
        super().__init__(daemon=True)
        self.path, self.data, self.fd = path, data, None
        self.held, self.stop = threading.Event(), threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until a reader has it open
            except OSError:
                time.sleep(0.02)
                continue
            self.held.set()
            return

    def open_file(self) -> None:
        self.stop.set()
        if not self.path.is_fifo():
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(self.data)
        tmp.replace(self.path)
        if self.fd is not None:
            os.close(self.fd)


class Background(threading.Thread):
    """``fn()`` in a thread, keeping its result or exception for :meth:`result`."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn, self.value, self.error = fn, None, None

    def run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised by result()
            self.error = exc

    def result(self, timeout: float):
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.value


def _wait_for(predicate, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.05)


def ingest_with_node_killed(raw: str, out: str, report: str, result_file: str) -> None:
    """Ingest ``raw`` on a head without CPUs plus one worker node; when a task blocks reading ``report`` (a named
    pipe) and some blocks are already written, remove the worker node and add a replacement."""
    from pipelines.ingest.config import IngestConfig
    from pipelines.ingest.job import run_ingest
    from preprocessing.records import TABLES

    staging = Path(out) / f".{TABLES}.staging"
    gate = PipeGate(Path(report), Path(report).with_suffix(".bytes").read_bytes())
    with loopback_cluster(head_cpus=0) as cluster:
        worker = cluster.add_node(num_cpus=2, object_store_memory=128 * MB)
        gate.start()
        job = Background(lambda: run_ingest(Path(raw), Path(out), IngestConfig(image_size=INGEST_SIZE),
                                            address=cluster.address))
        job.start()
        try:
            _wait_for(lambda: gate.held.is_set() or not job.is_alive(), "a task to read the piped report")
            assert job.is_alive(), "the job ended before reading the piped report"
            _wait_for(lambda: list(staging.rglob("*.parquet")), "a first written block")
            seen = {"written_before_kill": len(list(staging.rglob("*.parquet")))}
            cluster.remove_node(worker, allow_graceful=False)
            cluster.add_node(num_cpus=2, object_store_memory=128 * MB)
        finally:
            gate.open_file()
        manifest = job.result(timeout=180)
    seen.update(datasets=manifest["datasets"], rejects=manifest["rejects"]["rows"])
    Path(result_file).write_text(json.dumps(seen))


def test_ingest_survives_a_worker_node_killed_mid_job(synth_raw, ingested, tmp_path):
    """The worker node dies while a task is reading its records and after other blocks were written; Ray retries the
    lost work on a replacement node, the ledger (on the driver's node) keeps its digests, and every dataset's digest
    and row count equal those of a clean single-node run of the same config."""
    raw = tmp_path / "raw"
    shutil.copytree(synth_raw, raw)
    report = sorted((raw / "mimic-cxr/2.0.0").glob("files/p*/p*/s*.txt"))[-1]  # a record in a middle block
    report.with_suffix(".bytes").write_bytes(report.read_bytes())
    report.unlink()
    os.mkfifo(report)  # a task reading it blocks until the pipe is served: the kill lands while the job runs

    seen = run_scenario("ingest_with_node_killed", tmp_path, str(raw), str(tmp_path / "out"), str(report), timeout=300)

    assert seen["written_before_kill"] >= 1  # some blocks were done and written when the node died
    clean = ingested[1]
    assert {k: (v["rows"], v["digest"]) for k, v in seen["datasets"].items()} == \
        {k: (v["rows"], v["digest"]) for k, v in clean["datasets"].items()}
    assert seen["rejects"] == clean["rejects"]["rows"]


# --- training ------------------------------------------------------------------------------------------------------


def pause_trainer(gate: str) -> type:
    """A Trainer that notes where each worker starts (rank, node, step it resumed at) and holds the workers of the
    first attempt after step PAUSE_STEP until Ray Train's controller ends them: the step-2 checkpoint is reported,
    the kill can wait for it to be registered, the run cannot end first, and the worker on the surviving node logs
    nothing more. The restarted workers do not pause."""
    import ray

    from pipelines.training.trainer import Trainer

    class PauseAfterCheckpoint(Trainer):
        def resume(self) -> None:
            super().resume()
            self.first_attempt = self.state["step"] == 0
            start = {"rank": self.rank, "step": self.state["step"], "node": ray.get_runtime_context().get_node_id()}
            Path(gate, f"start-{time.time_ns()}-{self.rank}.json").write_text(json.dumps(start))

        def after_step(self, step: int) -> None:
            if step == PAUSE_STEP and self.first_attempt:
                Path(gate, f"paused-{self.rank}").write_text(ray.get_runtime_context().get_node_id())
                while True:
                    time.sleep(0.05)

    return PauseAfterCheckpoint


def _hold(release: str, holding: str) -> None:
    """Occupy this task's CPUs until ``release`` exists."""
    Path(holding).touch()
    while not Path(release).exists():
        time.sleep(0.05)


def _registered_step(storage: Path) -> int | None:
    """The step of the latest checkpoint Ray Train's controller registered (its snapshot in the run's folder; None
    before the first, or while the controller rewrites it)."""
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
        except ValueError:
            return None
        if latest:
            return latest["metrics"]["step"]
    return None


def train_config(work: str, tables: str):
    """Two DDP workers of 2 CPUs each on the tiny preset: a 4-step detection stage, a checkpoint every 2 steps."""
    from pipelines.training.config import load_train_config

    cfg = load_train_config(ROOT / "configs/train/demo.yaml")
    cfg.workdir, cfg.data.tables = work, tables
    cfg.workers, cfg.cpus_per_worker, cfg.engine, cfg.deepspeed = 2, 2, "ddp", ""
    cfg.batch_size, cfg.micro_batch, cfg.max_failures = 8, 4, 1
    cfg.pretrain.clip.enabled = cfg.pretrain.lm.enabled = False
    cfg.calibration.enabled = False
    detection = next(s for s in cfg.stages if s["name"] == "detection")
    cfg.stages = [{**detection, "steps": 4, "val_every": 2, "warmup_steps": 1}]
    return cfg


def train_with_node_killed(tables: str, work: str, result_file: str) -> None:
    """Node A (4 CPUs, 2 of them held by a placeholder task) and node B (2 CPUs) get one training worker each; once
    both pause after the registered step-2 checkpoint, node B is removed and the placeholder released, so the
    restarted group fits on node A alone."""
    import ray
    import ray.cloudpickle
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipelines.training.stages import run_stage, stage_input

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    cfg = train_config(work, tables)
    gate = Path(work, "gate")
    gate.mkdir(parents=True)
    with loopback_cluster(head_cpus=1) as cluster:  # the driver, Train's controller and the Ray Data tasks
        node_a = cluster.add_node(num_cpus=4, object_store_memory=128 * MB)
        node_b = cluster.add_node(num_cpus=2, object_store_memory=128 * MB)
        holder = ray.remote(_hold).options(num_cpus=2, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node_a.node_id, soft=False)).remote(str(gate / "release"), str(gate / "holding"))
        _wait_for(lambda: (gate / "holding").exists(), "the placeholder to hold 2 CPUs of node A")
        stage = cfg.stage_configs()[0]
        job = Background(lambda: run_stage(cfg, stage, stage_input(cfg, stage.name), trainer=pause_trainer(str(gate))))
        job.start()
        try:
            _wait_for(lambda: len(list(gate.glob("paused-*"))) == 2 or not job.is_alive(), "both workers to pause", 240)
            assert job.is_alive(), "the stage ended before its workers paused"
            _wait_for(lambda: _registered_step(Path(cfg.ray_storage())) == 2, "the step-2 checkpoint to be registered")
            paused = sorted(p.read_text() for p in gate.glob("paused-*"))
            cluster.remove_node(node_b, allow_graceful=False)
        finally:
            (gate / "release").touch()
        ray.get(holder)
        res = job.result(timeout=300)
    starts = [json.loads(p.read_text()) for p in sorted(gate.glob("start-*.json"))]
    Path(result_file).write_text(json.dumps({
        "node_a": node_a.node_id, "node_b": node_b.node_id, "paused": paused, "starts": starts,
        "model_dir": str(res.model_dir), "metrics": res.metrics, "tracking_uri": cfg.tracking_uri(),
        "experiment": cfg.mlflow.experiment}))


def test_training_resumes_on_the_surviving_node_when_a_worker_node_dies(ingested, tmp_path):
    """Two workers on two nodes; the node of one dies after the step-2 checkpoint. Ray Train (FailureConfig) restarts
    the group on the surviving node from that checkpoint, not from step 0, and rank 0 continues the same MLflow run:
    one run whose curves have no second baseline and no repeated step."""
    import mlflow

    seen = run_scenario("train_with_node_killed", tmp_path, str(ingested[0]), str(tmp_path / "work"), timeout=420)

    a, b = seen["node_a"], seen["node_b"]
    assert seen["paused"] == sorted([a, b])  # one worker per node when the node died
    first, second = seen["starts"][:2], seen["starts"][2:]
    assert sorted(s["rank"] for s in first) == sorted(s["rank"] for s in second) == [0, 1]
    assert {s["step"] for s in first} == {0} and sorted(s["node"] for s in first) == sorted([a, b])
    assert {s["step"] for s in second} == {2} and {s["node"] for s in second} == {a}  # resumed at 2, on node A
    assert seen["metrics"]["step"] == 4 and (Path(seen["model_dir"]) / "model.safetensors").is_file()

    client = mlflow.MlflowClient(seen["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name(seen["experiment"]).experiment_id])
    assert run.info.status == "FINISHED"
    steps = {key: [m.step for m in client.get_metric_history(run.info.run_id, key)]
             for key in ("loss", "val/loss", "resumed_from_step")}
    assert steps == {"loss": [1, 2, 3, 4], "val/loss": [0, 2, 4], "resumed_from_step": [2]}
