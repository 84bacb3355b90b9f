"""An MLflow tracking server with MLflow's basic-auth app, without Docker compose: for production, and for running
the pipeline and its tests against a real server (REST tracking store, proxied artifacts) rather than a SQLite file.

Production uses a PostgreSQL backend and an object-store artifact destination::

    MLFLOW_AUTH_ADMIN_PASSWORD=... python -m infra.mlflow_server \\
        --backend-store-uri postgresql://mlflow:***@db:5432/mlflow --artifacts-destination s3://bucket/mlflow \\
        --host 0.0.0.0 --port 5000 --allowed-hosts mlflow.internal

(PostgreSQL needs ``psycopg``, S3 needs ``boto3`` and the auth app ``Flask-WTF``: the ``cluster`` extra.) Each API
request needs a user's credentials; the admin's come from ``--admin-password-file`` or the environment
(``infra.tracking_auth``), users from ``python -m infra.tracking_users``. A bind beyond loopback also restricts the
``Host`` headers and CORS origins the server accepts (DNS rebinding, cross-site requests). ``--no-auth`` runs the
plain server on loopback only. To try the PostgreSQL backend on one machine, ``--local-postgres`` first starts a
throwaway PostgreSQL cluster on loopback (``infra.local_postgres``) and uses it as the backend store.
"""
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from infra.ports import free_port
from infra.tracking_auth import DEFAULT_PERMISSIONS, AuthSettings, admin_settings, auth_database_uri, \
    server_environment, write_config

# MLflow's job runner (GenAI scorers, prompt optimisation) starts seven consumer processes; this project runs no jobs
JOBS_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


def command(backend_uri: str, artifacts: str, host: str = "127.0.0.1", port: int = 5000, workers: int = 1,
            auth: bool = False, network: list[str] | None = None) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", str(workers),
            "--backend-store-uri", backend_uri, "--serve-artifacts", "--artifacts-destination", artifacts,
            *(["--app-name", "basic-auth"] if auth else []), *(network or [])]


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def network_options(host: str, port: int, allowed_hosts: str | None = None, cors_origins: str | None = None) -> list[str]:
    """``--allowed-hosts`` and ``--cors-allowed-origins``. On loopback MLflow's defaults (localhost only) hold unless
    given. Beyond it, the names default to this machine's and the bound address; each is allowed with and without the
    port (a client's ``Host`` header carries the port it dialled), and the origins default to the server's own
    ``http://NAME:PORT`` pages (else the UI's own writes count as cross-site)."""
    if is_loopback(host) and not (allowed_hosts or cors_origins):
        return []
    if allowed_hosts:
        names = [h.strip() for h in allowed_hosts.split(",") if h.strip()]
    else:
        names = [socket.getfqdn(), socket.gethostname(), *_bound_name(host), "localhost", "127.0.0.1"]
    hosts = dict.fromkeys([*names, *(f"{n}:{port}" for n in names if not _has_port(n) and "*" not in n)])
    origins = cors_origins or ",".join(dict.fromkeys(
        f"http://{n}" if _has_port(n) else f"http://{n}:{port}" for n in names if "*" not in n))
    return ["--allowed-hosts", ",".join(hosts), "--cors-allowed-origins", origins]


def _bound_name(host: str) -> list[str]:
    """The bound address as a Host header names it; none for a wildcard bind (0.0.0.0, ::)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return [host]
    return [] if ip.is_unspecified else [f"[{host}]" if ip.version == 6 else host]


def _has_port(name: str) -> bool:
    return re.fullmatch(r"(\[[^\]]+\]|[^:\[\]]+):\d+", name) is not None


@contextlib.contextmanager
def running(cmd: list[str], auth: AuthSettings | None, **popen) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` (the basic-auth app when ``auth``) in its own process group and stop the whole group afterwards
    (``mlflow server`` forks uvicorn workers). The auth config lives in a private temporary folder meanwhile."""
    with tempfile.TemporaryDirectory(prefix="chex-mlflow-") as tmp:
        env = {**os.environ, JOBS_ENV: os.environ.get(JOBS_ENV, "false")}
        if auth is not None:
            env.update(server_environment(write_config(Path(tmp), auth), auth))
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, **popen)
        try:
            yield proc
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived the server
    proc.wait()


