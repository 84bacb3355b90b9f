"""A real `chex serve` in a subprocess on loopback, for the API, page and benchmark checks."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Served:
    url: str
    model_dir: Path
    token: str | None
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(model: str | Path, log: Path, *args: str, token: str | None = None,
                   env: dict[str, str] | None = None, timeout: float = 180) -> Iterator[Served]:
    """`chex serve MODEL --port P ARGS` until it answers /readyz; stopped with SIGTERM (graceful) afterwards."""
    port = free_port()
    full_env = {**os.environ, **(env or {})}
    if token:
        full_env["CHEX_API_TOKEN"] = token
    cmd = [str(Path(sys.executable).parent / "chex"), "serve", str(model), "--port", str(port), *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"chex serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"chex serve not ready after {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Served(url, Path(model), token, log)
    finally:  # SIGTERM to `chex serve` alone, as a service manager sends it: it shuts Serve and Ray down itself
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError):  # whatever Ray left behind in the session
            os.killpg(proc.pid, signal.SIGKILL)
