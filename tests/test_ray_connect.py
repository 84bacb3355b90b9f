"""Which Ray a command uses: RAY_ADDRESS, a `ray start` cluster on this machine, or a private instance; a stale
session file is ignored and an address that does not answer is one clear line. The slow test starts a real head."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipelines.ray_runtime import RayUnavailable, choose_cluster, session_file

BIN = Path(sys.executable).parent


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_tmp(monkeypatch):
    """A private Ray temp dir (short: Ray's socket paths must fit 107 bytes), so no real session file is seen."""
    path = tempfile.mkdtemp(prefix="r", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return Path(path)


def test_no_cluster_and_no_address_means_a_private_instance(ray_tmp):
    assert choose_cluster(None) == (None, "a private local Ray instance")


def test_a_stale_session_file_is_ignored(ray_tmp):
    port = _closed_port()
    Path(session_file()).parent.mkdir(parents=True)
    Path(session_file()).write_text(f"127.0.0.1:{port}")
    target, why = choose_cluster(None)
    assert target is None and f"stale session file {session_file()}: 127.0.0.1:{port} does not answer" in why
    with pytest.raises(RayUnavailable, match="no running Ray cluster found for address 'auto'"):
        choose_cluster("auto")


def test_an_address_that_does_not_answer_is_an_error(ray_tmp, monkeypatch):
    port = _closed_port()
    with pytest.raises(RayUnavailable, match=rf"cannot reach the Ray cluster at 127.0.0.1:{port} \(from --address\)"):
        choose_cluster(f"127.0.0.1:{port}")
    monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{port}")
    with pytest.raises(RayUnavailable, match="from RAY_ADDRESS"):
        choose_cluster(None)
    assert choose_cluster("local")[0] is None   # --address local wins over RAY_ADDRESS


def test_cli_unreachable_address_is_one_line_and_exit_1(synth_raw, tmp_path):
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "chex"), "ingest", "--raw", str(synth_raw), "--out", str(tmp_path / "out"),
                           "--address", f"127.0.0.1:{_closed_port()}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("chex ingest: error: cannot reach the Ray cluster at 127.0.0.1:")
    assert time.perf_counter() - t0 < 60   # not Ray's minute of retries


@pytest.fixture
def ray_head(ray_tmp):
    """A real `ray start --head` with one CPU in its own process group, stopped by signal (never `ray stop`, which
    would stop every Ray on the machine)."""
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    proc = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--port", str(_closed_port()),
                             "--num-cpus", "1", "--include-dashboard", "false", "--disable-usage-stats",
                             "--ray-client-server-port", str(_closed_port())],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 90
    while not (Path(session_file()).is_file() and Path(session_file()).read_text().strip()):
        assert proc.poll() is None and time.time() < deadline, "ray start --head did not come up"
        time.sleep(0.5)

    def stop() -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            time.sleep(2)

    yield Path(session_file()).read_text().strip(), env, stop
    stop()


@pytest.mark.slow
def test_ingest_joins_a_running_local_cluster_then_ignores_it_once_stale(ray_head, synth_raw, tmp_path):
    """The issue's failure: with `ray start` running, `chex ingest` without --address died with a traceback."""
    address, env, stop = ray_head
    cfg = tmp_path / "ingest.yaml"
    cfg.write_text("image_size: 32\nsources: {mimic_cxr_jpg: null, mimic_cxr_reports: null, chest_imagenome: null,"
                   " ms_cxr: null, nih_cxr: null}\n")
    cmd = [str(BIN / "chex"), "ingest", "--raw", str(synth_raw), "--config", str(cfg), "--out"]
    joined = subprocess.run([*cmd, str(tmp_path / "a")], capture_output=True, text=True, env=env, timeout=300)
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert f"Ray: using the Ray cluster started on this machine at {address}" in joined.stderr
    assert ": 1 node(s), 1 CPUs" in joined.stderr   # the head's one CPU, not this machine's
    by_env = subprocess.run([*cmd, str(tmp_path / "b")], capture_output=True, text=True, timeout=300,
                            env={**env, "RAY_TMPDIR": tempfile.mkdtemp(prefix="r", dir="/tmp"), "RAY_ADDRESS": address})
    assert by_env.returncode == 0 and f"Ray: using the Ray cluster at {address} (RAY_ADDRESS)" in by_env.stderr
    stop()   # killed, not `ray stop`ped: the session file still names it
    stale = subprocess.run([*cmd, str(tmp_path / "c")], capture_output=True, text=True, env=env, timeout=300)
    assert stale.returncode == 0, stale.stderr[-3000:]
    assert f"a private local Ray instance (ignored the stale session file {session_file()}: {address}" in stale.stderr
    assert f": 1 node(s), {os.cpu_count()} CPUs" in stale.stderr


@pytest.mark.slow
def test_a_token_auth_cluster_refuses_a_client_without_its_token(ray_head):
    """The cluster runs with Ray's token authentication (on in every command and test): a client holding the
    token joins; one with a wrong token, or none, is refused."""
    address, env, _ = ray_head
    probe = ("import ray, sys\ntry:\n    ray.init(address=sys.argv[1], log_to_driver=False)\nexcept Exception as exc:\n"
             "    print('refused:', type(exc).__name__); sys.exit(3)\nprint('joined', ray.cluster_resources().get('CPU'))")

    def join(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True, timeout=120,
                              env={**env, **extra})

    ok = join()
    assert ok.returncode == 0 and "joined 1.0" in ok.stdout, ok.stderr[-2000:]
    for extra in ({"RAY_AUTH_TOKEN": "0" * 64}, {"RAY_AUTH_MODE": "disabled"}):
        refused = join(**extra)
        assert refused.returncode != 0 and "joined" not in refused.stdout, (extra, refused.stdout, refused.stderr[-1500:])


def test_cluster_configs_run_with_token_auth():
    """`ray up` and KubeRay clusters enforce the token, distributed as each platform expects."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    up = yaml.safe_load((repo / "ray_cluster.yaml").read_text())
    assert "-e RAY_AUTH_MODE=token" in up["docker"]["run_options"]
    assert up["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    job = yaml.safe_load((repo / "infra/kuberay/rayjob.yaml").read_text())["spec"]["rayClusterSpec"]
    groups = [job["headGroupSpec"], *job["workerGroupSpecs"]]
    for group in groups:
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "chex-ray-auth", "key": "token"}
    secrets = {d["metadata"]["name"] for d in yaml.safe_load_all((repo / "infra/kuberay/ray-auth-secret.yaml").read_text())}
    assert secrets == {"chex-ray-auth", "chex-mlflow-auth"}


def test_a_private_instance_runs_with_token_auth_and_says_nothing_about_it(tmp_path):
    """As a `chex` command meets it: Ray imported first, no RAY_AUTH_MODE in the environment (the Makefile and the
    CLI set none). Ray turns token auth on for the new instance; its announcement stays off the console."""
    code = ("import ray, os, logging\nlogging.basicConfig(level=logging.INFO)\n"
            "from pipelines.ray_runtime import init_ray\ninit_ray(None)\n"
            "print('mode', os.environ.get('RAY_AUTH_MODE'), ray.get(ray.remote(lambda: 41 + 1).remote()))")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="r", dir="/tmp")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mode token 42" in proc.stdout
    assert "Token authentication is" not in proc.stderr and "Ray: using a private local Ray instance" in proc.stderr
