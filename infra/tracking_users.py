"""Users of the authenticated tracking server (``infra.mlflow_server``), made by its admin through MLflow's
basic-auth client. The admin signs in as every MLflow client does, from ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``; a new user's password comes from a file or a prompt, never the command line::

    export MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=...
    python -m infra.tracking_users --tracking-uri http://mlflow.internal:5000 pipeline --password-file pipeline.pw
    python -m infra.tracking_users --tracking-uri http://mlflow.internal:5000 viewer --password-file viewer.pw \\
        --read-experiment chex-paper --read-model chex

A user owns (MANAGE) what they create: the pipeline's user its experiments, runs and registered models. A reader
granted READ sees runs, artifacts and model versions (``mlflow ui``, ``chex lineage``, ``chex serve models:/...``) and
can change none of them: not log, not register, not move the ``champion`` alias.
"""
from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Iterable
from pathlib import Path


def _auth_client(tracking_uri: str):
    from mlflow.server import get_app_client

    return get_app_client("basic-auth", tracking_uri=tracking_uri)


def user_exists(tracking_uri: str, username: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        _auth_client(tracking_uri).get_user(username)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return False
    return True


def create_user(tracking_uri: str, username: str, password: str) -> None:
    """A user who may sign in (MLflow wants a password of 12 characters or more) and owns what they create."""
    _auth_client(tracking_uri).create_user(username, password)


def grant_read(tracking_uri: str, username: str, experiments: Iterable[str] = (), models: Iterable[str] = ()) -> None:
    """READ on each experiment and registered model, by name (``*``: all of them, present and future)."""
    import mlflow

    client, tracking = _auth_client(tracking_uri), mlflow.MlflowClient(tracking_uri)
    for name in experiments:
        experiment = None if name == "*" else tracking.get_experiment_by_name(name)
        if name != "*" and experiment is None:
            raise ValueError(f"no experiment named {name!r} at {tracking_uri}")
        client.grant_user_permission(username, "experiment", experiment.experiment_id if experiment else "*", "READ")
    for name in models:
        client.grant_user_permission(username, "registered_model", name, "READ")


def _password(path: Path | None, username: str) -> str | None:
    if path is not None:
        lines = path.read_text().splitlines()
        return lines[0] if lines else None
    return getpass.getpass(f"password for {username}: ") if sys.stdin.isatty() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.tracking_users", description=__doc__.splitlines()[0])
    p.add_argument("username")
    p.add_argument("--tracking-uri", required=True, help="the server, e.g. http://mlflow.internal:5000")
    p.add_argument("--password-file", type=Path, help="first line: the new user's password (else a prompt)")
    p.add_argument("--read-experiment", action="append", default=[], metavar="NAME", help="grant READ (repeatable)")
    p.add_argument("--read-model", action="append", default=[], metavar="NAME",
                   help="grant READ on a registered model (repeatable)")
    args = p.parse_args(argv)
    from mlflow.exceptions import MlflowException

    try:
        created = not user_exists(args.tracking_uri, args.username)
        if created:
            password = _password(args.password_file, args.username)
            if not password:
                raise ValueError(f"user {args.username} does not exist yet: give its password (--password-file)")
            create_user(args.tracking_uri, args.username, password)
        grant_read(args.tracking_uri, args.username, args.read_experiment, args.read_model)
    except (ValueError, MlflowException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"user {args.username} {'created' if created else 'exists (password unchanged)'}"
          + "".join(f"; READ on {kind} {n}" for kind, names in (("experiment", args.read_experiment),
                                                                 ("model", args.read_model)) for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
