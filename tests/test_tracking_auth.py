"""The authenticated tracking server (``infra/mlflow_server.py``: MLflow's basic-auth app) on loopback, backed by
PostgreSQL where ``infra.local_postgres`` can start one (SQLite otherwise): anonymous clients are refused, a pipeline
stage logs and registers with a user's credentials from the environment, and a read-only user can look at the
results but cannot move the ``champion`` alias."""
from __future__ import annotations

import base64
import contextlib
import secrets
import urllib.error
import urllib.request

import pytest

MODEL, EXPERIMENT, ALLOWED_NAME = "chex-auth", "auth-test", "mlflow.test"
ADMIN_PW, ALICE_PW, VIEWER_PW = (f"{who}-{secrets.token_hex(8)}" for who in ("admin", "alice", "viewer"))


def http_status(uri: str, path: str, user: tuple[str, str] | None = None, host: str | None = None) -> int:
    """The HTTP status of a GET, with basic-auth credentials and a Host header when given."""
    req = urllib.request.Request(f"{uri}{path}")
    if user is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(user).encode()).decode())
    if host is not None:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@contextlib.contextmanager
def signed_in(user: str, password: str):
    """MLflow clients sign in from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, as MLflow documents."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", user)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", password)
        yield


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(tracking URI, port, artifacts folder) of a basic-auth server where users see only what they were granted."""
    from infra import local_postgres
    from infra.mlflow_server import local_server
    from infra.ports import free_port
    from infra.tracking_auth import AuthSettings, auth_database_uri

    tmp, port = tmp_path_factory.mktemp("auth-server"), free_port()
    with contextlib.ExitStack() as stack:
        backend = (stack.enter_context(local_postgres.local_postgres()) if local_postgres.available()
                   else f"sqlite:///{tmp / 'mlflow.db'}")
        auth = AuthSettings(auth_database_uri(backend), "admin", ADMIN_PW, default_permission="NO_PERMISSIONS")
        uri = stack.enter_context(local_server(backend, str(tmp / "artifacts"), port=port, auth=auth,
                                               allowed_hosts=f"127.0.0.1,{ALLOWED_NAME}"))
        yield uri, port, tmp / "artifacts"


@pytest.fixture(scope="module")
def pipeline_run(server, tiny_model_dir):
    """What the pipeline's stages record, signed in as ``alice``: a training run (params), an evaluation run (a score,
    linked to it), and the model registered (pyfunc artifacts through the server's proxy) with the ``champion``
    alias. Returns (experiment id, training run id, evaluation run id, registration)."""
    import mlflow

    from infra.tracking_users import create_user
    from pipelines.registry import register
    from pipelines.tracking import Tracking, flatten

    uri = server[0]
    with signed_in("admin", ADMIN_PW):
        create_user(uri, "alice", ALICE_PW)
    with signed_in("alice", ALICE_PW):
        experiment_id = Tracking(uri, EXPERIMENT).activate()
        with mlflow.start_run(run_name="train") as train:
            mlflow.log_params(flatten({"train": {"model_preset": "tiny", "batch_size": 2}}))
        with mlflow.start_run(run_name="evaluate", tags={"training_run_id": train.info.run_id}) as evaluation:
            mlflow.log_metric("od_vindr/mAP", 0.4)
        with mlflow.start_run(run_name="register"):
            reg = register(tiny_model_dir, MODEL, "od_vindr/mAP", 0.4, evaluation_run_id=evaluation.info.run_id)
    return experiment_id, train.info.run_id, evaluation.info.run_id, reg


@pytest.mark.slow
def test_anonymous_clients_and_foreign_hosts_are_refused(server):
    uri, port, _ = server
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(uri, "/health") == 200  # load balancers' health checks need no account
    assert http_status(uri, search) == 401
    assert http_status(uri, search, ("admin", "wrong-password-1")) == 401
    assert http_status(uri, search, ("admin", ADMIN_PW)) == 200
    # --allowed-hosts reached the server: a name MLflow's defaults reject is let in (with the port the client dialled,
    # though it was given without one), any other name is not
    assert http_status(uri, search, ("admin", ADMIN_PW), host=f"{ALLOWED_NAME}:{port}") == 200
    assert http_status(uri, search, ("admin", ADMIN_PW), host=f"attacker.example:{port}") == 403


@pytest.mark.slow
def test_admin_password_is_on_no_command_line(server):
    import psutil

    lines = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
    assert any("basic-auth" in line for line in lines)  # the server runs, and is looked at
    assert not [line for line in lines if ADMIN_PW in line]