def wait_healthy(uri: str, timeout_s: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode} before it became healthy")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {uri} not healthy after {timeout_s:.0f} s")


@contextlib.contextmanager
def local_server(backend_uri: str, artifacts: str, port: int | None = None, auth: AuthSettings | None = None,
                 allowed_hosts: str | None = None, cors_origins: str | None = None) -> Iterator[str]:
    """Start a server on 127.0.0.1 (the basic-auth app when ``auth``), yield its tracking URI once ``/health``
    answers, stop it afterwards."""
    port = port or free_port()
    cmd = command(backend_uri, artifacts, port=port, auth=auth is not None,
                  network=network_options("127.0.0.1", port, allowed_hosts, cors_origins))
    uri = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log, running(cmd, auth, stdout=subprocess.DEVNULL, stderr=log) as proc:
        try:
            wait_healthy(uri, proc=proc)
        except RuntimeError as exc:  # it exited: say why
            log.seek(0)
            raise RuntimeError(f"{exc}: {log.read().decode(errors='replace')[-2000:]}") from None
        yield uri


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infra.mlflow_server", description=__doc__.splitlines()[0])
    p.add_argument("--backend-store-uri", default="sqlite:///mlflow-server/mlflow.db")
    p.add_argument("--artifacts-destination", default="./mlflow-server/artifacts")
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default) keeps it on loopback")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--local-postgres", action="store_true",
                   help="start a throwaway PostgreSQL cluster on loopback and use it as the backend store")
    p.add_argument("--admin-password-file", type=Path,
                   help="first line: the admin's password (else $MLFLOW_AUTH_ADMIN_PASSWORD); needed on the first "
                        "start only, when the admin is created")
    p.add_argument("--admin-username", help="default: $MLFLOW_AUTH_ADMIN_USERNAME, else admin")
    p.add_argument("--auth-database-uri", help="users and permissions (default: beside the backend store)")
    p.add_argument("--default-permission", choices=DEFAULT_PERMISSIONS, default="READ",
                   help="what a signed-in user may do with what others logged (default READ)")
    p.add_argument("--allowed-hosts", help="Host headers to accept, comma-separated (default beyond loopback: this "
                                           "machine's names and the bound address)")
    p.add_argument("--cors-allowed-origins", help="comma-separated (default: http://HOST:PORT of the allowed hosts)")
    p.add_argument("--no-auth", action="store_true", help="the plain server without users: loopback only")
    p.add_argument("--allow-unauthenticated-network", action="store_true",
                   help="with --no-auth, allow a --host beyond loopback: anyone who reaches the port then reads every "
                        "run and can move or delete registered models")
    return p


def _serve(args: argparse.Namespace, backend: str) -> int:
    auth = None
    if not args.no_auth:
        auth = admin_settings(args.auth_database_uri or auth_database_uri(backend), args.admin_password_file,
                              args.admin_username, args.default_permission)
    for uri in (backend, auth.database_uri if auth else ""):
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    network = network_options(args.host, args.port, args.allowed_hosts, args.cors_allowed_origins)
    if network:
        print(f"allowed hosts: {network[1]}\nCORS origins: {network[3]}", flush=True)
    cmd = command(backend, args.artifacts_destination, args.host, args.port, args.workers, auth is not None, network)
    signal.signal(signal.SIGTERM, _exit)  # a service manager's stop: take the server's process group down too
    with running(cmd, auth) as proc:
        return proc.wait()


def _exit(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.no_auth and not is_loopback(args.host) and not args.allow_unauthenticated_network:
        print(f"error: --no-auth with --host {args.host} lets anyone on that network read every run and change the "
              "Model Registry. Keep authentication on, bind 127.0.0.1, or add --allow-unauthenticated-network.",
              file=sys.stderr)
        return 2
    try:
        if not args.local_postgres:
            return _serve(args, args.backend_store_uri)
        from infra.local_postgres import local_postgres

        with local_postgres() as backend:
            print(f"backend store: {backend}", flush=True)
            return _serve(args, backend)
    except ValueError as exc:  # a bad option value: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
