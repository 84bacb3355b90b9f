"""Connecting to Ray: reuse a running session (tests, notebooks), a cluster by address, or start a local one."""
from __future__ import annotations

import os

import ray


def init_ray(address: str | None = None) -> None:
    """Local Ray with the machine's CPUs by default; `address` ("auto" or host:port) joins a cluster. Without an
    address a new local instance starts even when another runs on the machine (a `ray start` cluster, another
    pipeline): joining it silently would share its resources, and Ray refuses ``num_cpus`` for a running cluster."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), log_to_driver=False)
