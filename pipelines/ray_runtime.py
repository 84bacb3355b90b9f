"""Connecting to Ray the way the user means it, said in one log line.

No address: the cluster named by ``RAY_ADDRESS``, else the one a ``ray start`` on this machine recorded (when it
still answers), else a private local instance. ``--address`` names a cluster (``host:port``, ``ray://host:port``,
``auto`` for the recorded one) or ``local`` for a private instance. A stale session file never breaks a command;
an address that does not answer is one clear error, before Ray spends a minute retrying it.
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 3.0


class RayUnavailable(ConnectionError):
    """The Ray cluster the user named cannot be reached (the CLI prints this as one line and exits 1)."""


def session_file() -> str:
    """Where ``ray start`` records the address of the cluster it started on this machine."""
    from ray._common.utils import get_ray_address_file

    return get_ray_address_file(None)


def _recorded_address() -> str | None:
    try:
        with open(session_file()) as f:
            return f.read().strip() or None
    except OSError:
        return None


def answers(address: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether something accepts TCP connections at the address's host:port (a GCS or Ray client server)."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return False
    if not host or not port:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def choose_cluster(address: str | None) -> tuple[str | None, str]:
    """(address to join or None for a private local instance, why): the decision, without connecting."""
    if address == "local":
        return None, "a private local Ray instance (--address local)"
    if address and address != "auto":
        return _checked(address, "--address")
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env not in ("auto", "local"):
        return _checked(env, "RAY_ADDRESS")
    if env == "local":
        return None, "a private local Ray instance (RAY_ADDRESS=local)"
    recorded = _recorded_address()
    if recorded and answers(recorded):
        return recorded, f"the Ray cluster started on this machine at {recorded} ({session_file()})"
    if address == "auto" or env == "auto":
        raise RayUnavailable(f"no running Ray cluster found for address 'auto' (session file {session_file()}: "
                             f"{'stale: ' + recorded + ' does not answer' if recorded else 'absent'}); run `ray start "
                             "--head` or name the cluster with --address host:port")
    stale = f" (ignored the stale session file {session_file()}: {recorded} does not answer)" if recorded else ""
    return None, f"a private local Ray instance{stale}"


def _checked(address: str, named_by: str) -> tuple[str, str]:
    if not answers(address):
        raise RayUnavailable(f"cannot reach the Ray cluster at {address} (from {named_by}): nothing answers there "
                             f"within {CONNECT_TIMEOUT_S:.0f} s; is it running, and is the port open?")
    return address, f"the Ray cluster at {address} ({named_by})"


def init_ray(address: str | None = None, **init_kwargs) -> None:
    """Join or start Ray as :func:`choose_cluster` decides; a no-op when this process is already connected
    (tests, notebooks). A private instance gets the machine's CPUs. ``init_kwargs`` go to ``ray.init``."""
    import ray  # here, not at module level: `chex` subcommands that never touch Ray should not pay its import

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    target, why = choose_cluster(address)
    with _quiet_auth_notice():
        _init(ray, target, init_kwargs)
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    log.info("Ray: using %s: %d node(s), %g CPUs", why, nodes, ray.cluster_resources().get("CPU", 0))


@contextmanager
def _quiet_auth_notice() -> Iterator[None]:
    """Ray's token authentication stays as Ray sets it: on for a new local instance (Ray's default, which it
    announces with a warning on every start), and for a joined cluster whenever a token is available
    ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token). RAY_AUTH_MODE=disabled opts out (docs/pipeline.md:
    anyone who reaches the ports can then run code). Only the announcement is kept off the console; Ray decides
    the mode itself, because it caches it in-process when it is imported."""
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = notice.level
    notice.setLevel(logging.ERROR)
    try:
        yield
    finally:
        notice.setLevel(level)


def _init(ray, target: str | None, init_kwargs: dict) -> None:
    if target is None:
        # RAY_ADDRESS would make even address="local" join a cluster; a private instance must not see it
        env = os.environ.pop("RAY_ADDRESS", None)
        try:
            ray.init(address="local", num_cpus=os.cpu_count(), **{"log_to_driver": False, **init_kwargs})
        finally:
            if env is not None:
                os.environ["RAY_ADDRESS"] = env
    else:
        try:
            ray.init(address=target, **{"log_to_driver": False, **init_kwargs})
        except ConnectionError as exc:
            raise RayUnavailable(f"cannot join the Ray cluster at {target}: {exc}") from exc


def data_bars_off_terminal() -> None:
    """Ray Data draws no bars on a terminal, where the command's own display draws (Ray says so once); elsewhere (a
    pipeline stage's log file, CI) it logs its progress, which a pipeline keeps in the stage's log file."""
    import sys

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = not sys.stdout.isatty()
    ctx.use_ray_tqdm = False  # actors executing a dataset (a split coordinator) log too, not draw on the driver
