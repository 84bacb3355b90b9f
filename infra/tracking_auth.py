"""The server side of MLflow's basic-auth app (``mlflow server --app-name basic-auth``): where its users and
permissions live, the admin's credentials, and the config file and environment the app reads.

MLflow reads the app's settings from the INI file named by ``MLFLOW_AUTH_CONFIG_PATH`` and the admin's credentials
from ``MLFLOW_AUTH_ADMIN_USERNAME`` / ``MLFLOW_AUTH_ADMIN_PASSWORD``. The password therefore travels in the server's
environment only: never on a command line (visible to every local user in ``ps``), never in the INI file, never
logged. It is needed on the first start only, when MLflow creates the admin in an empty user store.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

ADMIN_USERNAME_ENV = "MLFLOW_AUTH_ADMIN_USERNAME"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
# READ: every signed-in user reads every experiment and model (MLflow's default; writes stay with their owners).
# NO_PERMISSIONS: a user sees only what was granted to them (infra.tracking_users grants READ per experiment/model).
DEFAULT_PERMISSIONS = ("READ", "NO_PERMISSIONS")


@dataclass(frozen=True)
class AuthSettings:
    """What the basic-auth app needs. ``admin_password`` None: the admin already exists in ``database_uri``."""
    database_uri: str
    admin_username: str = "admin"
    admin_password: str | None = field(default=None, repr=False)
    default_permission: str = "READ"
    # each request re-checks the password with scrypt (~0.1 s of CPU, seconds on a loaded machine); successful checks
    # are cached this long per worker. A password change or deletion takes effect at once on a one-worker server,
    # within this many seconds on every worker of a bigger one. 0 turns the cache off.
    cache_ttl_s: int = 60


def auth_database_uri(backend_uri: str) -> str:
    """Users and permissions beside the tracking data: ``basic_auth.db`` next to a SQLite store, or the same
    database server URI (the app keeps its own tables and its own migration table, ``alembic_version_auth``)."""
    if backend_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(backend_uri.removeprefix('sqlite:///')).parent / 'basic_auth.db'}"
    if backend_uri.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "mysql", "mssql"):
        return backend_uri
    raise ValueError("basic auth keeps its users in a database: use a database --backend-store-uri "
                     "(sqlite:///, postgresql://, mysql://) or pass --auth-database-uri")


def admin_settings(database_uri: str, password_file: Path | None, username: str | None = None,
                   default_permission: str = "READ") -> AuthSettings:
    """The admin's name (``username``, else ``$MLFLOW_AUTH_ADMIN_USERNAME``, else ``admin``) and password (the first
    line of ``password_file``, else ``$MLFLOW_AUTH_ADMIN_PASSWORD``, else None)."""
    password = os.environ.get(ADMIN_PASSWORD_ENV) or None
    if password_file is not None:
        lines = Path(password_file).read_text().splitlines()
        password = lines[0] if lines and lines[0] else None
        if password is None:
            raise ValueError(f"{password_file} is empty: its first line must be the admin password")
    name = username or os.environ.get(ADMIN_USERNAME_ENV) or "admin"
    return AuthSettings(database_uri, name, password, default_permission)


def write_config(folder: Path, auth: AuthSettings) -> Path:
    """The app's INI file, readable by its owner only (a database URI may hold a password)."""
    if auth.default_permission not in DEFAULT_PERMISSIONS:
        raise ValueError(f"default permission {auth.default_permission!r}: expected one of {DEFAULT_PERMISSIONS}")
    path = Path(folder) / "basic_auth.ini"
    text = ("[mlflow]\n"
            f"default_permission = {auth.default_permission}\n"
            f"database_uri = {auth.database_uri.replace('%', '%%')}\n"
            f"admin_username = {auth.admin_username}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            f"auth_cache_ttl_seconds = {auth.cache_ttl_s}\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def server_environment(config_path: Path, auth: AuthSettings) -> dict[str, str]:
    """The variables the app reads. The CSRF key of its web forms must be the same in every worker: one is drawn
    per start unless ``$MLFLOW_FLASK_SERVER_SECRET_KEY`` is set (set it for several replicas behind one name)."""
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(config_path), ADMIN_USERNAME_ENV: auth.admin_username,
           SECRET_KEY_ENV: os.environ.get(SECRET_KEY_ENV) or secrets.token_urlsafe(32)}
    if auth.admin_password is not None:
        env[ADMIN_PASSWORD_ENV] = auth.admin_password
    return env
