"""A throwaway PostgreSQL cluster on loopback, for running the MLflow server against the backend production uses
(``infra.mlflow_server``) without Docker: ``initdb`` into a folder, ``pg_ctl start`` on 127.0.0.1, one database.

PostgreSQL refuses to run as root; as root, the server commands run as the ``postgres`` system user (``runuser``)
and the cluster lives in a fresh folder under the system temp directory that this user owns (it could not reach into
root's private folders), removed afterwards.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from infra.ports import free_port


class MissingPostgresError(RuntimeError):
    pass


def _binaries() -> tuple[str, str]:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        raise MissingPostgresError("PostgreSQL's initdb / pg_ctl are not on PATH (e.g. apt-get install postgresql)")
    return initdb, pg_ctl


def available() -> bool:
    try:
        _binaries()
    except MissingPostgresError:
        return False
    return os.geteuid() != 0 or _system_user() is not None


def _system_user() -> str | None:
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        return None


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    user = _system_user()
    if user is None:
        raise MissingPostgresError("running as root needs a 'postgres' system user to own the database cluster")
    return ["runuser", "-u", user, "--", *cmd]


@contextlib.contextmanager
def local_postgres(root: Path | None = None, database: str = "mlflow", user: str = "mlflow",
                   port: int | None = None) -> Iterator[str]:
    """Create a cluster under ``root`` (None, or running as root: a temporary folder), serve it on 127.0.0.1 with
    ``database`` owned by ``user`` (trust authentication: loopback only, for tests and trials), yield its SQLAlchemy
    URI, stop it afterwards."""
    import psycopg

    initdb, pg_ctl = _binaries()
    temporary = root is None or os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="chex-postgres-")) if temporary else root
    root.mkdir(parents=True, exist_ok=True)
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        owner = pwd.getpwnam(_system_user() or "postgres")
        for p in (root, sockets):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    port = port or free_port()

    def run(cmd: list[str]) -> None:
        subprocess.run(_as_server_user(cmd), check=True, capture_output=True, text=True)

    try:
        run([initdb, "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-instructions"])
        run([pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60",
             "-o", f"-h 127.0.0.1 -p {port} -k {sockets}", "start"])
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr.strip() or exc.stdout.strip()}") from exc
    try:
        conn = psycopg.connect(host="127.0.0.1", port=port, user=user, dbname="postgres", autocommit=True)
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{database}"')
        conn.close()
        yield f"postgresql://{user}@127.0.0.1:{port}/{database}"
    finally:
        subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True)
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
