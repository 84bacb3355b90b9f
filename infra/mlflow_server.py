"""A local MLflow tracking server on loopback, without Docker compose: for running the pipeline and its tests against a
real server (REST tracking store, proxied artifacts) rather than a SQLite file.

Production uses the same command with a PostgreSQL backend and an object-store artifact destination::

    python -m infra.mlflow_server --backend-store-uri postgresql://mlflow:***@db:5432/mlflow \\
        --artifacts-destination s3://bucket/mlflow --host 0.0.0.0 --port 5000

(PostgreSQL needs ``psycopg`` and S3 needs ``boto3``: the ``cluster`` extra.) To try that backend on one machine,
``--local-postgres`` first starts a throwaway PostgreSQL cluster on loopback (``infra.local_postgres``) and uses it as
the backend store.
"""
from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

from infra.ports import free_port


def command(backend_uri: str, artifacts: str, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", str(workers),
            "--backend-store-uri", backend_uri, "--serve-artifacts", "--artifacts-destination", artifacts]


def wait_healthy(uri: str, timeout_s: float = 90.0, proc: subprocess.Popen | None = None) -> None:
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
def local_server(backend_uri: str, artifacts: str, port: int | None = None) -> Iterator[str]:
    """Start a server on 127.0.0.1, yield its tracking URI once ``/health`` answers, stop it afterwards."""
    port = port or free_port()
    proc = subprocess.Popen(command(backend_uri, artifacts, port=port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    uri = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(uri, proc=proc)
        except RuntimeError as exc:  # it exited: say why
            raise RuntimeError(f"{exc}: {proc.stderr.read().decode(errors='replace')[-2000:]}") from None
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.mlflow_server", description=__doc__.splitlines()[0])
    p.add_argument("--backend-store-uri", default="sqlite:///mlflow-server/mlflow.db")
    p.add_argument("--artifacts-destination", default="./mlflow-server/artifacts")
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default) keeps it on loopback")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--local-postgres", action="store_true",
                   help="start a throwaway PostgreSQL cluster on loopback and use it as the backend store")
    args = p.parse_args(argv)
    if not args.local_postgres:
        return subprocess.call(command(args.backend_store_uri, args.artifacts_destination, args.host, args.port, args.workers))
    from infra.local_postgres import local_postgres

    with local_postgres() as backend:
        print(f"backend store: {backend}", flush=True)
        return subprocess.call(command(backend, args.artifacts_destination, args.host, args.port, args.workers))


if __name__ == "__main__":
    sys.exit(main())
