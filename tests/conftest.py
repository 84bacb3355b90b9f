"""Shared fixtures: offline environment, one local Ray session, one small synthetic raw tree per test session."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "token")   # Ray's token auth stays on in tests, as in every command
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# every command a test starts uses a private Ray, never a cluster some `ray start` left on the machine
# (tests/test_ray_connect.py removes this to test the choice itself)
os.environ.setdefault("RAY_ADDRESS", "local")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

if not (os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file()):
    # `ray start` and ray.cluster_utils need the token to exist first (ray.init makes one, they do not)
    subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token", "--generate"],
                   check=True, capture_output=True)

import pytest  # noqa: E402

INGEST_SIZE = 64  # stored image side of the shared ingested tables


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_config():
    from preprocessing.synth.generate import SynthConfig

    return SynthConfig(studies=14, seed=7, image_scale=0.12, workers=2)


@pytest.fixture(scope="session")
def synth_raw(tmp_path_factory, synth_config) -> Path:
    """A small raw tree from the generator (read-only for tests: copy before corrupting)."""
    from preprocessing.synth.generate import synthesize

    out = tmp_path_factory.mktemp("raw")
    synthesize(out, synth_config)
    return out


@pytest.fixture(scope="session")
def trained_tiny():
    """A tiny ChEX trained for 300 steps on a fixed phantom batch (anatomy boxes, labels and region sentences):
    ``(model, batch, initial box L1, history)``. ~30 s on 2 cores; shared by the learning, query and CLI tests."""
    import dataclasses

    import torch

    from chex_model.chex import ChEX
    from model_support import anatomy_box_l1, phantom_batch, tiny_config, train

    torch.manual_seed(0)
    model = ChEX.build(tiny_config())
    batch = dataclasses.replace(phantom_batch(), pathology=None, sentences=None)
    initial = anatomy_box_l1(model.eval(), batch)
    model, history = train(model, batch, steps=300, every=10)
    return model, batch, initial, history


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialized tiny ChEX saved with ``save_pretrained`` (read-only for tests)."""
    import torch

    from chex_model.chex import ChEX
    from model_support import tiny_config

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_model")
    ChEX.build(tiny_config()).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def ingested(synth_raw: Path, ray_local, tmp_path_factory) -> tuple[Path, dict]:
    """The ingest job's output on the shared raw tree: ``(folder, manifest)`` (read-only for tests)."""
    from pipelines.ingest.job import run_ingest
    from pipelines.ingest.config import IngestConfig

    out = tmp_path_factory.mktemp("ingested")
    return out, run_ingest(synth_raw, out, IngestConfig(image_size=INGEST_SIZE))


@pytest.fixture(scope="session")
def trained_tiny_dir(trained_tiny, tmp_path_factory) -> Path:
    """The trained tiny model saved as a folder, read-only for tests (its sentences are words: the CLI, the API and
    the page have text to show)."""
    out = tmp_path_factory.mktemp("trained_tiny")
    trained_tiny[0].save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def served(trained_tiny_dir, tmp_path_factory):
    """One real `chex serve` of that model on loopback for the session (~20 s to start): ``.url``, ``.model_dir``."""
    from serve_support import running_server

    with running_server(trained_tiny_dir, tmp_path_factory.mktemp("serve") / "serve.log") as server:
        yield server


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """A count of what this run did not cover, by reason: a green run on a machine that lacks an optional tool
    (a browser, a PostgreSQL that cannot run as root here, ...) says so at its end (after pytest's own summary)."""
    yield
    skipped = terminalreporter.stats.get("skipped", [])
    deselected = len(terminalreporter.stats.get("deselected", []))
    by_reason: dict[str, int] = {}
    for report in skipped:
        by_reason[_skip_reason(report)] = by_reason.get(_skip_reason(report), 0) + 1
    terminalreporter.write_sep("-", f"not covered: {len(skipped)} skipped, {deselected} deselected")
    for reason, count in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        terminalreporter.write_line(f"{count:4d} skipped: {reason}")
