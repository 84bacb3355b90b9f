"""Where the API may listen: loopback freely; any other address only behind a bearer token (``CHEX_API_TOKEN``),
which the server keeps as its sha256 digest alone."""
from __future__ import annotations

import hashlib
import ipaddress
import os

TOKEN_ENV = "CHEX_API_TOKEN"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def token_digest(host: str) -> str | None:
    """sha256 hex of ``$CHEX_API_TOKEN`` (None when unset); ValueError for a non-loopback ``host`` without one."""
    token = os.environ.get(TOKEN_ENV) or None
    if not is_loopback(host) and not token:
        raise ValueError(f"host {host} is reachable beyond this machine: set {TOKEN_ENV} (a bearer token every API "
                         "request must carry), or bind 127.0.0.1")
    return hashlib.sha256(token.encode()).hexdigest() if token else None
