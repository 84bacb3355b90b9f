"""Put a registered version online on the connected Ray cluster, or move the running application to it.

Ray Serve updates an application of the same name in place: the new version's replicas start, and the old ones
stop taking requests and finish those in flight (``graceful_shutdown_timeout_s``) before they go.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.serving.bind import token_digest

APP_NAME = "chex"


@dataclass
class Deployment:
    model: str  # models:/NAME/VERSION
    tracking_uri: str
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    precision: str = "auto"
    max_batch: int = 8


def deploy(d: Deployment) -> dict[str, Any]:
    """Start (or update) the ``chex`` Serve application on ``d.model``; Ray must already be initialized."""
    from ray import serve

    from pipelines.serving.app import ServeSettings, application

    settings = ServeSettings(d.model, d.tracking_uri, d.precision, token_digest(d.host), max_batch_size=d.max_batch)
    serve.start(http_options={"host": d.host, "port": d.port})  # a running Serve instance keeps its own options
    serve.run(application(settings, d.replicas), name=APP_NAME, route_prefix="/", blocking=False)
    shown = f"[{d.host}]" if ":" in d.host else d.host
    return {"url": f"http://{shown}:{d.port}/", "model": d.model}
