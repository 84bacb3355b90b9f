"""Credentials in a tracking URI or a storage URI reach no MLflow parameter, tag or artifact, no workdir file and
no console line: a pipeline run through a real tracking server, then a search for the secrets everywhere."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TRACKING_SECRET, STORAGE_SECRET = "s3cret-tracking-7731", "s3cret-storage-5519"


def _all_strings_in_store(uri: str, out: Path) -> list[str]:
    """Every parameter, tag and (downloaded) artifact of every run in the server's experiments."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    found = []
    for exp in client.search_experiments():
        found += [exp.name, *exp.tags.values()]
        for run in client.search_runs([exp.experiment_id]):
            found += [f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items()]
            folder = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, tracking_uri=uri,
                                                                dst_path=str(out / run.info.run_id)))
            found += [p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file()]
    return found


@pytest.mark.slow
def test_credentials_in_uris_are_never_recorded(tmp_path):
    from infra.mlflow_server import local_server

    with local_server(f"sqlite:///{tmp_path / 'server.db'}", str(tmp_path / "artifacts")) as uri:
        secret_uri = uri.replace("http://", f"http://alice:{TRACKING_SECRET}@")
        train = yaml.safe_load((REPO / "configs/train/demo.yaml").read_text())
        train["storage_path"] = f"s3://bucket/chex?X-Amz-Signature={STORAGE_SECRET}&region=eu-central-1"
        (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
        pipeline = {"workdir": str(tmp_path / "work"), "synth": {"studies": 8, "seed": 3, "image_scale": 0.1},
                    "ingest": str(REPO / "configs/ingest.yaml"), "image_size": 32, "train": str(tmp_path / "train.yaml"),
                    "tracking_uri": secret_uri}
        (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
        runs = [subprocess.run([str(Path(sys.executable).parent / "chex"), "pipeline", "run", "--config",
                                str(tmp_path / "pipeline.yaml"), "--only", stage],
                               capture_output=True, text=True, timeout=600, env={**os.environ})
                for stage in ("synth", "ingest")]
        for proc in runs:
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert "MLflow: open http://127.0.0.1:" in proc.stdout   # a remote store: its URL, not `mlflow ui`
        store = _all_strings_in_store(uri, tmp_path / "downloaded")
    assert any("pipeline.tracking_uri=http://127.0.0.1:" in s for s in store)   # the URI is recorded, without userinfo
    assert any("X-Amz-Signature=***" in s for s in store)                      # the storage URI, its signature masked
    workdir = [p.read_bytes().decode("latin-1") for p in (tmp_path / "work").rglob("*") if p.is_file()
               and "raw" not in p.relative_to(tmp_path / "work").parts]
    for secret in (TRACKING_SECRET, STORAGE_SECRET):
        assert not [line for proc in runs for line in (proc.stdout + proc.stderr).splitlines() if secret in line]
        assert not [s[:200] for s in store if secret in s]
        assert not [s[:200] for s in workdir if secret in s]