@pytest.mark.slow
def test_a_pipeline_stage_logs_with_user_credentials(server, pipeline_run):
    import mlflow

    from infra.tracking_users import _auth_client
    from pipelines.registry import CHAMPION

    uri, _, artifacts = server
    experiment_id, train_id, eval_id, reg = pipeline_run
    with signed_in("admin", ADMIN_PW):
        client = mlflow.MlflowClient(uri)
        assert client.get_run(train_id).info.experiment_id == experiment_id
        assert client.get_run(train_id).data.params == {"train.model_preset": "tiny", "train.batch_size": "2"}
        assert client.get_run(eval_id).data.metrics == {"od_vindr/mAP": 0.4}
        assert client.get_model_version_by_alias(MODEL, CHAMPION).version == reg.version == "1"
        # the server made alice the owner of what she created: her credentials, not an anonymous client, logged it
        users = _auth_client(uri)
        assert users.get_user_permission("alice", "experiment", experiment_id).permission == "MANAGE"
        assert users.get_user_permission("alice", "registered_model", MODEL).permission == "MANAGE"
    assert any(artifacts.rglob("model.safetensors"))


@pytest.mark.slow
def test_a_read_only_user_cannot_move_the_champion(server, pipeline_run, tmp_path, capsys):
    import json

    import mlflow
    from mlflow.exceptions import MlflowException

    from infra.tracking_users import main
    from pipelines.cli import main as chex
    from pipelines.registry import CHAMPION

    uri = server[0]
    _, train_id, eval_id, _ = pipeline_run
    (tmp_path / "viewer.pw").write_text(VIEWER_PW + "\n")
    client = mlflow.MlflowClient(uri)
    with signed_in("admin", ADMIN_PW):
        assert main(["viewer", "--tracking-uri", uri, "--password-file", str(tmp_path / "viewer.pw")]) == 0
    with signed_in("viewer", VIEWER_PW), pytest.raises(MlflowException) as denied:
        client.get_registered_model(MODEL)  # nothing granted yet: this server's default is NO_PERMISSIONS
    assert denied.value.get_http_status_code() == 403
    with signed_in("admin", ADMIN_PW):
        assert main(["viewer", "--tracking-uri", uri, "--read-experiment", EXPERIMENT, "--read-model", MODEL]) == 0
    with signed_in("alice", ALICE_PW):  # a second version to promote
        v2 = mlflow.register_model(client.get_model_version(MODEL, "1").source, MODEL).version
    with signed_in("viewer", VIEWER_PW):
        assert client.get_model_version_by_alias(MODEL, CHAMPION).version == "1"  # it reads the results ...
        capsys.readouterr()
        assert chex(["lineage", f"models:/{MODEL}@{CHAMPION}", "--tracking-uri", uri, "--json"]) == 0
        chain = json.loads(capsys.readouterr().out)
        assert chain["evaluation"]["run_id"] == eval_id and chain["evaluation"]["scores"] == {"od_vindr/mAP": 0.4}
        assert [t["run_id"] for t in chain["training"]] == [train_id]
        for change in (lambda: client.set_registered_model_alias(MODEL, CHAMPION, v2),  # ... and changes none
                       lambda: client.delete_registered_model_alias(MODEL, CHAMPION),
                       lambda: client.delete_model_version(MODEL, v2)):
            with pytest.raises(MlflowException) as denied:
                change()
            assert denied.value.get_http_status_code() == 403
    with signed_in("alice", ALICE_PW):
        assert client.get_model_version_by_alias(MODEL, CHAMPION).version == "1"  # the refused move left no trace
        client.set_registered_model_alias(MODEL, CHAMPION, v2)  # the owner may
        assert client.get_model_version_by_alias(MODEL, CHAMPION).version == v2 == "2"


def test_no_auth_beyond_loopback_needs_the_explicit_opt_out(capsys):
    from infra.mlflow_server import main

    assert main(["--no-auth", "--host", "0.0.0.0", "--port", "1"]) == 2  # refused before anything starts
    assert "--allow-unauthenticated-network" in capsys.readouterr().err


def test_a_bind_beyond_loopback_restricts_hosts_and_origins():
    """Beyond loopback the server is told which Host names and CORS origins to accept: by default this machine's
    name as clients dial it; on loopback MLflow's own localhost-only defaults stay."""
    import socket

    from infra.mlflow_server import network_options

    def split(options: list[str]) -> tuple[set[str], set[str]]:
        flags = dict(zip(options[::2], options[1::2]))
        return set(flags["--allowed-hosts"].split(",")), set(flags["--cors-allowed-origins"].split(","))

    assert network_options("127.0.0.1", 5000) == []
    hosts, origins = split(network_options("0.0.0.0", 5000))
    name = socket.gethostname()
    assert {name, f"{name}:5000"} <= hosts and f"http://{name}:5000" in origins
    assert not {h for h in hosts if "*" in h or h.startswith("0.0.0.0")}  # no wildcard, not the bind-all address
    assert split(network_options("0.0.0.0", 5000, "mlflow.example.com", "https://mlflow.example.com")) == (
        {"mlflow.example.com", "mlflow.example.com:5000"}, {"https://mlflow.example.com"})
